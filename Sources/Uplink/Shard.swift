import FieldgateCore
import IoTHub
import Logging
import ProtonAMQP

/// One AMQP connection to the hub and the leaves it carries (≤ ~995). Owns the CBS link pair and every leaf's
/// links (all leaves share one session, as the C SDK does: a session per leaf cost ~10 KB each); turns Proton events into leaf-machine events and performs the machines' actions.
/// Reactor thread only. Work that does not start from one of this connection's own events (timers, the pump,
/// adapters) must go through `withConnection`: Proton writes a connection's frames only after its own events.
// @unchecked Sendable: captured by jobs that run on the reactor thread, the only thread that touches it.
final class Shard: @unchecked Sendable {
    enum Role { case cbsSender, cbsReceiver, telemetry(String), cloudToDevice(String) }

    /// One connection attempt's event sink, so events of an abandoned attempt cannot touch the current one.
    final class Attempt: AMQPConnectionHandler {
        weak var shard: Shard?
        let generation: Int
        init(shard: Shard, generation: Int) { self.shard = shard; self.generation = generation }
        func handle(_ event: AMQPEvent, on connection: AMQPConnection) {
            guard let shard, shard.generation == generation else { return }
            shard.handle(event, on: connection)
        }
    }

    unowned let engine: UplinkEngine
    let index: Int
    var machine: ConnectionMachine
    let leafOrder: [String]
    var leaves: [String: LeafRuntime] = [:]

    private(set) var generation = 0
    private var ref: AMQPConnectionRef?
    private var connection: AMQPConnection?
    private var attempt: Attempt?
    private var closeReason: String?

    private var leafSession: AMQPSession?
    private var cbsSender: AMQPLink?
    private var cbsReceiver: AMQPLink?
    private var cbsQueue: [(leaf: String, bytes: [UInt8])] = []
    /// Outstanding put-tokens: for one leaf, or for a hub-scope policy token shared by many.
    private enum TokenOwner { case leaf(String), policy(String) }
    private var cbsPending: [UInt64: TokenOwner] = [:]
    /// Hub-scope policy tokens of this connection (one per policy), renewed by the shard itself.
    private struct SharedToken {
        var renewAtMs: Int64 = 0
        var pendingID: UInt64?
        var waiting: [String] = []
    }
    private var sharedTokens: [String: SharedToken] = [:]
    private var nextCBSID: UInt64 = 0

    private var roles: [AMQPObjectID: Role] = [:]
    private var unsettled: [AMQPObjectID: (leaf: String, sequences: [UInt64])] = [:]
    private var cloudToDeviceDeliveries: [Int: (leaf: String, delivery: AMQPDelivery, link: AMQPObjectID)] = [:]
    private var nextCloudToDeviceToken = 0
    private var nextLinkNumber = 0
    private var nextTag: UInt64 = 0
    /// Where the pacer continues, so every queued leaf gets its turn.
    private var admitCursor = 0

    init(engine: UplinkEngine, index: Int, leaves: [LeafRuntime], connectionMachine: ConnectionMachine) {
        self.engine = engine
        self.index = index
        self.machine = connectionMachine
        self.leafOrder = leaves.map(\.deviceID)
        for l in leaves { self.leaves[l.deviceID] = l }
    }

    var isOpen: Bool { machine.phase == .open && connection != nil }
    /// A connection (or an attempt) exists.
    var hasConnection: Bool { attempt != nil }
    var logger: Logger { engine.logger }

    // MARK: connection

    /// Runs `body` inside this connection's event context (so its frames go out), or at once when there is no
    /// open connection.
    func withConnection(_ body: @escaping @Sendable (Shard) -> Void) {
        guard isOpen, let ref else { return body(self) }
        if !ref.execute({ [self] _ in body(self) }) { body(self) }
    }

    /// Connects when due; abandons an attempt that takes too long.
    func tickConnection(nowMs: Int64) {
        if machine.attemptTimedOut(nowMs: nowMs) {
            logger.warning("uplink[\(index)]: connecting to \(engine.configuration.hostName) timed out")
            closeReason = "connect timed out"
            ref?.close()
            connectionGone(error: "connect timed out")
        }
        if machine.shouldConnect(nowMs: nowMs) { connect() }
    }

    /// Renewals, retries, timeouts and paused senders of every leaf. Call inside `withConnection`.
    func tickLeaves(nowMs: Int64) {
        guard isOpen else { return }
        renewSharedTokens(nowMs: nowMs)
        for id in leafOrder {
            guard let leaf = leaves[id] else { continue }
            perform(leaf.machine.tick(nowMs: nowMs), for: leaf)
            if leaf.machine.canSend(nowMs: nowMs) { flush(leaf) }
        }
    }

    private func connect() {
        generation += 1
        let attempt = Attempt(shard: self, generation: generation)
        self.attempt = attempt
        closeReason = nil
        let c = engine.configuration
        var client: AMQPClientConfiguration
        switch c.transport {
        case .tls(let tls):
            client = AMQPClientConfiguration(tls: AMQPClientTLS(trustedCAFile: tls.caFile, peerHostname: c.hostName, verifyPeer: tls.verifyHostName))
        case .insecurePlainAMQP:
            client = AMQPClientConfiguration(tls: nil)
        }
        client.idleTimeoutMilliseconds = c.idleTimeoutMilliseconds
        client.virtualHost = c.hostName
        ref = engine.reactor.connect(host: c.address ?? c.hostName, port: c.port, configuration: client, handler: attempt)
    }

    /// Leaves the pacer may admit now, in turn.
    func admitQueued(nowMs: Int64, allowance: inout Int) {
        guard isOpen, allowance > 0, !leafOrder.isEmpty else { return }
        for step in 0..<leafOrder.count where allowance > 0 {
            let id = leafOrder[(admitCursor + step) % leafOrder.count]
            guard let leaf = leaves[id], leaf.machine.phase == .queued else { continue }
            allowance -= 1
            admitCursor = (admitCursor + step + 1) % leafOrder.count
            perform(leaf.machine.admitted(nowMs: nowMs), for: leaf)
        }
    }

    var queuedLeaves: Int { isOpen ? leaves.values.reduce(0) { $0 + ($1.machine.phase == .queued ? 1 : 0) } : 0 }

    func close() {
        ref?.close()
    }

    func handle(_ event: AMQPEvent, on connection: AMQPConnection) {
        switch event {
        case .connectionOpened:
            self.connection = connection
            machine.opened(nowMs: engine.nowMs())
            logger.info("uplink[\(index)]: connected to \(engine.configuration.hostName) (\(leafOrder.count) leaves)")
            openCBS(on: connection)
            for leaf in leaves.values { leaf.machine.connectionOpened() }
            engine.leavesQueued(self)
        case .connectionClosed(let condition):
            closeReason = condition.map { "hub closed the connection: \($0.name) \($0.description)" } ?? "hub closed the connection"
        case .transportClosed(let error):
            var reason = closeReason ?? error.map { "\($0.message)" } ?? "connection closed"
            if reason.contains("SSL") {
                reason = "TLS handshake with \(engine.configuration.hostName) failed: the hub's certificate must chain to the configured CA bundle and name that host (\(reason))"
            }
            connectionGone(error: reason)
        case .linkOpened(let link):
            linkOpened(link)
        case .linkClosed(let link, let condition):
            linkClosed(link, condition: condition)
        case .linkFinal(let link):
            roles[link.id] = nil
        case .linkFlow(let link):
            switch roles[link.id] {
            case .cbsSender?: flushCBS()
            case .telemetry(let d)?: if let leaf = leaves[d] { flush(leaf) }
            default: break
            }
        case .message(let delivery, let bytes):
            switch roles[delivery.link.id] {
            case .cbsReceiver?: cbsReply(bytes, delivery: delivery)
            case .cloudToDevice(let d)?: cloudToDeviceArrived(bytes, delivery: delivery, leafID: d)
            default: delivery.dispose(.rejected(AMQPCondition(name: "amqp:not-allowed", description: "unexpected message")))
            }
        case .deliveryUpdated(let delivery):
            if case .cbsSender? = roles[delivery.link.id] {
                if delivery.isRemotelySettled || delivery.remoteOutcome != nil { delivery.settle() }
            } else {
                telemetryOutcome(delivery)
            }
        case .sessionOpened, .sessionClosed:
            break
        }
    }

    /// The socket is gone (or the attempt was abandoned): everything in flight goes back to the spool.
    private func connectionGone(error: String) {
        guard attempt != nil else { return }
        let wasOpen = machine.phase == .open
        attempt = nil
        ref = nil
        connection = nil
        // Unsettled deliveries have an unknown fate: the spool still holds them in flight; give every one back.
        var released = unsettled.values.flatMap(\.sequences)
        cbsSender = nil
        cbsReceiver = nil
        leafSession = nil
        cbsQueue = []
        cbsPending = [:]
        sharedTokens = [:]
        roles = [:]
        unsettled = [:]
        cloudToDeviceDeliveries = [:]
        for leaf in leaves.values {
            released += leaf.takePending()
            leaf.unsettled = 0
            leaf.telemetry = nil
            leaf.cloudToDevice = nil
            leaf.telemetryAttached = false
            leaf.cloudToDeviceAttached = false
            leaf.machine.connectionLost()
        }
        engine.release(released, fromShard: index)
        machine.closed(error: error, nowMs: engine.nowMs(), random: engine.random())
        let level: Logger.Level = engine.stopping ? .debug : wasOpen ? .warning : .error
        logger.log(level: level, "uplink[\(index)]: \(wasOpen ? "connection lost" : "cannot connect"): \(error); retrying in \(max(0, machine.retryAtMs - engine.nowMs())) ms")
    }

    // MARK: CBS

    private func openCBS(on connection: AMQPConnection) {
        let session = connection.openSession()
        let sender = session.sender(name: "$cbs-sender")
        sender.setTarget(IoTHubAMQP.cbsAddress)
        sender.setSource("$cbs-sender")
        sender.open()
        let receiver = session.receiver(name: "$cbs-receiver")
        receiver.setSource(IoTHubAMQP.cbsAddress)
        receiver.setTarget("$cbs-receiver")
        receiver.open()
        receiver.flow(200)
        roles[sender.id] = .cbsSender
        roles[receiver.id] = .cbsReceiver
        leafSession = connection.openSession()
        cbsSender = sender
        cbsReceiver = receiver
    }

    private func putToken(for leaf: LeafRuntime, slot: LeafMachine.KeySlot) {
        guard let policy = leaf.configuration.hubScopePolicy else {
            if let id = sendPutToken(for: leaf.configuration, slot: slot) { cbsPending[id] = .leaf(leaf.deviceID) }
            return
        }
        var shared = sharedTokens[policy, default: SharedToken()]
        if shared.pendingID == nil && engine.nowMs() < shared.renewAtMs {
            // The connection's policy token already covers this leaf.
            if leaf.machine.phase == .ready { leaf.counters.tokenRenewals += 1 }
            perform(leaf.machine.tokenAnswered(status: 200, description: "OK (hub-scope token)", nowMs: engine.nowMs(), random: engine.random()), for: leaf)
            return
        }
        shared.waiting.append(leaf.deviceID)
        if shared.pendingID == nil {
            shared.pendingID = sendPutToken(for: leaf.configuration, slot: slot)
            if let id = shared.pendingID { cbsPending[id] = .policy(policy) }
        }
        sharedTokens[policy] = shared
    }

    /// Renews hub-scope tokens before they expire (their leaves' own renewals are answered from them).
    private func renewSharedTokens(nowMs: Int64) {
        for (policy, shared) in sharedTokens where shared.pendingID == nil && nowMs >= shared.renewAtMs {
            guard let leaf = leaves.values.first(where: { $0.configuration.hubScopePolicy == policy }) else { continue }
            sharedTokens[policy]?.pendingID = sendPutToken(for: leaf.configuration, slot: .primary)
            if let id = sharedTokens[policy]?.pendingID { cbsPending[id] = .policy(policy) }
        }
    }

    /// Queues a put-token on the CBS link; nil (and the leaf answered) when no token can be signed.
    private func sendPutToken(for leaf: LeafConfiguration, slot: LeafMachine.KeySlot) -> UInt64? {
        let nowMs = engine.nowMs()
        // Rounded up, so the token lives at least the TTL the renewal schedule assumes.
        let expiry = (nowMs + engine.configuration.tokenTTLSeconds * 1000 + 999) / 1000
        let minter = TokenMinter(hostName: engine.configuration.hostName)
        let token: String
        do { token = try minter.token(for: leaf, slot: slot, expiry: expiry) } catch {
            // A key that is not base64 is a configuration error: the hub would refuse it too.
            if let runtime = leaves[leaf.deviceID] {
                perform(runtime.machine.tokenAnswered(status: 401, description: "cannot sign a token: \(error.message)", nowMs: nowMs, random: engine.random()), for: runtime)
            }
            return nil
        }
        let id = nextCBSID
        nextCBSID += 1
        var m = AMQPMessage()
        m.messageID = .ulong(id)
        m.applicationProperties = [
            "operation": "put-token",
            "type": .string(IoTHubAMQP.tokenTypeServiceBus),
            "name": .string(minter.audience(for: leaf)),
        ]
        m.body = .value(.string(token))
        logger.trace("uplink[\(index)]: put-token \(id) for \(leaf.deviceID)")
        cbsQueue.append((leaf.deviceID, AMQPMessageCodec.encode(m)))
        flushCBS()
        return id
    }

    private func flushCBS() {
        guard let sender = cbsSender else { return }
        var sent = 0
        while sent < cbsQueue.count, sender.credit > 0 {
            sender.send(cbsQueue[sent].bytes, tag: nextDeliveryTag())
            sent += 1
        }
        if sent > 0 { cbsQueue.removeFirst(sent) }
    }

    private func cbsReply(_ bytes: [UInt8], delivery: AMQPDelivery) {
        delivery.dispose(.accepted)
        cbsReceiver?.flow(1)
        logger.trace("uplink[\(index)]: CBS reply \((try? AMQPMessageCodec.decode(bytes)).map { "\($0.correlationID as Any) \($0.applicationProperties)" } ?? "undecodable")")
        guard let reply = try? AMQPMessageCodec.decode(bytes), case .ulong(let id)? = reply.correlationID,
              let owner = cbsPending.removeValue(forKey: id)
        else { return }
        let status = reply.applicationProperties["status-code"]?.integerValue.map(Int.init) ?? 0
        let description = reply.applicationProperties["status-description"]?.stringValue ?? ""
        let nowMs = engine.nowMs()
        let waiting: [String]
        switch owner {
        case .leaf(let id):
            waiting = [id]
        case .policy(let policy):
            waiting = sharedTokens[policy]?.waiting ?? []
            let c = engine.configuration
            let renewFraction = max(0.1, c.tokenRenewFraction - c.tokenRenewJitter)
            sharedTokens[policy] = (200..<300).contains(status)
                ? SharedToken(renewAtMs: nowMs + Int64(Double(c.tokenTTLSeconds * 1000) * renewFraction))
                : nil
            if !(200..<300).contains(status) {
                // The policy itself is refused: every leaf that relies on it hears so.
                for leaf in leaves.values where leaf.configuration.hubScopePolicy == policy && leaf.machine.phase == .ready {
                    perform(leaf.machine.linkDetached(condition: IoTHubAMQP.unauthorizedAccess, description: "hub-scope token refused: \(description)", nowMs: nowMs, random: engine.random()), for: leaf)
                }
            }
        }
        if !(200..<300).contains(status) {
            logger.warning("uplink[\(index)]: put-token for \(waiting.first ?? "?")\(waiting.count > 1 ? " and \(waiting.count - 1) more" : "") answered \(status) \(description)")
        }
        for leafID in waiting {
            guard let leaf = leaves[leafID] else { continue }
            if !(200..<300).contains(status) {
                leaf.counters.tokenFailures += 1
            } else if leaf.machine.phase == .ready {
                leaf.counters.tokenRenewals += 1
            }
            perform(leaf.machine.tokenAnswered(status: status, description: description, nowMs: nowMs, random: engine.random()), for: leaf)
        }
    }

    // MARK: leaf actions

    func perform(_ actions: [LeafMachine.Action], for leaf: LeafRuntime) {
        for action in actions {
            switch action {
            case .putToken(let slot): putToken(for: leaf, slot: slot)
            case .attachLinks: attachLinks(leaf)
            case .detachLinks: detachLinks(leaf)
            }
        }
    }

    private func attachLinks(_ leaf: LeafRuntime) {
        guard let session = leafSession else { return }
        detachLinks(leaf)
        let properties: [AMQPValue: AMQPValue] = [.symbol(IoTHubAMQP.clientVersionProperty): .string(engine.configuration.clientVersion)]
        nextLinkNumber += 1
        let telemetry = session.sender(name: "telemetry-\(leaf.deviceID)-\(nextLinkNumber)")
        telemetry.setTarget(DeviceAddress(deviceID: leaf.deviceID, endpoint: .events).canonical)
        telemetry.setSource("telemetry-\(leaf.deviceID)")
        telemetry.setProperties(properties)
        telemetry.setSenderSettleMode(.unsettled)
        telemetry.open()
        roles[telemetry.id] = .telemetry(leaf.deviceID)
        leaf.telemetry = telemetry
        if leaf.receivesCloudToDevice {
            let c2d = session.receiver(name: "c2d-\(leaf.deviceID)-\(nextLinkNumber)")
            c2d.setSource(DeviceAddress(deviceID: leaf.deviceID, endpoint: .deviceBound).canonical)
            c2d.setTarget("c2d-\(leaf.deviceID)")
            c2d.setProperties(properties)
            c2d.setReceiverSettleMode(.first)
            c2d.open()
            roles[c2d.id] = .cloudToDevice(leaf.deviceID)
            leaf.cloudToDevice = c2d
        }
    }

    /// Closes the leaf's links and gives its telemetry back to the spool.
    private func detachLinks(_ leaf: LeafRuntime) {
        var released = leaf.takePending()
        if let t = leaf.telemetry {
            for (id, entry) in unsettled where entry.leaf == leaf.deviceID {
                released += entry.sequences
                unsettled[id] = nil
            }
            leaf.unsettled = 0
            roles[t.id] = nil
        }
        if let c = leaf.cloudToDevice {
            roles[c.id] = nil
            for (token, entry) in cloudToDeviceDeliveries where entry.link == c.id { cloudToDeviceDeliveries[token] = nil }
        }
        engine.release(released, fromShard: index)
        for link in [leaf.telemetry, leaf.cloudToDevice].compactMap({ $0 }) {
            if link.isLocallyOpen { link.close() }
            link.free()
        }
        leaf.telemetry = nil
        leaf.cloudToDevice = nil
        leaf.telemetryAttached = false
        leaf.cloudToDeviceAttached = false
    }

    private func linkOpened(_ link: AMQPLink) {
        guard let role = roles[link.id] else { return }
        let refused = (link.isSender ? link.remoteTargetAddress : link.remoteSourceAddress) == nil
        if refused { return }  // the hub refuses; its detach with the reason follows
        switch role {
        case .cbsSender: flushCBS()
        case .cbsReceiver: break
        case .telemetry(let d):
            guard let leaf = leaves[d] else { return }
            leaf.telemetryAttached = true
            linkAttachedMaybeReady(leaf)
        case .cloudToDevice(let d):
            guard let leaf = leaves[d] else { return }
            leaf.cloudToDeviceAttached = true
            link.flow(engine.configuration.cloudToDeviceCredit)
            linkAttachedMaybeReady(leaf)
        }
    }

    private func linkAttachedMaybeReady(_ leaf: LeafRuntime) {
        guard leaf.linksAttached else { return }
        leaf.machine.linksAttached()
        engine.leafBecameReady()
    }

    private func linkClosed(_ link: AMQPLink, condition: AMQPCondition?) {
        guard let role = roles[link.id] else { return }
        switch role {
        case .cbsSender, .cbsReceiver:
            // Without CBS no leaf can authenticate: start the connection over.
            logger.warning("uplink[\(index)]: the hub detached the CBS link (\(condition?.name ?? "no condition")); reconnecting")
            closeReason = "CBS link detached: \(condition?.description ?? "")"
            connection?.close()
        case .telemetry(let d), .cloudToDevice(let d):
            guard let leaf = leaves[d] else { return }
            leaf.counters.linkFailures += 1
            logger.warning("uplink[\(index)]: \(d): link detached: \(condition?.name ?? "no condition") \(condition?.description ?? "")")
            let actions = leaf.machine.linkDetached(condition: condition?.name, description: condition?.description ?? "", nowMs: engine.nowMs(), random: engine.random())
            perform(actions, for: leaf)
        }
    }

    private func nextDeliveryTag() -> [UInt8] {
        nextTag &+= 1
        return withUnsafeBytes(of: nextTag.littleEndian) { Array($0) }
    }

    // MARK: telemetry

    /// Sends the leaf's pending messages while it has credit, is not paused and the D2C rate allows.
    func flush(_ leaf: LeafRuntime) {
        guard leaf.pendingCount > 0, leaf.telemetryAttached, let link = leaf.telemetry,
              leaf.machine.canSend(nowMs: engine.nowMs())
        else { return }
        var credit = link.credit
        let limit = leaf.machine.inFlightLimit(engine.configuration.maxInFlightPerLeaf)
        while credit > 0, leaf.pendingCount > 0, leaf.unsettled < limit, engine.takeSendPermit() {
            let m = leaf.popPending()!
            let d = link.send(m.bytes, tag: nextDeliveryTag())
            unsettled[d.id] = (leaf.deviceID, m.sequences)
            leaf.unsettled += 1
            leaf.counters.sent += 1
            credit -= 1
        }
    }

    private func telemetryOutcome(_ delivery: AMQPDelivery) {
        guard let entry = unsettled[delivery.id] else { return }
        let outcome = delivery.remoteOutcome ?? (delivery.isRemotelySettled ? .accepted : nil)
        guard let outcome else { return }
        unsettled[delivery.id] = nil
        delivery.settle()
        guard let leaf = leaves[entry.leaf] else { return }
        leaf.unsettled -= 1
        let nowMs = engine.nowMs()
        switch outcome {
        case .accepted:
            leaf.counters.acceptedRecords += entry.sequences.count
            leaf.machine.delivered()
            engine.acknowledge(entry.sequences)
        case .rejected(let condition):
            switch condition?.name {
            case IoTHubAMQP.throttled?, IoTHubAMQP.resourceLimitExceeded?:
                leaf.counters.throttled += 1
                leaf.machine.throttled(description: condition?.description ?? "", nowMs: nowMs, random: engine.random())
                // Everything the leaf holds goes back, so the spool resends it in order after the pause.
                engine.release(entry.sequences + leaf.takePending(), fromShard: index)
            case IoTHubAMQP.unauthorizedAccess?:
                // "Token Invalid.": the links are about to go; resend after re-authentication.
                engine.release(entry.sequences + leaf.takePending(), fromShard: index)
            default:
                leaf.counters.rejectedRecords += entry.sequences.count
                logger.warning("uplink[\(index)]: \(entry.leaf): the hub rejected a message for good (\(condition?.name ?? "no condition") \(condition?.description ?? "")); it goes to the dead-letter file")
                engine.deadLetter(entry.sequences)
            }
        case .released, .modified:
            engine.release(entry.sequences + leaf.takePending(), fromShard: index)
        }
        flush(leaf)
        engine.kickPump()
    }

    // MARK: cloud to device

    private func cloudToDeviceArrived(_ bytes: [UInt8], delivery: AMQPDelivery, leafID: String) {
        guard let leaf = leaves[leafID] else { return delivery.dispose(.released) }
        leaf.counters.cloudToDeviceReceived += 1
        let message: AMQPMessage
        do { message = try AMQPMessageCodec.decode(bytes) } catch {
            leaf.counters.cloudToDeviceRejected += 1
            delivery.dispose(.rejected(AMQPCondition(name: IoTHubAMQP.decodeError, description: "undecodable C2D message")))
            delivery.link.flow(1)
            return
        }
        if let expiry = message.absoluteExpiryTime, expiry > 0, expiry < engine.nowMs() {
            leaf.counters.cloudToDeviceExpired += 1
            delivery.dispose(.rejected(AMQPCondition(name: "amqp:precondition-failed", description: "the message expired before delivery")))
            delivery.link.flow(1)
            return
        }
        let c2d = C2DMessage(amqp: message, deviceID: leafID)
        nextCloudToDeviceToken += 1
        let token = nextCloudToDeviceToken
        cloudToDeviceDeliveries[token] = (leafID, delivery, delivery.link.id)
        let decision = c2d.messageID.map { leaf.dedupe.arrived(messageID: $0, token: token) } ?? .deliver
        switch decision {
        case .deliver:
            engine.route(c2d, shard: index, token: token)
        case .wait:
            leaf.counters.cloudToDeviceDuplicates += 1
        case .settle(let outcome):
            leaf.counters.cloudToDeviceDuplicates += 1
            settleCloudToDevice(token: token, outcome: outcome, counted: false)
        }
    }

    /// The adapter's outcome for the C2D message behind `token` (or the deadline's abandon).
    func cloudToDeviceFinished(token: Int, message: C2DMessage, outcome: C2DOutcome) {
        let waiting: [Int]
        if let id = message.messageID, let leaf = leaves[message.deviceID] {
            waiting = leaf.dedupe.finished(messageID: id, outcome: outcome)
            guard !waiting.isEmpty else { return }  // already settled (deadline passed first)
        } else {
            waiting = [token]
        }
        for (i, t) in waiting.enumerated() { settleCloudToDevice(token: t, outcome: outcome, counted: i == 0) }
    }

    private func settleCloudToDevice(token: Int, outcome: C2DOutcome, counted: Bool) {
        guard let entry = cloudToDeviceDeliveries.removeValue(forKey: token) else { return }  // its link is gone
        let leaf = leaves[entry.leaf]
        switch outcome {
        case .complete:
            entry.delivery.dispose(.accepted)
            if counted { leaf?.counters.cloudToDeviceCompleted += 1 }
        case .reject(let why):
            entry.delivery.dispose(.rejected(AMQPCondition(name: "amqp:not-allowed", description: why)))
            if counted { leaf?.counters.cloudToDeviceRejected += 1 }
        case .abandon:
            entry.delivery.dispose(.released)
            if counted { leaf?.counters.cloudToDeviceAbandoned += 1 }
        }
        if roles[entry.link] != nil { leaf?.cloudToDevice?.flow(1) }
    }
}

extension C2DMessage {
    init(amqp m: AMQPMessage, deviceID: String) {
        func text(_ v: AMQPValue?) -> String? {
            guard let v else { return nil }
            if let s = v.stringValue { return s }
            if let i = v.integerValue { return String(i) }
            if case .uuid(let u) = v { return u.description }
            return "\(v)"
        }
        var properties: [String: String] = [:]
        for (k, v) in m.applicationProperties { properties[k] = text(v) }
        let count = m.messageAnnotations[.symbol(IoTHubAMQP.deliveryCountAnnotation)]?.integerValue ?? Int64(m.deliveryCount ?? 0)
        self.init(deviceID: deviceID, messageID: text(m.messageID), correlationID: text(m.correlationID),
                  contentType: m.contentType, contentEncoding: m.contentEncoding, properties: properties,
                  body: m.body.bytes, expiryMilliseconds: m.absoluteExpiryTime, deliveryCount: Int(count))
    }
}
