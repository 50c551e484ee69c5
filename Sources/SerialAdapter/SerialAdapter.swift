import Dispatch
import FieldgateCore
import FrameCodecs
import Logging
import ServiceLifecycle
import Spool
import Synchronization
import Uplink

#if canImport(Glibc)
import Glibc
#endif

public struct SerialPortStatistics: Sendable, Equatable {
    public var readings: [String: Int] = [:]
    public var rejected: [String: Int] = [:]
    /// Frames cut off by the framer (over-long, broken).
    public var framingErrors = 0
    /// Readings the spool refused (back-pressure), counted.
    public var spoolRefused = 0
    public var opens = 0
    public var connected = false
    public var lastError: String?
}

/// A serial port as a source of leaf readings (issue 7, part 1): frames → decoder → readings in the spool; C2D
/// and the `send` method write a frame back and, with a reply pattern, wait for the device's answer. An unplugged
/// device is reopened by itself. One thread per port.
public final class SerialAdapter: LeafRouter, Service, Sendable {
    public let configuration: SerialPortConfiguration
    /// The port loop beats at least every 50 ms while open, and while it waits to reopen a vanished device.
    public let heartbeat: Heartbeat
    private let spool: Spool
    private let onAppended: @Sendable () -> Void
    private let logger: Logger
    private let loop = LoopThread()
    private let stats = Mutex(SerialPortStatistics())
    private let outbox = Mutex<[(bytes: [UInt8], waiter: CheckedContinuation<Result<[UInt8]?, SerialAdapterError>, Never>, wantsReply: Bool, deadline: Int64)]>([])
    private let stateSink = Mutex<(@Sendable (String, JSONValue) -> Void)?>(nil)
    /// The port state last reported to the leaves' twins, and when (at most one report per 5 s: a flapping cable).
    private let reportedState = Mutex<(connected: Bool?, atMs: Int64)>((nil, 0))

    public init(configuration: SerialPortConfiguration, spool: Spool, onAppended: @escaping @Sendable () -> Void = {},
                logger: Logger = Logger(label: "fieldgate.serial")) throws(SerialAdapterError) {
        if case .regex(let p, _) = configuration.format {
            do { _ = try FrameDecoder(.regex(pattern: p, idField: nil)) } catch { throw SerialAdapterError("\(configuration.path): \(error)", retriable: false) }
        }
        if let p = configuration.replyPattern, (try? Regex(p)) == nil {
            throw SerialAdapterError("\(configuration.path): reply pattern \(p) is not a valid regular expression", retriable: false)
        }
        self.configuration = configuration
        self.heartbeat = Heartbeat("serial:\(configuration.path)")
        self.spool = spool
        self.onAppended = onAppended
        self.logger = logger
    }

    public func start() {
        loop.start(label: "fieldgate.serial.\(configuration.path)") { [self] in portLoop() }
    }

    public func stop() async {
        await loop.stop()
    }

    public func run() async throws {
        start()
        try? await gracefulShutdown()
        await stop()
    }

    public func statistics() -> SerialPortStatistics { stats.withLock { $0 } }

    /// Where the port's state goes (the daemon reports `serial.state` in each leaf's twin).
    public func reportStates(to sink: @escaping @Sendable (_ leaf: String, _ reported: JSONValue) -> Void) {
        stateSink.withLock { $0 = sink }
    }

    /// Reports a changed open/closed state to every leaf of the port, at most every 5 s.
    private func reportStateIfChanged() {
        guard let sink = stateSink.withLock({ $0 }) else { return }
        let s = stats.withLock { $0 }
        guard s.opens > 0 || s.lastError != nil else { return }  // nothing known before the first open attempt
        let now = MonotonicClock.milliseconds()
        let due = reportedState.withLock { r -> Bool in
            guard r.connected != s.connected, now - r.atMs >= 5000 || r.connected == nil else { return false }
            r = (s.connected, now)
            return true
        }
        guard due else { return }
        let patch: JSONValue = ["serial": ["state": ["connected": .bool(s.connected), "path": .string(configuration.path),
                                                      "opens": .int(Int64(s.opens)), "lastError": s.lastError.map(JSONValue.string) ?? .null]]]
        for leaf in configuration.allLeaves { sink(leaf, patch) }
    }

    // MARK: the port thread

    private func portLoop() {
        var lastOpenAttempt: Int64 = .min / 2
        while !loop.isStopping {
            heartbeat.beat()
            reportStateIfChanged()
            let now = WallClock.nowMilliseconds()
            guard now - lastOpenAttempt >= configuration.reopenIntervalMilliseconds else { usleep(50_000); failExpiredCommands(); continue }
            lastOpenAttempt = now
            let port: SerialPort
            do throws(SerialAdapterError) { port = try SerialPort(configuration) } catch {
                stats.withLock { $0.lastError = error.message; $0.connected = false }
                failQueuedCommands("the device is not available: \(error.message)")
                continue
            }
            stats.withLock { $0.opens += 1; $0.connected = true; $0.lastError = nil }
            logger.notice("serial \(configuration.path): open", metadata: ["adapter": "serial:\(configuration.path)"])
            serve(port)
            stats.withLock { $0.connected = false }
            if !loop.isStopping {
                logger.warning("serial \(configuration.path): the device went away; reopening every \(configuration.reopenIntervalMilliseconds) ms",
                               metadata: ["adapter": "serial:\(configuration.path)"])
                stats.withLock { $0.lastError = "the device went away" }
            }
        }
        failQueuedCommands("the adapter stopped")
    }

    /// Reads frames until the device goes away or the adapter stops.
    private func serve(_ port: SerialPort) {
        var framer = Framer(configuration.framing)
        var decoder: FrameDecoder
        do { decoder = try FrameDecoder(configuration.format) } catch { return }
        let replyRegex = configuration.replyPattern.flatMap { try? Regex($0) }
        let allowed = Set(configuration.allLeaves)
        var buffer = [UInt8](repeating: 0, count: 4096)
        var awaiting: (waiter: CheckedContinuation<Result<[UInt8]?, SerialAdapterError>, Never>, deadline: Int64)?
        var lastStateCheck: Int64 = 0
        while !loop.isStopping {
            heartbeat.beat()
            if MonotonicClock.milliseconds() - lastStateCheck >= 1000 {
                lastStateCheck = MonotonicClock.milliseconds()
                reportStateIfChanged()
            }
            // Commands: one at a time; a command waiting for its reply holds the line.
            if awaiting == nil, let command = outbox.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) {
                guard port.write(framer.frame(command.bytes)) else {
                    command.waiter.resume(returning: .failure(SerialAdapterError("write to \(configuration.path) failed", retriable: true)))
                    return
                }
                if command.wantsReply { awaiting = (command.waiter, command.deadline) } else { command.waiter.resume(returning: .success(nil)) }
            }
            if let a = awaiting, WallClock.nowMilliseconds() >= a.deadline {
                a.waiter.resume(returning: .success(nil))  // no reply in time
                awaiting = nil
            }
            let r = port.read(into: &buffer, timeoutMs: 50)
            guard case .data(let n) = r else {
                if case .gone = r {
                    awaiting?.waiter.resume(returning: .failure(SerialAdapterError("the device went away", retriable: true)))
                    return
                }
                continue
            }
            let droppedBefore = framer.dropped
            let frames = framer.feed(buffer[0..<n])
            var entries: [Spool.Entry] = []
            var perLeaf: [String: Int] = [:]
            var rejected: [String: Int] = [:]
            for frame in frames {
                if let a = awaiting, let re = replyRegex, let text = String(validating: frame, as: UTF8.self), (try? re.wholeMatch(in: text)) != nil {
                    a.waiter.resume(returning: .success(frame))
                    awaiting = nil
                    continue
                }
                switch decoder.decode(frame) {
                case .success(let d):
                    guard let leaf = d.leaf ?? configuration.leaf else { rejected["missingID", default: 0] += 1; continue }
                    guard allowed.contains(leaf) else { rejected["notAllowedForLeaf", default: 0] += 1; continue }
                    entries.append(Spool.Entry(leaf: leaf, acquiredAtMs: WallClock.nowMilliseconds(), payload: TelemetryEnvelope(body: d.values.bytes).encoded()))
                    perLeaf[leaf, default: 0] += 1
                case .failure(let why):
                    rejected[why.rawValue, default: 0] += 1
                }
            }
            var refused = false
            if !entries.isEmpty {
                do throws(SpoolError) { _ = try spool.append(entries) } catch { refused = true }
                onAppended()
            }
            stats.withLock { s in
                s.framingErrors += framer.dropped - droppedBefore
                for (k, v) in rejected { s.rejected[k, default: 0] += v }
                for (leaf, v) in perLeaf { if refused { s.spoolRefused += v } else { s.readings[leaf, default: 0] += v } }
            }
        }
        awaiting?.waiter.resume(returning: .failure(SerialAdapterError("the adapter stopped", retriable: true)))
    }

    private func failQueuedCommands(_ why: String) {
        for c in outbox.withLock({ o in defer { o = [] }; return o }) { c.waiter.resume(returning: .failure(SerialAdapterError(why, retriable: true))) }
    }

    private func failExpiredCommands() {
        let now = WallClock.nowMilliseconds()
        let expired = outbox.withLock { o -> [CheckedContinuation<Result<[UInt8]?, SerialAdapterError>, Never>] in
            let (gone, keep) = (o.filter { $0.deadline <= now }, o.filter { $0.deadline > now })
            o = keep
            return gone.map(\.waiter)
        }
        for w in expired { w.resume(returning: .failure(SerialAdapterError("the device is not available", retriable: true))) }
    }

    /// Writes `bytes` as a frame; with `wantsReply` and a reply pattern, returns the matching frame (nil: none in time).
    private func send(_ bytes: [UInt8], wantsReply: Bool, timeoutMs: Int64) async -> Result<[UInt8]?, SerialAdapterError> {
        await withCheckedContinuation { cont in
            outbox.withLock { $0.append((bytes, cont, wantsReply && configuration.replyPattern != nil, WallClock.nowMilliseconds() + timeoutMs)) }
        }
    }

    // MARK: commands (LeafRouter)

    public func cloudToDevice(_ message: C2DMessage) async -> C2DOutcome {
        switch await send(message.body, wantsReply: true, timeoutMs: configuration.replyTimeoutMilliseconds) {
        case .success(let reply?): return String(decoding: reply, as: UTF8.self).lowercased().contains("err") ? .reject(String(decoding: reply, as: UTF8.self)) : .complete
        case .success(nil): return configuration.replyPattern == nil ? .complete : .abandon("no reply from \(configuration.path) in time")
        case .failure(let e): return .abandon(e.message)
        }
    }

    /// `send` writes `{"data": text}` as a frame and returns `{"reply": text}` when a reply pattern is configured;
    /// `ping` answers the port's state (200 open, 503 not).
    public func invoke(_ call: MethodCall) async -> MethodResponse? {
        if call.name == "ping" {
            let s = statistics()
            let body: JSONValue = ["connected": .bool(s.connected), "path": .string(configuration.path), "opens": .int(Int64(s.opens)),
                                   "readings": .int(Int64(s.readings[call.deviceID] ?? 0)), "lastError": s.lastError.map(JSONValue.string) ?? .null]
            return MethodResponse(status: s.connected ? 200 : 503, payload: body)
        }
        guard call.name == "send" else { return nil }
        guard let data = call.payload["data"]?.stringValue else { return .error(400, "send needs {\"data\": \"text\"}") }
        let timeout = max(0, min(configuration.replyTimeoutMilliseconds, call.deadlineMilliseconds - WallClock.nowMilliseconds() - 200))
        switch await send(Array(data.utf8), wantsReply: true, timeoutMs: timeout) {
        case .success(let reply?): return MethodResponse(status: 200, payload: ["reply": .string(String(decoding: reply, as: UTF8.self))])
        case .success(nil): return configuration.replyPattern == nil ? MethodResponse(status: 200, payload: ["written": .int(Int64(data.utf8.count))]) : .error(504, "no reply from the device in \(timeout) ms")
        case .failure(let e): return .error(503, e.message)
        }
    }
}
