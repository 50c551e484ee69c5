import FieldgateCore
import Logging
import ProtonAMQP
import ServiceLifecycle
import Spool
import Synchronization

/// fieldgate's uplink: every leaf its own IoT Hub identity, all of them over one AMQP connection (another one per
/// ~995 leaves), fed from the spool. A `Service`: `run()` lasts until graceful shutdown, then closes the
/// connections and gives every unacknowledged record back to the spool.
public final class Uplink: Service, Sendable {
    public let configuration: UplinkConfiguration
    private let reactor: AMQPReactor
    private let engine: UplinkEngine
    let logger: Logger
    private let state = Mutex<Phase>(.created)
    private let uploader: FileUploader
    let spool: Spool
    let offloadState = Mutex(OffloadStatus())
    let offloadHold = Mutex(OffloadHold())
    private let offloadTask = Mutex<Task<Void, Never>?>(nil)
    var pumpForOffload: SpoolPump { engine.pump }

    private enum Phase { case created, running, stopped }

    /// - Parameters:
    ///   - router: where C2D messages go; nil = no C2D receivers are attached.
    ///   - nowMs, random: injected for tests; default to the wall clock and the system generator.
    public init(configuration: UplinkConfiguration, leaves: [LeafConfiguration], spool: Spool,
                router: (any LeafRouter)? = nil, logger: Logger = Logger(label: "fieldgate.uplink"),
                nowMs: @escaping @Sendable () -> Int64 = { WallClock.nowMilliseconds() },
                random: @escaping @Sendable () -> Double = { Double.random(in: 0..<1) }) throws(UplinkError) {
        var seen: Set<String> = []
        for leaf in leaves {
            guard !leaf.deviceID.isEmpty else { throw UplinkError(.configuration, "a leaf has an empty device id") }
            guard seen.insert(leaf.deviceID).inserted else {
                throw UplinkError(.configuration, "leaf \(leaf.deviceID) is configured twice")
            }
        }
        if let orphan = leaves.first(where: { ($0.hubHost ?? configuration.hostName).isEmpty }) {
            throw UplinkError(.configuration, "leaf \(orphan.deviceID) has no hub: configure [hub] host or provision it")
        }
        self.configuration = configuration
        self.reactor = AMQPReactor(logger: logger)
        self.logger = logger
        self.engine = UplinkEngine(configuration: configuration, leaves: leaves, spool: spool, router: router,
                                   reactor: reactor, logger: logger, nowMs: nowMs, random: random)
        self.uploader = FileUploader(configuration: configuration)
        self.spool = spool
    }

    /// Starts connecting; returns at once (the hub being away is a normal state).
    public func start() {
        let go = state.withLock { phase -> Bool in
            guard phase == .created else { return false }
            phase = .running
            return true
        }
        if go {
            // Before the engine: the pump takes back what staged files hold ahead of any D2C fetch.
            if let policy = configuration.offload { reclaimStagedBacklog(policy) }
            _ = reactor.execute { [engine] in engine.start() }
            if let policy = configuration.offload {
                offloadTask.withLock { $0 = Task { [self] in await offloadLoop(policy) } }
            }
        }
    }

    /// Closes every connection and settles with the spool: accepted records acknowledged, the rest released
    /// (they go out again, with the same message ids, next time).
    public func stop() async {
        let wasRunning = state.withLock { phase -> Bool in
            defer { phase = .stopped }
            return phase == .running
        }
        guard wasRunning else { return }
        if let task = offloadTask.withLock({ t in defer { t = nil }; return t }) {
            // An upload under way (libcurl) does not see the cancellation: wait for it 2 s at most.
            task.cancel()
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await task.value }
                group.addTask { try? await Task.sleep(for: .seconds(2)) }
                await group.next()
                group.cancelAll()
            }
        }
        _ = try? await reactor.perform { [engine] in engine.beginStop() }
        // Wait (bounded) for the connections to close and a running pump job to finish: the hub's last outcomes
        // and the records in flight come back to be acknowledged or released.
        for _ in 0..<300 {
            guard (try? await reactor.perform({ [engine] in engine.isQuiet })) == false else { break }
            try? await Task.sleep(for: .milliseconds(10))
        }
        let final = (try? await reactor.perform { [engine] in engine.takeFinalSettlements() }) ?? SpoolPump.Job()
        await reactor.shutdown()
        await engine.pump.settle(final)
        await releaseOffloadHolds()
    }

    public func run() async throws {
        start()
        try? await gracefulShutdown()
        await stop()
    }

    /// Applies a new leaf list without dropping the connection (reload). Hub settings cannot change this way:
    /// a new `Uplink` does that.
    public func reconfigure(leaves: [LeafConfiguration]) async throws(UplinkError) -> LeafChanges {
        var seen: Set<String> = []
        for leaf in leaves {
            guard !leaf.deviceID.isEmpty else { throw UplinkError(.configuration, "a leaf has an empty device id") }
            guard seen.insert(leaf.deviceID).inserted else { throw UplinkError(.configuration, "leaf \(leaf.deviceID) is configured twice") }
        }
        do { return try await reactor.perform { [engine] in engine.reconfigure(leaves) } } catch {
            throw UplinkError(.stopped, "the uplink is not running")
        }
    }

    /// What the watchdog watches: the reactor loop and the spool pump.
    public var heartbeats: [Heartbeat] { [engine.heartbeat, engine.pump.heartbeat] }

    /// Producers call this after appending to the spool, so new records leave at once instead of at the next tick.
    /// An adapter can reach `deviceID` again (it spoke after a command found it unreachable): a C2D message held
    /// for it is retried now, and a leaf whose messages were left in the hub's queue takes them again.
    public func leafReachable(_ deviceID: String) {
        _ = reactor.execute { [engine] in engine.leafReachable(deviceID) }
    }

    /// Leaves the hub refused try again at once instead of after their back-off: their identities were provisioned
    /// again (the device exists anew, or has new keys).
    public func retrySoon(_ deviceIDs: [String]) {
        _ = reactor.execute { [engine] in engine.retrySoon(deviceIDs) }
    }

    public func wake() {
        _ = reactor.execute { [engine] in engine.wake() }
    }

    /// Queues a reported-properties patch for a leaf (or the gateway). It is checked against the twin rules
    /// first (8 KB, depth, keys, no arrays) and refused locally with `.invalidInput` otherwise. While the leaf is
    /// offline, patches are folded into one (last write wins per path) and sent when it is back.
    public func report(_ patch: JSONValue, for deviceID: String) async throws(UplinkError) {
        let result: Result<Void, UplinkError>? = try? await reactor.perform { [engine] in
            do throws(UplinkError) { try engine.report(patch, for: deviceID, id: nil); return .success(()) } catch { return .failure(error) }
        }
        guard let result else { throw UplinkError(.stopped, "the uplink is stopped") }
        try result.get()
    }

    /// As `report`, from any thread without waiting: patches queued this way for one leaf reach its twin in the order
    /// they were queued (a task per `report` could swap a leaf's `online: false` and `online: true`, and the
    /// stale one would win the merge). A patch refused locally is logged at debug: adapters report every leaf's
    /// state, and a leaf without a twin (its capabilities) refuses each.
    public func queueReport(_ patch: JSONValue, for deviceID: String) {
        _ = reactor.execute { [engine, logger] in
            do throws(UplinkError) { try engine.report(patch, for: deviceID, id: nil) } catch {
                logger.debug("uplink: \(deviceID): reported patch refused locally: \(error)")
            }
        }
    }

    /// As `report`, then waits until the hub acknowledged the patch (seed 004 reports `lastReboot` this way).
    public func reportAndWait(_ patch: JSONValue, for deviceID: String, timeout: Duration = .seconds(30)) async throws(UplinkError) {
        let outcome: String? = await withCheckedContinuation { (cont: CheckedContinuation<String?, Never>) in
            let once = Once(cont)
            let queued = reactor.execute { [engine] in
                do throws(UplinkError) { try engine.report(patch, for: deviceID, id: { once.resume($0) }) } catch { once.resume(error.message) }
            }
            if !queued { once.resume("the uplink is stopped") }
            _ = reactor.schedule(after: timeout) { once.resume("the hub did not acknowledge the patch within \(timeout)") }
        }
        if let outcome { throw UplinkError(.invalidInput, outcome) }
    }

    /// Uploads a file for `deviceID` (a leaf or the gateway) through IoT Hub's file upload (HTTPS): the blob is
    /// `{deviceID}/{blobName}` in the hub's storage container, and the service side hears of it. At most 10 per
    /// identity at once; more wait.
    public func uploadFile(for deviceID: String, blobName: String, bytes: [UInt8], contentType: String) async throws(UplinkError) -> UploadedFile {
        let found: LeafConfiguration?
        do { found = try await reactor.perform { [engine] in engine.leafConfiguration(deviceID) } } catch {
            throw UplinkError(.stopped, "the uplink is stopped")
        }
        guard let configuration = found else { throw UplinkError(.invalidInput, "no leaf \(deviceID)") }
        return try await uploader.upload(configuration, blobName: blobName, bytes: bytes, contentType: contentType)
    }

    public func status() async -> UplinkStatus {
        var s = (try? await reactor.perform { [engine] in engine.snapshot() }) ?? UplinkStatus()
        if configuration.offload != nil { s.offload = offloadState.withLock { $0 } }
        return s
    }
}

/// The leaves a reconfiguration added, removed or changed (by device id).
public struct LeafChanges: Sendable, Equatable, CustomStringConvertible {
    public var added: [String] = []
    public var removed: [String] = []
    public var changed: [String] = []
    public init() {}
    public var isEmpty: Bool { added.isEmpty && removed.isEmpty && changed.isEmpty }
    public var description: String {
        isEmpty ? "no leaf changed" : "added \(added), removed \(removed), changed \(changed)"
    }
}

/// What the uplink is doing, per connection and per leaf.
public struct UplinkStatus: Sendable {
    /// Telemetry paused for every leaf (the hub's daily quota is spent).
    public struct TelemetryPause: Sendable, Equatable {
        public var reason: String
        public var sinceMs: Int64
        /// When a message probes the hub next; nil while that probe is out.
        public var untilMs: Int64?
        public var probing: Bool

        /// As `fieldgatectl status` and the gateway's twin show it.
        public var json: JSONValue {
            ["reason": .string(reason), "since": .string(WallClock.iso8601(milliseconds: sinceMs)),
             "until": untilMs.map { .string(WallClock.iso8601(milliseconds: $0)) } ?? .null, "probing": .bool(probing)]
        }
    }
    /// nil: telemetry flows.
    public var telemetryPause: TelemetryPause?
    /// nil: backlog offload is off.
    public var offload: OffloadStatus?

    public struct Connection: Sendable {
        public var index: Int
        /// waiting, connecting or open.
        public var state: String
        /// Connections opened so far.
        public var opens: Int
        public var lastError: String?
        /// Why the last open connection ended.
        public var lastDisconnect: String?
        public var leaves: Int
        /// The hub host this connection uses (or tries next).
        public var host: String
        /// `amqps` or `amqps-websocket`.
        public var transport: String
        /// Features the hub refuses as not in its tier (C2D, methods, twin), learnt from its refusals.
        public var refusedByTier: [String] = []
        /// The most leaves it had authenticating or attaching at once (bounded by `[hub] attaches_at_once`).
        public var mostAttachingAtOnce = 0
    }

    public struct Leaf: Sendable {
        public var phase: LeafPhase
        public var lastError: String?
        public var counters: LeafCounters
        /// Messages fetched from the spool and not yet settled by the hub.
        public var outstanding: Int
        /// "telemetry-only (hub tier)" when the hub's tier refuses the leaf's other links; nil otherwise.
        public var tierLimitation: String?
    }

    public var connections: [Connection] = []
    public var leaves: [String: Leaf] = [:]

    public init() {}
}

/// The Uplink module's error.
public struct UplinkError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        enum Value: Hashable, Sendable { case configuration, invalidInput, stopped, unavailable }
        let value: Value
        public static let configuration = Code(value: .configuration)
        /// A patch or request the hub would refuse (twin rules, unknown leaf).
        public static let invalidInput = Code(value: .invalidInput)
        public static let stopped = Code(value: .stopped)
        /// The hub (or its storage) could not be reached or failed for now (HTTPS calls): try again later.
        public static let unavailable = Code(value: .unavailable)
        public var description: String { "\(value)" }
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// Only a stopped uplink or an unreachable hub may come back; bad configuration and bad input do not heal by
    /// retrying.
    public var isRetriable: Bool { code == .stopped || code == .unavailable }
    public var description: String { message }
}

/// Resumes a continuation once; later calls are ignored (a deadline and an answer race).
final class Once<T: Sendable>: Sendable {
    private let state: Mutex<CheckedContinuation<T, Never>?>
    init(_ c: CheckedContinuation<T, Never>) { state = Mutex(c) }
    func resume(_ value: T) { state.withLock { c in c?.resume(returning: value); c = nil } }
}
