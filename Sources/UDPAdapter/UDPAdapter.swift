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

/// Per-leaf figures of the UDP adapter.
public struct UDPLeafStatistics: Sendable, Equatable {
    public var readings = 0
    public var rejected: [DatagramRejection: Int] = [:]
    /// Readings the spool refused (reject-new policy, full disk) or could not take fast enough: back-pressure,
    /// counted, never silently lost.
    public var spoolRefused = 0
    public var lastSeen: String?
    /// Properties changed to meet the hub's message rules (escaped, or dropped), by what was done.
    public var propertyFixes: [MessageRules.Fix: Int] = [:]
}

public struct UDPAdapterStatistics: Sendable, Equatable {
    public var leaves: [String: UDPLeafStatistics] = [:]
    /// Rejections that name no known leaf (unknown sender, malformed, oversize, source not allowed).
    public var unattributed: [DatagramRejection: Int] = [:]
    /// Datagrams the kernel dropped because the socket's receive buffer was full (a burst faster than ingest).
    public var kernelDrops = 0
    /// The receive buffer the kernel granted the socket.
    public var receiveBufferBytes = 0
}

/// Local UDP senders as leaves (issue 7, part 2): datagrams → readings in the spool; C2D and methods → a datagram
/// to the leaf's configured or last-seen address, answered by the leaf's `reply` datagram. A datagram is never
/// attributed to a leaf its source may not speak for. The socket is served by a thread of its own.
public final class UDPAdapter: LeafRouter, Service, Sendable {
    /// The current configuration: leaves and source rules change on reload; the socket (bind, port, size) does not.
    public var configuration: UDPAdapterConfiguration { current.withLock { $0 } }
    private let current: Mutex<UDPAdapterConfiguration>
    /// Bumped by `reconfigure`: the receive loop rebuilds its decoder when it sees a new value.
    private let generation = Atomic<Int>(0)
    private let maxDatagramBytes: Int
    public var port: Int { socket.port }
    private let socket: UDPSocket
    private let spool: Spool
    private let onAppended: @Sendable () -> Void
    private let logger: Logger
    private let stopped = Atomic<Bool>(false)
    private let stats = Mutex(UDPAdapterStatistics())
    /// Last-seen addresses, replay floors, acknowledged desired documents; kept across restarts.
    private let memory: UDPLeafMemoryStore
    /// Leaves a command could not reach: the uplink hears when each speaks again.
    private let awaitingContact = Mutex<Set<String>>([])
    private let onReachable: @Sendable (String) -> Void
    private let waiters = Mutex<[String: CheckedContinuation<(Int, JSONValue)?, Never>]>([:])
    /// When each kind of warning (a rejection reason, a property fix) was last logged.
    private let lastLog = Mutex<[String: Int64]>([:])
    private let lastSpoolLog = Mutex<Int64>(.min / 2)
    private struct Pending {
        var batch = Spool.AppendBatch()
        var perLeaf: [String: Int] = [:]
        var scheduled = false
    }
    /// Decoded readings waiting for the writer queue (at most `maxPendingReadings`: ~5 MB of 200 B readings,
    /// a third of a second at 50k/s — the spool's group commit drains it far sooner; a gateway's RAM is small).
    private let pending = Mutex(Pending())
    private static let maxPendingReadings = 16_384
    private let writer: DispatchQueue
    private let finished = Mutex<CheckedContinuation<Void, Never>?>(nil)
    private let loopDone = Atomic<Bool>(false)
    /// The receive loop beats at least every 200 ms (its poll timeout), with or without traffic.
    public let heartbeat: Heartbeat

    /// `onReachable`: a leaf that a command could not reach spoke again (the uplink retries what it holds for it).
    public init(configuration: UDPAdapterConfiguration, spool: Spool, onAppended: @escaping @Sendable () -> Void = {},
                onReachable: @escaping @Sendable (String) -> Void = { _ in },
                logger: Logger = Logger(label: "fieldgate.udp")) throws(UDPAdapterError) {
        for leaf in configuration.leaves {
            guard let f = leaf.format else { continue }
            do { _ = try FrameDecoder(f) } catch { throw UDPAdapterError("\(leaf.deviceID): \(error)") }
        }
        self.current = Mutex(configuration)
        self.maxDatagramBytes = configuration.maxDatagramBytes
        self.spool = spool
        self.onAppended = onAppended
        self.onReachable = onReachable
        self.logger = logger
        self.memory = UDPLeafMemoryStore(path: configuration.stateFile, leaves: Set(configuration.leaves.map(\.deviceID)))
        self.socket = try UDPSocket(bindAddress: configuration.bindAddress, port: configuration.port, receiveBufferBytes: configuration.receiveBufferBytes)
        self.heartbeat = Heartbeat("udp:\(configuration.port)")
        self.writer = DispatchQueue(label: "fieldgate.udp.writer.\(configuration.port)")
    }

    /// Starts the receive thread.
    public func start() {
        logReceiveBuffer()
        let thread = DispatchQueue(label: "fieldgate.udp.\(configuration.port)")
        thread.async { [self] in
            receiveLoop()
            loopDone.store(true, ordering: .releasing)
            finished.withLock { $0?.resume(); $0 = nil }
        }
    }

    /// Stops the receive thread (within ~200 ms) and fails pending commands.
    public func stop() async {
        stopped.store(true, ordering: .releasing)
        if !loopDone.load(ordering: .acquiring) {
            await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
                let resumeNow = finished.withLock { f -> Bool in
                    if loopDone.load(ordering: .acquiring) { return true }
                    f = cont
                    return false
                }
                if resumeNow { cont.resume() }
            }
        }
        await drainWriter()
        if let warning = memory.flush(nowMs: WallClock.nowMilliseconds(), force: true) { logger.warning("\(warning)") }
        for w in waiters.withLock({ w in defer { w = [:] }; return Array(w.values) }) { w.resume(returning: nil) }
    }

    public func run() async throws {
        start()
        try? await gracefulShutdown()
        await stop()
    }

    public func statistics() -> UDPAdapterStatistics {
        var s = stats.withLock { $0 }
        s.receiveBufferBytes = socket.receiveBufferBytes
        return s
    }

    /// The buffer granted against the one asked for, said once at start: under the shipped unit the kernel caps it
    /// at `net.core.rmem_max`, which the package's sysctl drop-in raises.
    private func logReceiveBuffer() {
        let granted = socket.receiveBufferBytes, wanted = configuration.receiveBufferBytes
        if granted >= wanted {
            logger.info("UDP receive buffer: \(granted / 1024) KiB", metadata: ["adapter": "udp:\(port)"])
        } else {
            logger.warning("UDP receive buffer: \(granted / 1024) KiB of the \(wanted / 1024) KiB asked for (net.core.rmem_max caps it); bursts overflow sooner: raise net.core.rmem_max to \(wanted) (the package's /usr/lib/sysctl.d/30-fieldgate.conf does) and restart", metadata: ["adapter": "udp:\(port)"])
        }
    }

    /// Takes new leaves and source rules on the same socket (reload); readings already received are kept.
    /// Throws when the socket itself would change (bind address, port, datagram size): that needs a new adapter.
    public func reconfigure(_ next: UDPAdapterConfiguration) throws(UDPAdapterError) {
        try current.withLock { c throws(UDPAdapterError) in
            guard next.bindAddress == c.bindAddress, next.port == c.port, next.maxDatagramBytes == c.maxDatagramBytes,
                  next.receiveBufferBytes == c.receiveBufferBytes else {
                throw UDPAdapterError("the UDP socket settings changed: a new adapter is needed")
            }
            c = next
        }
        memory.retain(Set(next.leaves.map(\.deviceID)))
        generation.add(1, ordering: .releasing)
    }

    // MARK: receiving

    /// The configured leaves numbered for the spool once; a round's readings start from a copy (a leaf added
    /// since is numbered in the copy).
    private static func readingsTemplate(_ configuration: UDPAdapterConfiguration) -> Spool.AppendBatch {
        var template = Spool.AppendBatch()
        for leaf in configuration.leaves { _ = template.leaf(leaf.deviceID) }
        return template
    }

    private func receiveLoop() {
        var decoderGeneration = generation.load(ordering: .acquiring)
        var decoder = DatagramDecoder(configuration: configuration)
        decoder.replay = ReplayGuard(floors: memory.memory.leaves.compactMapValues(\.signedUpToMs))
        let batch = UDPReceiveBatch(maxDatagramBytes: maxDatagramBytes)
        // The leaves numbered once for the spool (`Spool.AppendBatch`); each round's readings start from it.
        var readingsTemplate = Self.readingsTemplate(configuration)
        while !stopped.load(ordering: .acquiring) {
            heartbeat.beat()
            if let warning = memory.flush(nowMs: WallClock.nowMilliseconds()) { logger.warning("\(warning)") }
            var received = socket.receive(into: batch, timeoutMs: 200)
            guard received > 0 else { continue }
            // Checked after the wait: a datagram sent after a reload finished must meet the new leaves.
            if generation.load(ordering: .acquiring) != decoderGeneration {
                decoderGeneration = generation.load(ordering: .acquiring)
                let replay = decoder.replay  // a reload must not reopen the replay window
                decoder = DatagramDecoder(configuration: configuration)
                decoder.replay = replay
                readingsTemplate = Self.readingsTemplate(configuration)
            }
            var readings = readingsTemplate
            var readingsByLeaf: [String: Int] = [:]
            var rejections: [(DatagramRejection, String?)] = []
            var propertyFixes: [(MessageRules.Fix, String)] = []
            var seen: [String: (String, Int)] = [:]
            var taken = 0
            let nowMs = WallClock.nowMilliseconds()
            // Drain what is queued (up to a few batches) so one spool append carries many readings.
            while received > 0 {
                for k in 0..<received {
                    let d = batch.datagram(k)
                    let result = d.length > maxDatagramBytes
                        ? .failure(DatagramRejectionAt(.oversize, leaf: nil))
                        : decoder.decode(d.bytes, sourceIP: d.ip, sourcePort: d.port, nowMs: nowMs)
                    switch result {
                    case .success(.reading(let leaf, let acquired, let envelope, let fixes)):
                        readings.append(readings.leaf(leaf), acquiredAtMs: acquired, payload: envelope.encoded())
                        readingsByLeaf[leaf, default: 0] += 1
                        seen[leaf] = (d.ip, d.port)
                        for f in fixes { propertyFixes.append((f, leaf)) }
                    case .success(.reply(let leaf, let id, let status, let payload)):
                        seen[leaf] = (d.ip, d.port)
                        waiters.withLock { $0.removeValue(forKey: "\(leaf)/\(id)") }?.resume(returning: (status, payload))
                    case .failure(let r):
                        rejections.append((r.reason, r.leaf))
                    }
                }
                    taken += received
                received = taken < 1024 ? socket.receiveNow(into: batch) : 0
            }
            let kernelDrops = Int(batch.kernelDrops)
            var newDrops = 0
            if !readings.isEmpty { enqueue(readings, perLeaf: readingsByLeaf) }
            let signed = decoder.replay.takeChanged()
            if !seen.isEmpty || !signed.isEmpty {
                for (leaf, addr) in seen { memory.update(leaf) { $0.address = Self.formatAddress(addr.0, addr.1) } }
                for (leaf, ts) in signed { memory.update(leaf) { m in if m.signedUpToMs.map({ ts > $0 }) ?? true { m.signedUpToMs = ts } } }
            }
            if !seen.isEmpty {
                let back = awaitingContact.withLock { a in seen.keys.filter { a.remove($0) != nil } }
                for leaf in back { onReachable(leaf) }
            }
            stats.withLock { s in
                if kernelDrops > s.kernelDrops {
                    newDrops = kernelDrops - s.kernelDrops
                    s.kernelDrops = kernelDrops
                }
                for (leaf, addr) in seen { s.leaves[leaf, default: .init()].lastSeen = Self.formatAddress(addr.0, addr.1) }
                for (fix, leaf) in propertyFixes { s.leaves[leaf, default: .init()].propertyFixes[fix, default: 0] += 1 }
                for (reason, leaf) in rejections {
                    if let leaf { s.leaves[leaf, default: .init()].rejected[reason, default: 0] += 1 } else { s.unattributed[reason, default: 0] += 1 }
                }
            }
            // Only a burst faster than ingest makes the kernel drop: worth a line (at most one per 10 s).
            if newDrops > 0, mayLog("kernel-drops") {
                logger.warning("UDP: the kernel dropped \(newDrops) datagrams (\(kernelDrops) in all): the receive buffer (\(socket.receiveBufferBytes / 1024) KiB) overflowed in a burst", metadata: ["adapter": "udp:\(port)"])
            }
            for (reason, leaf) in rejections { logRateLimited(reason, leaf: leaf) }
            for (fix, leaf) in propertyFixes { logFixRateLimited(fix, leaf: leaf) }
        }
    }

    // MARK: writing

    /// Hands decoded readings to the writer queue. The receive thread never waits for the disk: an fdatasync that
    /// takes 100 ms would overflow the socket buffer at 50k datagrams/s. Readings pile up (bounded) while one
    /// append runs and go out together in the next one (group commit).
    private func enqueue(_ readings: Spool.AppendBatch, perLeaf: [String: Int]) {
        let (schedule, overflow) = pending.withLock { p -> (Bool, [String: Int]) in
            guard p.batch.count + readings.count <= Self.maxPendingReadings else { return (false, perLeaf) }
            p.batch.append(contentsOf: readings)
            p.perLeaf.merge(perLeaf, uniquingKeysWith: +)
            defer { p.scheduled = true }
            return (!p.scheduled, [:])
        }
        if !overflow.isEmpty {
            stats.withLock { s in for (leaf, n) in overflow { s.leaves[leaf, default: .init()].spoolRefused += n } }
            logSpoolTrouble("UDP readings dropped: the spool does not keep up (\(Self.maxPendingReadings) readings wait already); counted per leaf")
        }
        if schedule { writer.async { [self] in writePending() } }
    }

    /// On the writer queue: one spool append for everything pending.
    private func writePending() {
        let (readings, perLeaf) = pending.withLock { p in
            defer { p = Pending() }
            return (p.batch, p.perLeaf)
        }
        guard !readings.isEmpty else { return }
        var refused = false
        do throws(SpoolError) {
            _ = try spool.append(readings)
        } catch {
            refused = true
            logSpoolTrouble("UDP readings refused by the spool (\(error)); counted per leaf")
        }
        stats.withLock { s in
            for (leaf, n) in perLeaf {
                if refused { s.leaves[leaf, default: .init()].spoolRefused += n } else { s.leaves[leaf, default: .init()].readings += n }
            }
        }
        if !refused { onAppended() }
    }

    /// Waits until everything handed to the writer is in the spool.
    private func drainWriter() async {
        await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
            writer.async { [self] in
                writePending()
                cont.resume()
            }
        }
    }

    private func logSpoolTrouble(_ message: String) {
        let now = WallClock.nowMilliseconds()
        let go = lastSpoolLog.withLock { last -> Bool in
            guard now - last >= 10_000 else { return false }
            last = now
            return true
        }
        if go { logger.warning("\(message)", metadata: ["adapter": "udp:\(port)"]) }
    }

    /// At most one line per kind of warning per 10 s: hostile input must not flood the journal.
    private func mayLog(_ kind: String) -> Bool {
        let now = WallClock.nowMilliseconds()
        return lastLog.withLock { l -> Bool in
            guard now - (l[kind] ?? .min / 2) >= 10_000 else { return false }
            l[kind] = now
            return true
        }
    }

    private func logRateLimited(_ reason: DatagramRejection, leaf: String?) {
        guard mayLog("rejected:" + reason.rawValue) else { return }
        var metadata: Logger.Metadata = ["adapter": "udp:\(port)", "reason": "\(reason.rawValue)"]
        if let leaf { metadata["leaf"] = "\(leaf)" }
        logger.warning("UDP datagram rejected: \(reason.rawValue)\(leaf.map { " (leaf \($0))" } ?? "")", metadata: metadata)
    }

    private func logFixRateLimited(_ fix: MessageRules.Fix, leaf: String) {
        guard mayLog("fix:" + fix.rawValue) else { return }
        let what: String = switch fix {
        case .escapedName: "a property name outside the hub's character set was percent-escaped"
        case .escapedValue: "a property value outside printable ASCII was percent-escaped"
        case .reservedName: "a property with a reserved name ($…, iothub-…) or no name was dropped"
        case .duplicateName: "a property whose name differs from another only by case was dropped"
        }
        logger.warning("UDP reading of \(leaf): \(what) (docs/message-rules.md)", metadata: ["adapter": "udp:\(port)", "leaf": "\(leaf)", "fix": "\(fix.rawValue)"])
    }

    // MARK: commands (LeafRouter)

    private enum CommandResult {
        case reply(status: Int, payload: JSONValue)
        /// No configured `command_address` and nothing heard from the leaf (since the memory file began).
        case noAddress
        case noReply(timeoutMs: Int64)
    }

    /// Sends `body` to the leaf and waits for its reply with `id`. When the leaf cannot be reached, it is marked so
    /// that its next datagram tells the uplink (`onReachable`).
    private func command(_ leaf: String, id: String, body: JSONValue, timeoutMs: Int64) async -> CommandResult {
        let configured = configuration.leaves.first { $0.deviceID == leaf }
        guard let address = Self.parseAddress(configured?.commandAddress) ?? Self.parseAddress(memory.memory.leaves[leaf]?.address) else {
            awaitingContact.withLock { _ = $0.insert(leaf) }
            return .noAddress
        }
        let key = "\(leaf)/\(id)"
        var bytes = body.bytes
        if let hmac = configured?.hmacKey { bytes = DatagramDecoder.sign(bytes, key: hmac) }
        let answer = await withCheckedContinuation { (cont: CheckedContinuation<(Int, JSONValue)?, Never>) in
            waiters.withLock { $0[key] = cont }
            if !socket.send(bytes, toIP: address.ip, port: address.port) {
                waiters.withLock { $0.removeValue(forKey: key) }?.resume(returning: nil)
                return
            }
            Task {
                try? await Task.sleep(for: .milliseconds(timeoutMs))
                waiters.withLock { $0.removeValue(forKey: key) }?.resume(returning: nil)
            }
        }
        guard let (status, payload) = answer else {
            awaitingContact.withLock { _ = $0.insert(leaf) }
            return .noReply(timeoutMs: timeoutMs)
        }
        return .reply(status: status, payload: payload)
    }

    private static func notConnected(_ leaf: String) -> String {
        "leaf not connected: \(leaf) has not sent a datagram yet and has no command_address; commands reach it once it sends one"
    }

    public func cloudToDevice(_ message: C2DMessage) async -> C2DOutcome {
        let id = message.messageID ?? "c2d-\(UInt64.random(in: 1...UInt64.max))"
        let body: JSONValue = JSONValue.parse(message.body) ?? .string(String(decoding: message.body, as: UTF8.self))
        var fields: [String: JSONValue] = ["type": "c2d", "id": .string(id), "body": body,
                                           "props": .object(message.properties.mapValues(JSONValue.string))]
        // The service's system properties travel with the command, as a device SDK would show them.
        if let c = message.correlationID { fields["correlationId"] = .string(c) }
        if let t = message.contentType { fields["contentType"] = .string(t) }
        if let e = message.contentEncoding { fields["contentEncoding"] = .string(e) }
        let datagram = JSONValue.object(fields)
        switch await command(message.deviceID, id: id, body: datagram, timeoutMs: configuration.replyTimeoutMilliseconds) {
        case .noAddress:
            return .unreachable(Self.notConnected(message.deviceID))
        case .noReply(let timeout):
            return .unreachable("\(message.deviceID) did not acknowledge within \(timeout) ms")
        case .reply(let status, let payload):
            if (200..<300).contains(status) { return .complete }
            let why = payload.stringValue ?? payload.serialized
            return (400..<500).contains(status) ? .reject(why) : .abandon(why)
        }
    }

    public func invoke(_ call: MethodCall) async -> MethodResponse? {
        let id = "m-\(UInt64.random(in: 1...UInt64.max))"
        let datagram: JSONValue = ["type": "method", "id": .string(id), "name": .string(call.name), "payload": call.payload]
        // Answer before the uplink's deadline so the 504 says what happened.
        let timeout = max(0, min(configuration.replyTimeoutMilliseconds, call.deadlineMilliseconds - WallClock.nowMilliseconds() - 200))
        switch await command(call.deviceID, id: id, body: datagram, timeoutMs: timeout) {
        case .noAddress:
            return .error(404, Self.notConnected(call.deviceID))
        case .noReply(let timeout):
            return .error(504, "\(call.deviceID) did not answer \(call.name) within \(timeout) ms")
        case .reply(let status, let payload):
            return MethodResponse(status: status, payload: payload)
        }
    }

    /// Sends the desired document to the leaf only when it has desired properties (or had some the leaf
    /// acknowledged) and the document differs from the one it acknowledged last (kept across restarts).
    public func desiredProperties(_ desired: JSONValue, version: Int64, deviceID: String) async -> JSONValue? {
        let digest = UDPLeafMemory.digest(desired)
        let acknowledged = memory.memory.leaves[deviceID]?.desiredDigest
        let empty = desired.objectValue?.isEmpty ?? false
        if acknowledged == digest || (acknowledged == nil && empty) { return nil }
        let id = "d-\(version)"
        let datagram: JSONValue = ["type": "desired", "id": .string(id), "version": .int(version), "desired": desired]
        var ok = false
        if case .reply(let status, _) = await command(deviceID, id: id, body: datagram, timeoutMs: configuration.replyTimeoutMilliseconds) {
            ok = (200..<300).contains(status)
        }
        if ok { memory.update(deviceID) { $0.desiredDigest = digest } }
        return ["udp": ["desiredVersion": .int(version), "acknowledged": .bool(ok)]]
    }

    static func formatAddress(_ ip: String, _ port: Int) -> String {
        ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }

    static func parseAddress(_ s: String?) -> (ip: String, port: Int)? {
        guard let s, let colon = s.lastIndex(of: ":"), let port = Int(s[s.index(after: colon)...]) else { return nil }
        var ip = String(s[..<colon])
        if ip.hasPrefix("[") && ip.hasSuffix("]") { ip = String(ip.dropFirst().dropLast()) }
        return (ip, port)
    }
}
