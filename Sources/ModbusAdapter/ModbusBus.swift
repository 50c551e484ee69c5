import Dispatch
import FieldgateCore
import Logging
import ModbusIO
import ServiceLifecycle
import Spool
import Synchronization
import Uplink

#if canImport(Glibc)
import Glibc
#endif

/// What the cloud asks of a device, carried out on the bus thread between polls.
enum BusCommand: Sendable {
    /// Each point with the registers (or 0/1 bits) to write; `readback` reads them again afterwards.
    case write(device: Int, [(point: ModbusPoint, registers: [UInt16])], readback: Bool)
    case read(device: Int, points: [Int])
}

/// Modbus over one TCP connection or one serial line (issue 6): the only owner of that connection, so requests never
/// interleave on the wire. A dedicated thread runs the `BusSchedule` — coalesced reads, turnaround gaps, per-unit
/// retries and back-off — and carries out writes and reads the cloud asks for (C2D, the `write`/`read`/`ping`
/// methods) between polls. Readings become telemetry through each device's `Reporter`, into the spool.
public final class ModbusBus: LeafRouter, Service, Sendable {
    public let configuration: ModbusBusConfiguration
    /// Beats at least every 50 ms while the bus thread runs (longer only inside one transaction: ≤ the timeouts).
    public let heartbeat: Heartbeat
    private let spool: Spool
    private let onAppended: @Sendable () -> Void
    private let logger: Logger
    private let loop = LoopThread()
    private let wakeup = DispatchSemaphore(value: 0)
    private let pending = Mutex<[(command: BusCommand, deadline: Int64, waiter: CheckedContinuation<Result<JSONValue, ModbusError>, Never>)]>([])
    private let shared: Mutex<SharedState>
    private let deviceIndex: [String: Int]
    private let stateSink = Mutex<(@Sendable (String, JSONValue) -> Void)?>(nil)

    struct SharedState: Sendable {
        var units: [Int: UnitStatistics] = [:]
        var connected = false
        var connects = 0
        var lastError: String?
        var readings: [String: Int] = [:]
        var spoolRefused = 0
        /// Desired-twin overrides per device, applied by the bus thread when `overridesVersion` moves.
        var overrides: [Int: DeviceOverrides] = [:]
        var overridesVersion = 0
        /// Points written by the cloud, per device (for status).
        var writes = 0
        /// Each unit's state as last logged (a change is logged once).
        var loggedOnline: [Int: Bool] = [:]
    }

    public init(configuration: ModbusBusConfiguration, spool: Spool, onAppended: @escaping @Sendable () -> Void = {},
                logger: Logger = Logger(label: "fieldgate.modbus")) {
        self.configuration = configuration
        self.heartbeat = Heartbeat("modbus:\(configuration.name)")
        self.spool = spool
        self.onAppended = onAppended
        self.logger = logger
        self.shared = Mutex(SharedState())
        self.deviceIndex = Dictionary(configuration.devices.enumerated().map { ($0.element.leaf, $0.offset) }, uniquingKeysWith: { a, _ in a })
    }

    public var leaves: [String] { configuration.devices.map(\.leaf) }

    public func start() {
        loop.start(label: "fieldgate.modbus.\(configuration.name)") { [self] in busLoop() }
    }

    public func stop() async {
        await loop.stop(wake: { wakeup.signal() })
    }

    public func run() async throws {
        start()
        try? await gracefulShutdown()
        await stop()
    }

    public struct Statistics: Sendable {
        public var connected: Bool
        public var connects: Int
        public var lastError: String?
        /// By unit id.
        public var units: [Int: UnitStatistics]
        public var readings: [String: Int]
        public var spoolRefused: Int
        public var writes: Int
    }

    public func statistics() -> Statistics {
        shared.withLock { Statistics(connected: $0.connected, connects: $0.connects, lastError: $0.lastError, units: $0.units,
                                     readings: $0.readings, spoolRefused: $0.spoolRefused, writes: $0.writes) }
    }

    // MARK: the bus thread

    private var monotonicNow: Int64 { MonotonicClock.milliseconds() }

    private func busLoop() {
        let connection: ModbusConnection
        do throws(ModbusError) {
            connection = try ModbusConnection(configuration.endpoint, responseTimeoutMs: configuration.responseTimeoutMilliseconds,
                                              byteTimeoutMs: configuration.byteTimeoutMilliseconds)
        } catch {
            logger.error("modbus \(configuration.name): \(error)", metadata: ["adapter": "modbus:\(configuration.name)"])
            shared.withLock { $0.lastError = error.message }
            while !loop.isStopping { heartbeat.beat(); _ = wakeup.wait(timeout: .now() + .milliseconds(50)); failCommands("the bus cannot be used: \(error.message)") }
            return
        }
        var runner = BusRunner(configuration: configuration, now: monotonicNow)
        var reconnectDelay = configuration.reconnectMilliseconds.lowerBound
        var nextConnect = monotonicNow
        var appliedOverrides = 0
        var lastTransactionEnd: Int64 = 0
        var statisticsPublished: Int64 = 0
        var statisticsDirty = false
        var states = StateReports()
        while !loop.isStopping {
            heartbeat.beat()
            let now = monotonicNow
            if !connection.isConnected {
                failExpiredCommands()
                guard now >= nextConnect else { _ = wakeup.wait(timeout: .now() + .milliseconds(Int(min(50, nextConnect - now)))); continue }
                do throws(ModbusError) {
                    try connection.connect()
                    reconnectDelay = configuration.reconnectMilliseconds.lowerBound
                    shared.withLock { $0.connected = true; $0.connects += 1; $0.lastError = nil }
                    logger.notice("modbus \(configuration.name): connected to \(configuration.endpoint)", metadata: ["adapter": "modbus:\(configuration.name)"])
                    if let warning = connection.rs485Problem { logger.warning("modbus \(configuration.name): \(warning)") }
                } catch {
                    nextConnect = now + reconnectDelay
                    reconnectDelay = min(reconnectDelay * 2, configuration.reconnectMilliseconds.upperBound)
                    shared.withLock { $0.connected = false; $0.lastError = error.message }
                    runner.schedule.busDown(error.message)
                    failCommands("the bus is offline: \(error.message)")
                    logger.warning("modbus \(configuration.name): \(error.message); retrying in \(reconnectDelay) ms",
                                   metadata: ["adapter": "modbus:\(configuration.name)"])
                    continue
                }
            }
            let version = shared.withLock { $0.overridesVersion }
            if version != appliedOverrides {
                appliedOverrides = version
                runner.apply(shared.withLock { $0.overrides }, now: monotonicNow)
            }
            // Keep the line quiet between transactions (RS-485 turnaround).
            let quietUntil = lastTransactionEnd + Int64(configuration.turnaroundMilliseconds.rounded(.up))
            if configuration.turnaroundMilliseconds > 0, monotonicNow < quietUntil {
                sleepMicroseconds(Int((configuration.turnaroundMilliseconds * 1000).rounded(.up)) - Int((monotonicNow - lastTransactionEnd) * 1000))
            }
            // Commands first: they are what somebody waits for.
            if let command = nextCommand() {
                let result = runner.execute(command.command, on: connection)
                lastTransactionEnd = monotonicNow
                command.waiter.resume(returning: result)
                if case .failure(let e) = result, e.kind == .connection { lostConnection(e, runner: &runner, states: &states) }
                continue
            }
            switch runner.schedule.next(now: monotonicNow) {
            case .idle(let until):
                if statisticsDirty {
                    statisticsDirty = false
                    publish(runner, states: &states, now: monotonicNow)
                }
                let wait = max(0, min(until - monotonicNow, 50))
                if wait > 0 { _ = wakeup.wait(timeout: .now() + .milliseconds(Int(wait))) }
            case .poll(let index):
                let (body, leaf, error) = runner.poll(index, on: connection, now: { self.monotonicNow }, wallNow: WallClock.nowMilliseconds())
                lastTransactionEnd = monotonicNow
                if let body, let leaf { append(body, leaf: leaf) }
                // Published for status at most every 50 ms, and at once when something failed.
                statisticsDirty = true
                if error != nil || lastTransactionEnd - statisticsPublished >= 50 {
                    statisticsPublished = lastTransactionEnd
                    statisticsDirty = false
                    publish(runner, states: &states, now: monotonicNow)
                }
                if let error, error.kind == .connection { lostConnection(error, runner: &runner, states: &states) }
            }
        }
        connection.close()
        failCommands("the adapter stopped")
    }

    /// Unit statistics for `statistics()`, and each leaf's state to its twin.
    private func publish(_ runner: BusRunner, states: inout StateReports, now: Int64) {
        let units = runner.unitStatistics
        let flipped = shared.withLock { s -> [(Int, UnitStatistics)] in
            for (unit, st) in units { s.units[unit] = st }
            // The first answer or silence counts too: a wrong unit id is logged.
            let changed = units.filter { unit, st in st.requests > 0 && s.loggedOnline[unit] != st.online }
            for (unit, st) in changed { s.loggedOnline[unit] = st.online }
            return changed
        }
        for (unit, st) in flipped {
            let leaf = configuration.devices.first { $0.unit == unit }?.leaf ?? "?"
            if st.online {
                logger.notice("modbus \(configuration.name): unit \(unit) (\(leaf)) answers", metadata: ["adapter": "modbus:\(configuration.name)", "leaf": "\(leaf)"])
            } else {
                logger.warning("modbus \(configuration.name): unit \(unit) (\(leaf)) does not answer: \(st.lastError ?? "?"); backing off",
                               metadata: ["adapter": "modbus:\(configuration.name)", "leaf": "\(leaf)"])
            }
        }
        guard let sink = stateSink.withLock({ $0 }) else { return }
        let wallNow = WallClock.nowMilliseconds()
        for d in configuration.devices {
            guard let st = runner.schedule.statistics(unit: d.unit), let patch = states.due(leaf: d.leaf, st, now: now, wallNow: wallNow) else { continue }
            sink(d.leaf, patch)
        }
    }

    /// Where each leaf's adapter state goes (the daemon reports it in the leaf's twin).
    public func reportStates(to sink: @escaping @Sendable (_ leaf: String, _ reported: JSONValue) -> Void) {
        stateSink.withLock { $0 = sink }
    }

    private func lostConnection(_ error: ModbusError, runner: inout BusRunner, states: inout StateReports) {
        runner.schedule.busDown(error.message)
        shared.withLock { s in
            s.connected = false
            s.lastError = error.message
        }
        publish(runner, states: &states, now: MonotonicClock.milliseconds())
        logger.warning("modbus \(configuration.name): connection lost: \(error.message)", metadata: ["adapter": "modbus:\(configuration.name)"])
    }

    private func append(_ body: JSONValue, leaf: String) {
        let entry = Spool.Entry(leaf: leaf, acquiredAtMs: WallClock.nowMilliseconds(), payload: TelemetryEnvelope(body: body.bytes).encoded())
        var refused = false
        do throws(SpoolError) { _ = try spool.append([entry]) } catch { refused = true }
        onAppended()
        shared.withLock { s in if refused { s.spoolRefused += 1 } else { s.readings[leaf, default: 0] += 1 } }
    }

    private func sleepMicroseconds(_ us: Int) {
        guard us > 0 else { return }
        var request = timespec(tv_sec: us / 1_000_000, tv_nsec: (us % 1_000_000) * 1000)
        var remaining = timespec()
        while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
    }

    // MARK: commands

    private func nextCommand() -> (command: BusCommand, waiter: CheckedContinuation<Result<JSONValue, ModbusError>, Never>)? {
        if pending.withLock({ $0.isEmpty }) { return nil }
        failExpiredCommands()
        return pending.withLock { p in p.isEmpty ? nil : { let c = p.removeFirst(); return (c.command, c.waiter) }() }
    }

    /// Commands whose caller has given up are not carried out late (a write nobody waits for anymore).
    private func failExpiredCommands() {
        let now = WallClock.nowMilliseconds()
        let expired = pending.withLock { p -> [CheckedContinuation<Result<JSONValue, ModbusError>, Never>] in
            let gone = p.filter { $0.deadline <= now }.map(\.waiter)
            p.removeAll { $0.deadline <= now }
            return gone
        }
        for w in expired { w.resume(returning: .failure(ModbusError(.timeout, "the bus was busy until the deadline; nothing was sent"))) }
    }

    private func failCommands(_ why: String) {
        for c in pending.withLock({ p in defer { p = [] }; return p }) { c.waiter.resume(returning: .failure(ModbusError(.connection, why))) }
    }

    /// Queues a command for the bus thread; `deadline` is wall-clock ms.
    func submit(_ command: BusCommand, deadline: Int64) async -> Result<JSONValue, ModbusError> {
        if loop.isStopping { return .failure(ModbusError(.connection, "the adapter stopped")) }
        let result = await withCheckedContinuation { cont in
            pending.withLock { $0.append((command, deadline, cont)) }
            wakeup.signal()
        }
        if case .success = result, case .write(_, let points, _) = command { shared.withLock { $0.writes += points.count } }
        return result
    }

    func device(_ leaf: String) -> (index: Int, configuration: ModbusDeviceConfiguration)? {
        deviceIndex[leaf].map { ($0, configuration.devices[$0]) }
    }

    /// Hands new twin settings to the bus thread; returns the points the previous settings named (so the reported
    /// twin can clear the ones no longer mentioned).
    @discardableResult
    func setOverrides(_ overrides: DeviceOverrides, device: Int) -> Set<String> {
        let before = shared.withLock { s -> Set<String> in
            defer {
                s.overrides[device] = overrides
                s.overridesVersion += 1
            }
            return s.overrides[device].map { $0.disabledPoints.union($0.deadbands.keys) } ?? []
        }
        wakeup.signal()
        return before
    }
}
