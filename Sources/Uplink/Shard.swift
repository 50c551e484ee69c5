import FieldgateCore
import HubTunnel
import IoTHub
import Logging
import ProtonAMQP

/// One AMQP connection to the hub and the leaves it carries (≤ ~995). Owns the CBS link pair and every leaf's
/// links (in sessions of up to `leavesPerSession` leaves); turns Proton events into leaf-machine events and performs
/// the machines' actions.
/// Reactor thread only. Work that does not start from one of this connection's own events (timers, the pump,
/// adapters) must go through `withConnection`: Proton writes a connection's frames only after its own events.
// @unchecked Sendable: captured by jobs that run on the reactor thread, the only thread that touches it.
final class Shard: @unchecked Sendable {
    enum Role { case cbsSender, cbsReceiver, leaf(String, LeafLink) }

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
    private(set) var leafOrder: [String]
    var leaves: [String: LeafRuntime] = [:]
    /// Counters of leaves a reload changed (removed, then added again), by device id, until the new one is added. The
    /// new one is added to this shard unless it is full (then the counts start over on the other).
    var retiredCounters: [String: LeafCounters] = [:]

    private(set) var generation = 0
    private var ref: AMQPConnectionRef?
    var connection: AMQPConnection?
    private var attempt: Attempt?
    private var closeReason: String?

    /// Leaves share sessions, `leavesPerSession` at most: Proton finds a new link's handle by scanning its session's
    /// handles, so one session for a thousand leaves' six thousand links made connecting quadratic, while a session
    /// per leaf cost ~10 KB each. nil until the connection opens.
    static let leavesPerSession = 100
    private var leafSessions: [(session: AMQPSession, leaves: Int)]?
    private var sessionOfLeaf: [String: Int] = [:]
    /// The CBS links and put-tokens of this connection (Shard+CBS.swift).
    var cbs = ShardCBS()

    var roles: [AMQPObjectID: Role] = [:]
    /// Links closed on our side whose detach from the hub has not come yet: freed when it does (`retire`).
    private var retiring: Set<AMQPObjectID> = []
    /// The link whose detach is being handled now (a detach without `closed` leaves no trace in Proton's state).
    private var detachingNow: AMQPObjectID?
    /// Telemetry on the wire: whose, which records (none: a heartbeat), and the quota pause's generation it went in.
    var unsettled = UnsettledTelemetry()
    var cloudToDeviceDeliveries: [Int: CloudToDeviceDelivery] = [:]
    var nextCloudToDeviceToken = 0
    private var nextLinkNumber = 0
    var nextTag: UInt64 = 0
    /// Where the pacer continues, so every queued leaf gets its turn.
    private var admitCursor = 0
    /// The leaves admitted that were authenticating or attaching when last looked at (`attachRoom`).
    private var admitted: [String] = []
    /// The most leaves this connection had between admission and ready at once (at most `attachingPerConnection`).
    private(set) var mostAttachingAtOnce = 0
    /// What this hub refuses as not in its tier; kept across reconnects to the same host.
    private(set) var tierLimits: HubTierLimits
    private var tierLimitsHost: String?

    /// The hub of this connection's identities (nil: the configured hub).
    let hubHost: String?
    /// The credential whose client certificate this connection presents, fixed when the connection is made for its
    /// identity; nil for a connection of SAS identities. Such a connection never takes other identities, even once its
    /// own has left (it has no CBS links for their tokens).
    let certificateCredential: LeafCredential?
    /// A certificate connection whose identity left: closed for good (no other identity may use it).
    private(set) var retired = false

    init(engine: UplinkEngine, index: Int, hubHost: String?, leaves: [LeafRuntime], connectionMachine: ConnectionMachine) {
        self.engine = engine
        self.index = index
        self.hubHost = hubHost
        self.certificateCredential = leaves.first { $0.configuration.credential.isCertificate }?.configuration.credential
        self.machine = connectionMachine
        self.tierLimits = HubTierLimits(recheckMilliseconds: engine.configuration.tierRecheckMilliseconds)
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
        guard !retired else { return }
        if machine.attemptTimedOut(nowMs: nowMs) {
            logger.warning("uplink[\(index)]: connecting to \(machine.route) timed out")
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
        probeTierLimits(nowMs: nowMs)
        for id in leafOrder {
            guard let leaf = leaves[id] else { continue }
            perform(leaf.machine.tick(nowMs: nowMs), for: leaf)
            if leaf.heartbeat != nil { sendHeartbeatIfDue(leaf, nowMs: nowMs) }
            if leaf.machine.canSend(nowMs: nowMs) { flush(leaf) }
            tickCloudToDevice(leaf, nowMs: nowMs)
        }
    }

    /// The hub host in use: tokens, TLS and the Open name it.
    var hostName: String { machine.route.host }

    private func connect() {
        generation += 1
        let attempt = Attempt(shard: self, generation: generation)
        self.attempt = attempt
        closeReason = nil
        let c = engine.configuration
        let route = machine.route
        if tierLimitsHost != route.host {
            // Another host may be another hub (another tier): learn it again.
            tierLimits = HubTierLimits(recheckMilliseconds: c.tierRecheckMilliseconds)
            tierLimitsHost = route.host
        }
        // `address` overrides where the configured (first) host is reached, `hostAddresses` where others are.
        let (address, port) = c.endpoint(for: route.host)
        switch route.kind {
        case .amqps:
            var client: AMQPClientConfiguration
            switch c.transport {
            case .tls(let tls):
                var clientTLS = AMQPClientTLS(trustedCAFile: tls.caFile, peerHostname: route.host, verifyPeer: tls.verifyHostName)
                if case .x509(let certificate, let key)? = certificateCredential {
                    clientTLS.certificateFile = certificate
                    clientTLS.privateKeyFile = key
                }
                client = AMQPClientConfiguration(tls: clientTLS)
            case .insecurePlainAMQP:
                // Every time, so it cannot scroll out of sight: keys-derived tokens travel in the clear.
                logger.warning("uplink[\(index)]: connecting to \(address):\(port) WITHOUT TLS (insecure_plain_amqp = true): SAS tokens and data travel in plaintext; use this only against a local test hub")
                client = AMQPClientConfiguration(tls: nil)
            }
            client.idleTimeoutMilliseconds = c.idleTimeoutMilliseconds
            client.virtualHost = route.host
            ref = engine.reactor.connect(host: address, port: port, configuration: client, handler: attempt)
        case .webSocket:
            var tunnel = c.tunnelConfiguration(host: route.host)
            if case .x509(let certificate, let key)? = certificateCredential {
                tunnel.clientCertificateFile = certificate
                tunnel.clientKeyFile = key
            }
            var client = AMQPClientConfiguration(tls: nil)
            client.idleTimeoutMilliseconds = c.idleTimeoutMilliseconds
            client.virtualHost = route.host
            ref = engine.reactor.connect(stream: WebSocketTunnel(configuration: tunnel), host: route.host, configuration: client, handler: attempt)
        }
    }

    /// How many more leaves may be admitted now: `attachingPerConnection` less those between admission and ready.
    func attachRoom() -> Int {
        // A leaf enters authenticating or attaching only when admitted, so the admitted list holds every one.
        admitted.removeAll { id in
            guard let phase = leaves[id]?.machine.phase else { return true }
            return phase != .authenticating && phase != .attaching
        }
        return max(0, engine.configuration.attachingPerConnection - admitted.count)
    }

    /// Queued leaves, in turn, as many as `allowance` (the pacer's tokens, never more than `attachRoom()`).
    func admitQueued(nowMs: Int64, allowance: inout Int) {
        guard isOpen, allowance > 0, !leafOrder.isEmpty else { return }
        for step in 0..<leafOrder.count where allowance > 0 {
            let id = leafOrder[(admitCursor + step) % leafOrder.count]
            guard let leaf = leaves[id], leaf.machine.phase == .queued else { continue }
            allowance -= 1
            admitCursor = (admitCursor + step + 1) % leafOrder.count
            perform(leaf.machine.admitted(nowMs: nowMs), for: leaf)
            admitted.append(id)
            mostAttachingAtOnce = max(mostAttachingAtOnce, admitted.count)
        }
    }

    /// A leaf added while running (reload): it queues for the attach pacer at once when the connection is open.
    func addLeaf(_ leaf: LeafRuntime) {
        // A leaf changed by a reload is removed and added again: its counts go on (status, metrics).
        if let carried = retiredCounters.removeValue(forKey: leaf.deviceID) { leaf.counters = carried }
        leaves[leaf.deviceID] = leaf
        leafOrder.append(leaf.deviceID)
        guard isOpen else { return }
        leaf.machine.connectionOpened()
        engine.leavesQueued(self)
    }

    /// A leaf removed while running (reload): its links close and what it had in flight goes back to the spool,
    /// where its records wait (TTL and cap apply) until the leaf is configured again. The connection stays.
    func removeLeaf(_ id: String, keepingCounters: Bool = false) {
        guard let leaf = leaves.removeValue(forKey: id) else { return }
        if keepingCounters { retiredCounters[id] = leaf.counters }
        leafOrder.removeAll { $0 == id }
        admitCursor = leafOrder.isEmpty ? 0 : admitCursor % leafOrder.count
        detachLinks(leaf)
        if let i = sessionOfLeaf.removeValue(forKey: id) { leafSessions?[i].leaves -= 1 }
        cbs.forget(id)
        if certificateCredential != nil && leaves.isEmpty {
            retired = true
            closeReason = "its certificate identity left"
            ref?.close()
        }
    }

    /// Tokens this connection needs: one per leaf with its own key, one per hub-scope policy.
    var tokenCount: Int {
        var policies: Set<String> = []
        var count = 0
        for leaf in leaves.values {
            if let p = leaf.configuration.hubScopePolicy { if policies.insert(p).inserted { count += 1 } } else { count += 1 }
        }
        return count
    }

    func close() {
        ref?.close()
    }

    func handle(_ event: AMQPEvent, on connection: AMQPConnection) {
        switch event {
        case .connectionOpened:
            self.connection = connection
            machine.opened(nowMs: engine.nowMs())
            logger.info("uplink[\(index)]: connected to \(machine.route) (\(leafOrder.count) leaves)")
            // An X.509 identity authenticated at TLS: no CBS (as the Azure C SDK in X.509 mode).
            if certificateCredential == nil { openCBS(on: connection) }
            leafSessions = []
            for leaf in leaves.values { leaf.machine.connectionOpened() }
            engine.leavesQueued(self)
        case .connectionClosed(let condition):
            closeReason = condition.map { "hub closed the connection: \($0.name) \($0.description)" } ?? "hub closed the connection"
        case .transportClosed(let error):
            var reason = closeReason ?? error.map { "\($0.message)" } ?? "connection closed"
            // Proton marks every TLS failure (the text differs between OpenSSL 3.0 and 3.5: "certificate verify
            // failed", "provider signature failure", …); before the hub's Open that is the handshake.
            if closeReason == nil, machine.phase == .open, let error, Self.isAbruptClose(error.message) {
                // Proton reports a TCP close without an AMQP close as a framing error ("SSL Failure: … unexpected
                // eof", "connection aborted"): say what happened.
                reason = "connection closed by the hub/peer without an AMQP close (\(error.message))"
            } else if closeReason == nil, error?.code == .tls {
                reason = machine.route.kind == .webSocket ? reason
                    : "TLS handshake with \(hostName) failed: the hub's certificate must chain to the configured CA bundle and name that host (\(reason))"
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
            case .leaf(let d, .telemetry)?: if let leaf = leaves[d] { flush(leaf) }
            default: break
            }
        case .message(let delivery, let bytes):
            switch roles[delivery.link.id] {
            case .cbsReceiver?: cbsReply(bytes, delivery: delivery)
            case .leaf(let d, .cloudToDevice)?: cloudToDeviceArrived(bytes, delivery: delivery, leafID: d)
            case .leaf(let d, .methodRequests)?: methodRequest(bytes, delivery: delivery, leafID: d)
            case .leaf(let d, .twinResponses)?: twinMessage(bytes, delivery: delivery, leafID: d)
            default:
                // A message already on its way to a link we closed (a C2D for a leaf re-attaching) goes back to the
                // hub's queue, not to its dead letters.
                if retiring.contains(delivery.link.id) { delivery.dispose(.released) }
                else { delivery.dispose(.rejected(AMQPCondition(name: "amqp:not-allowed", description: "unexpected message"))) }
            }
        case .deliveryUpdated(let delivery):
            switch roles[delivery.link.id] {
            case .leaf(_, .telemetry)?: telemetryOutcome(delivery)
            default: if delivery.isRemotelySettled || delivery.remoteOutcome != nil { delivery.settle() }
            }
        case .sessionOpened, .sessionClosed:
            break
        }
    }

    /// Proton's texts for a peer that closed (or reset) TCP without an AMQP close, plain or under TLS.
    static func isAbruptClose(_ message: String) -> Bool {
        let m = message.lowercased()
        return m.contains("unexpected eof") || m.contains("connection aborted") || m.contains("connection reset")
            || m.contains("eof while reading") || m.contains("end of file")
    }

    /// The socket is gone (or the attempt was abandoned): everything in flight goes back to the spool.
    private func connectionGone(error: String) {
        guard attempt != nil else { return }
        generation += 1  // late events of this attempt are ignored from now on
        let wasOpen = machine.phase == .open
        attempt = nil
        ref = nil
        connection = nil
        // Unsettled deliveries have an unknown fate: the spool still holds them in flight; give every one back.
        var released = unsettled.removeAll()
        cbs = ShardCBS()
        leafSessions = nil
        sessionOfLeaf = [:]
        roles = [:]
        retiring = []
        cloudToDeviceDeliveries = [:]
        for leaf in leaves.values {
            released += leaf.takePending()
            leaf.unsettled = 0
            leaf.links = LeafLinkTable()
            leaf.attachedLinks = []
            leaf.twin.detached()
            leaf.flow.detached()
            leaf.machine.connectionLost()
        }
        engine.release(released)
        let failedRoute = machine.route
        let moved = machine.closed(error: error, nowMs: engine.nowMs(), random: engine.random())
        let level: Logger.Level = engine.stopping ? .debug : wasOpen ? .warning : .error
        logger.log(level: level, "uplink[\(index)]: \(wasOpen ? "connection lost" : "cannot connect") (\(failedRoute)): \(error); retrying in \(max(0, machine.retryAtMs - engine.nowMs())) ms")
        if let moved, !engine.stopping {
            logger.warning("uplink[\(index)]: \(failedRoute) failed \(machine.failuresBeforeNextRoute) times in a row; trying \(moved) next")
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
        detachLinks(leaf)
        leaf.wantedLinks = tierLimits.links(from: leaf.configuredLinks)
        openLinks(leaf.wantedLinks, for: leaf)
    }

    /// Opens `kinds` for the leaf (all of them on attach; the ones a hub tier refused, when asked for again).
    private func openLinks(_ kinds: LeafLinks, for leaf: LeafRuntime) {
        guard let session = session(for: leaf) else { return }
        nextLinkNumber += 1
        for kind in LeafLink.allCases where kinds.contains(kind) {
            let link = kind.isSender ? session.sender(name: "\(kind.rawValue)-\(leaf.deviceID)-\(nextLinkNumber)")
                                     : session.receiver(name: "\(kind.rawValue)-\(leaf.deviceID)-\(nextLinkNumber)")
            let address = DeviceAddress(deviceID: leaf.deviceID, endpoint: kind.endpoint).canonical
            if kind.isSender {
                link.setTarget(address)
                link.setSource("\(kind.rawValue)-\(leaf.deviceID)")
            } else {
                link.setSource(address)
                link.setTarget("\(kind.rawValue)-\(leaf.deviceID)")
            }
            link.setProperties(kind.properties(channel: leaf.channel, clientVersion: engine.configuration.clientVersion))
            if kind.isSender { link.setSenderSettleMode(kind.presettled ? .settled : .unsettled) }
            link.setReceiverSettleMode(.first)
            link.open()
            roles[link.id] = .leaf(leaf.deviceID, kind)
            leaf.links[kind] = link
        }
    }

    /// The session the leaf's links go in on this connection: the one it had, else one with room, else a new one.
    private func session(for leaf: LeafRuntime) -> AMQPSession? {
        guard let connection, var sessions = leafSessions else { return nil }
        if let i = sessionOfLeaf[leaf.deviceID] { return sessions[i].session }
        // A session with room (leaves removed by a reload leave some), else a new one.
        let i = sessions.firstIndex { $0.leaves < Self.leavesPerSession } ?? {
            sessions.append((connection.openSession(), 0))
            return sessions.count - 1
        }()
        sessions[i].leaves += 1
        sessionOfLeaf[leaf.deviceID] = i
        leafSessions = sessions
        return sessions[i].session
    }

    /// Closes the leaf's links and gives its telemetry back to the spool.
    private func detachLinks(_ leaf: LeafRuntime) {
        var released = leaf.takePending()
        if leaf.unsettled > 0 { released += unsettled.removeAll(of: leaf) }  // its entries count there
        leaf.unsettled = 0
        if let c = leaf.links[.cloudToDevice] {
            for (token, entry) in cloudToDeviceDeliveries where entry.link == c.id { cloudToDeviceDeliveries[token] = nil }
        }
        engine.release(released)
        for link in leaf.links.values { retire(link) }
        leaf.links = LeafLinkTable()
        leaf.attachedLinks = []
        leaf.twin.detached()
        leaf.flow.detached()
    }

    private func linkOpened(_ link: AMQPLink) {
        guard let role = roles[link.id] else { return }
        let refused = (link.isSender ? link.remoteTargetAddress : link.remoteSourceAddress) == nil
        if refused { return }  // the hub refuses; its detach with the reason follows
        switch role {
        case .cbsSender: flushCBS()
        case .cbsReceiver: break
        case .leaf(let d, let kind):
            guard let leaf = leaves[d] else { return }
            leaf.attachedLinks.insert(kind)
            switch kind {
            case .cloudToDevice: performCloudToDevice(leaf.flow.attached(nowMs: engine.nowMs()), for: leaf)
            case .methodRequests, .twinResponses: link.flow(Self.requestCredit)
            default: break
            }
            if let feature = HubTierLimits.Feature(kind), tierLimits.attached(feature) {
                logger.notice("uplink[\(index)]: the hub attached \(d)'s \(feature.rawValue) links again: every leaf asks for them now")
                restoreTierLinks()
            }
            if leaf.machine.phase == .attaching { leafLinksSettled(leaf) }
            else if leaf.machine.phase == .ready, kind == .twinRequests || kind == .twinResponses,
                    leaf.attachedLinks.isSuperset(of: HubTierLimits.Feature.twin.links) {
                // A twin that came back after a tier refusal: subscribe and GET as on any attach.
                performTwin(leaf.twin.attached(nowMs: engine.nowMs()), for: leaf)
            }
        }
    }

    /// An attaching leaf whose every wanted link is up becomes ready.
    private func leafLinksSettled(_ leaf: LeafRuntime) {
        guard leaf.linksAttached, leaf.machine.phase == .attaching else { return }
        leaf.machine.linksAttached()
        leaf.heartbeat?.leafReady(nowMs: engine.nowMs(), random: engine.random())
        if leaf.wantedLinks.contains(.twinRequests) { performTwin(leaf.twin.attached(nowMs: engine.nowMs()), for: leaf) }
        engine.leafBecameReady(on: self)
        // The hub may have attached a feature for another leaf while this one attached without it.
        attachWhatTheTierAllows(leaf)
    }

    // MARK: hub tier

    /// The hub refused one of the leaf's C2D, method or twin links as not in its tier: that feature's links close,
    /// the leaf goes on without them (not a failure of the leaf), and leaves attaching from now on do not ask.
    private func tierRefused(_ leaf: LeafRuntime, _ feature: HubTierLimits.Feature, condition: AMQPCondition?) {
        if tierLimits.refused(feature, nowMs: engine.nowMs()) {
            logger.warning("uplink[\(index)]: the hub refuses \(feature.rawValue) links as not in its tier (\(condition?.name ?? "") \(condition?.description ?? "")): leaves carry on without them (telemetry flows); asking again every \(tierLimits.recheckMilliseconds / 60_000) min",
                           metadata: ["leaf": "\(leaf.deviceID)", "hub_error": "\(condition?.name ?? "")", "hub_error_description": "\(condition?.description ?? "")"])
        }
        closeLinks(feature.links, of: leaf)
        leaf.wantedLinks = tierLimits.links(from: leaf.configuredLinks)
        leafLinksSettled(leaf)
    }

    /// Closes some of a leaf's links, keeping the rest (and its telemetry) as they are.
    private func closeLinks(_ kinds: LeafLinks, of leaf: LeafRuntime) {
        for kind in kinds {
            guard let link = leaf.links.removeValue(forKey: kind) else { continue }
            leaf.attachedLinks.remove(kind)
            roles[link.id] = nil
            if kind == .cloudToDevice {
                for (token, entry) in cloudToDeviceDeliveries where entry.link == link.id { cloudToDeviceDeliveries[token] = nil }
                leaf.flow.detached()
            }
            if kind == .twinRequests || kind == .twinResponses { leaf.twin.detached() }
            retire(link)
        }
    }

    /// Closes a link of ours and frees it once the hub has detached it too. Freed before the hub's attach or
    /// detach arrives, Proton would take that frame for a new link of the same name and answer it, and the hub would
    /// answer that in turn: the two sides echoed attaches for as long as the connection lasted.
    private func retire(_ link: AMQPLink) {
        roles[link.id] = nil
        if link.isLocallyOpen { link.close() }
        if link.isRemotelyClosed || link.id == detachingNow { link.free() } else { retiring.insert(link.id) }
    }

    /// Rarely, one ready leaf asks for what the hub's tier refused: a hub moved to a higher tier is noticed.
    private func probeTierLimits(nowMs: Int64) {
        guard tierLimits.isLimited,
              let leaf = leafOrder.lazy.compactMap({ self.leaves[$0] }).first(where: {
                  $0.machine.phase == .ready && $0.configuredLinks != $0.wantedLinks
              }),
              tierLimits.recheckDue(nowMs: nowMs)
        else { return }
        logger.info("uplink[\(index)]: asking the hub again for \(tierLimits.refused.map(\.rawValue).sorted().joined(separator: ", ")) links (\(leaf.deviceID))")
        let missing = leaf.configuredLinks.subtracting(leaf.wantedLinks)
        leaf.wantedLinks = leaf.configuredLinks
        openLinks(missing, for: leaf)
    }

    /// The hub has a refused feature again: every ready leaf attaches the links it went without.
    private func restoreTierLinks() {
        for id in leafOrder {
            if let leaf = leaves[id], leaf.machine.phase == .ready { attachWhatTheTierAllows(leaf) }
        }
    }

    private func attachWhatTheTierAllows(_ leaf: LeafRuntime) {
        let wanted = tierLimits.links(from: leaf.configuredLinks)
        guard wanted != leaf.wantedLinks else { return }
        leaf.wantedLinks = wanted
        let missing = wanted.subtracting(leaf.links.keys)
        if !missing.isEmpty { openLinks(missing, for: leaf) }
    }

    /// Credit on the method and twin receivers (replenished per message).
    static let requestCredit = 10

    private func linkClosed(_ link: AMQPLink, condition: AMQPCondition?) {
        if retiring.remove(link.id) != nil { return link.free() }
        detachingNow = link.id
        defer { detachingNow = nil }
        guard let role = roles[link.id] else { return }
        switch role {
        case .cbsSender, .cbsReceiver:
            // Without CBS no leaf can authenticate: start the connection over.
            logger.warning("uplink[\(index)]: the hub detached the CBS link (\(condition?.name ?? "no condition")); reconnecting",
                           metadata: ["hub_error": "\(condition?.name ?? "")", "hub_error_description": "\(condition?.description ?? "")"])
            closeReason = "CBS link detached: \(condition?.description ?? "")"
            connection?.close()
        case .leaf(let d, let kind):
            guard let leaf = leaves[d] else { return }
            if let feature = HubTierLimits.Feature(kind),
               HubTierLimits.isTierRefusal(condition: condition?.name, description: condition?.description ?? "") {
                return tierRefused(leaf, feature, condition: condition)
            }
            leaf.counters.linkFailures += 1
            logger.warning("uplink[\(index)]: \(d): \(kind.rawValue) link detached: \(condition?.name ?? "no condition") \(condition?.description ?? "")",
                           metadata: ["leaf": "\(d)", "link": "\(kind.rawValue)", "hub_error": "\(condition?.name ?? "")", "hub_error_description": "\(condition?.description ?? "")"])
            let actions = leaf.machine.linkDetached(condition: condition?.name, description: condition?.description ?? "", nowMs: engine.nowMs(), random: engine.random())
            perform(actions, for: leaf)
        }
    }

    func nextDeliveryTag() -> [UInt8] {
        nextTag &+= 1
        return withUnsafeBytes(of: nextTag.littleEndian) { Array($0) }
    }
}
