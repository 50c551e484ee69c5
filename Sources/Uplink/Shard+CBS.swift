import FieldgateCore
import IoTHub
import Logging
import ProtonAMQP

/// A SAS connection's claims-based security: the `$cbs` link pair and the put-tokens on it. Reset whole when the
/// connection goes (its tokens go with it); a certificate connection has none.
struct ShardCBS {
    /// Outstanding put-tokens: for one leaf, or for a hub-scope policy token shared by many.
    enum TokenOwner { case leaf(String), policy(String) }
    /// Hub-scope policy tokens of this connection (one per policy), renewed by the shard itself.
    struct SharedToken {
        var renewAtMs: Int64 = 0
        var pendingID: UInt64?
        var waiting: [String] = []
    }

    var sender: AMQPLink?
    var receiver: AMQPLink?
    var queue: [(leaf: String, bytes: [UInt8])] = []
    var pending: [UInt64: TokenOwner] = [:]
    var sharedTokens: [String: SharedToken] = [:]
    var nextID: UInt64 = 0

    /// A leaf that left waits for no shared token.
    mutating func forget(_ leaf: String) {
        for policy in sharedTokens.keys { sharedTokens[policy]?.waiting.removeAll { $0 == leaf } }
    }
}

extension Shard {
    func openCBS(on connection: AMQPConnection) {
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
        cbs.sender = sender
        cbs.receiver = receiver
    }

    func putToken(for leaf: LeafRuntime, slot: LeafMachine.KeySlot) {
        guard let policy = leaf.configuration.hubScopePolicy else {
            if let id = sendPutToken(for: leaf.configuration, slot: slot) { cbs.pending[id] = .leaf(leaf.deviceID) }
            return
        }
        var shared = cbs.sharedTokens[policy, default: ShardCBS.SharedToken()]
        if shared.pendingID == nil && engine.nowMs() < shared.renewAtMs {
            // The connection's policy token already covers this leaf.
            if leaf.machine.phase == .ready { leaf.counters.tokenRenewals += 1 }
            perform(leaf.machine.tokenAnswered(status: 200, description: "OK (hub-scope token)", nowMs: engine.nowMs(), random: engine.random()), for: leaf)
            return
        }
        shared.waiting.append(leaf.deviceID)
        if shared.pendingID == nil {
            shared.pendingID = sendPutToken(for: leaf.configuration, slot: slot)
            if let id = shared.pendingID { cbs.pending[id] = .policy(policy) }
        }
        cbs.sharedTokens[policy] = shared
    }

    /// Renews hub-scope tokens before they expire (their leaves' own renewals are answered from them).
    func renewSharedTokens(nowMs: Int64) {
        for (policy, shared) in cbs.sharedTokens where shared.pendingID == nil && nowMs >= shared.renewAtMs {
            guard let leaf = leaves.values.first(where: { $0.configuration.hubScopePolicy == policy }) else { continue }
            // Signed first: sending changes `cbs` too, which must not be under modification meanwhile.
            let id = sendPutToken(for: leaf.configuration, slot: .primary)
            cbs.sharedTokens[policy]?.pendingID = id
            if let id { cbs.pending[id] = .policy(policy) }
        }
    }

    /// Queues a put-token on the CBS link; nil (and the leaf answered) when no token can be signed.
    private func sendPutToken(for leaf: LeafConfiguration, slot: LeafMachine.KeySlot) -> UInt64? {
        let nowMs = engine.nowMs()
        // Rounded up, so the token lives at least the TTL the renewal schedule assumes.
        let expiry = (nowMs + engine.configuration.tokenTTLSeconds * 1000 + 999) / 1000
        let minter = TokenMinter(hostName: hostName)
        let token: String
        do { token = try minter.token(for: leaf, slot: slot, expiry: expiry) } catch {
            // A key that is not base64 is a configuration error: the hub would refuse it too.
            if let runtime = leaves[leaf.deviceID] {
                perform(runtime.machine.tokenAnswered(status: 401, description: "cannot sign a token: \(error.message)", nowMs: nowMs, random: engine.random()), for: runtime)
            }
            return nil
        }
        let id = cbs.nextID
        cbs.nextID += 1
        var m = AMQPMessage()
        m.messageID = .ulong(id)
        m.applicationProperties = [
            "operation": "put-token",
            "type": .string(IoTHubAMQP.tokenTypeServiceBus),
            "name": .string(minter.audience(for: leaf)),
        ]
        m.body = .value(.string(token))
        logger.trace("uplink[\(index)]: put-token \(id) for \(leaf.deviceID)")
        cbs.queue.append((leaf.deviceID, AMQPMessageCodec.encode(m)))
        flushCBS()
        return id
    }

    func flushCBS() {
        guard let sender = cbs.sender else { return }
        var sent = 0
        while sent < cbs.queue.count, sender.credit > 0 {
            sender.send(cbs.queue[sent].bytes, tag: nextDeliveryTag())
            sent += 1
        }
        if sent > 0 { cbs.queue.removeFirst(sent) }
    }

    func cbsReply(_ bytes: [UInt8], delivery: AMQPDelivery) {
        delivery.dispose(.accepted)
        cbs.receiver?.flow(1)
        logger.trace("uplink[\(index)]: CBS reply \((try? AMQPMessageCodec.decode(bytes)).map { "\($0.correlationID as Any) \($0.applicationProperties)" } ?? "undecodable")")
        guard let reply = try? AMQPMessageCodec.decode(bytes), case .ulong(let id)? = reply.correlationID,
              let owner = cbs.pending.removeValue(forKey: id)
        else { return }
        let status = reply.applicationProperties["status-code"]?.integerValue.map(Int.init) ?? 0
        let description = reply.applicationProperties["status-description"]?.stringValue ?? ""
        let nowMs = engine.nowMs()
        let waiting: [String]
        switch owner {
        case .leaf(let id):
            waiting = [id]
        case .policy(let policy):
            waiting = cbs.sharedTokens[policy]?.waiting ?? []
            let c = engine.configuration
            let renewFraction = max(0.1, c.tokenRenewFraction - c.tokenRenewJitter)
            cbs.sharedTokens[policy] = (200..<300).contains(status)
                ? ShardCBS.SharedToken(renewAtMs: nowMs + Int64(Double(c.tokenTTLSeconds * 1000) * renewFraction))
                : nil
            if !(200..<300).contains(status) {
                // The policy itself is refused: every leaf that relies on it hears so.
                for leaf in leaves.values where leaf.configuration.hubScopePolicy == policy && leaf.machine.phase == .ready {
                    perform(leaf.machine.linkDetached(condition: IoTHubAMQP.unauthorizedAccess, description: "hub-scope token refused: \(description)", nowMs: nowMs, random: engine.random()), for: leaf)
                }
            }
        }
        if !(200..<300).contains(status) {
            logger.warning("uplink[\(index)]: put-token for \(waiting.first ?? "?")\(waiting.count > 1 ? " and \(waiting.count - 1) more" : "") answered \(status) \(description)",
                           metadata: ["leaf": "\(waiting.first ?? "")", "hub_status": "\(status)", "hub_error": "put-token \(status)", "hub_error_description": "\(description)"])
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
}
