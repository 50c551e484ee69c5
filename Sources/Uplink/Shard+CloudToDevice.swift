import FieldgateCore
import IoTHub
import Logging
import ProtonAMQP

extension Shard {
    // MARK: cloud to device

    func cloudToDeviceArrived(_ bytes: [UInt8], delivery: AMQPDelivery, leafID: String) {
        guard let leaf = leaves[leafID] else { return delivery.dispose(.released) }
        leaf.counters.cloudToDeviceReceived += 1
        let now = engine.nowMs()
        nextCloudToDeviceToken += 1
        let token = nextCloudToDeviceToken
        let message: AMQPMessage
        do { message = try AMQPMessageCodec.decode(bytes) } catch {
            cloudToDeviceDeliveries[token] = CloudToDeviceDelivery(leaf: leafID, delivery: delivery, link: delivery.link.id, message: nil)
            performCloudToDevice(leaf.flow.arrived(token: token, nowMs: now), for: leaf)
            return cloudToDeviceFinished(token: token, leafID: leafID, messageID: nil,
                                         outcome: .reject("undecodable C2D message"), condition: IoTHubAMQP.decodeError)
        }
        let c2d = C2DMessage(amqp: message, deviceID: leafID)
        cloudToDeviceDeliveries[token] = CloudToDeviceDelivery(leaf: leafID, delivery: delivery, link: delivery.link.id, message: c2d)
        performCloudToDevice(leaf.flow.arrived(token: token, nowMs: now), for: leaf)
    }

    /// Hands the message behind `token` to the adapter, unless it expired or is a redelivery of one already
    /// handled (or being handled).
    private func dispatchCloudToDevice(token: Int, deadlineMs: Int64, leaf: LeafRuntime) {
        guard let entry = cloudToDeviceDeliveries[token], let c2d = entry.message else { return }
        if let expiry = c2d.expiryMilliseconds, expiry > 0, expiry < engine.nowMs() {
            leaf.counters.cloudToDeviceExpired += 1
            return cloudToDeviceFinished(token: token, leafID: leaf.deviceID, messageID: nil,
                                         outcome: .reject("the message expired before delivery"), condition: "amqp:precondition-failed")
        }
        let decision = c2d.messageID.map { leaf.dedupe.arrived(messageID: $0, token: token) } ?? .deliver
        switch decision {
        case .deliver:
            engine.route(c2d, shard: index, token: token, deadlineMs: deadlineMs)
        case .wait:
            leaf.counters.cloudToDeviceDuplicates += 1
        case .settle(let outcome):
            leaf.counters.cloudToDeviceDuplicates += 1
            cloudToDeviceFinished(token: token, leafID: leaf.deviceID, messageID: nil, outcome: outcome, counted: false)
        }
    }

    /// The adapter's outcome for the C2D message behind `token` (or the deadline's abandon). With a message id,
    /// every delivery of that id waiting for the outcome hears it.
    func cloudToDeviceFinished(token: Int, leafID: String, messageID: String?, outcome: C2DOutcome,
                               condition: String? = nil, counted: Bool = true) {
        guard let leaf = leaves[leafID] else { return }
        let waiting: [Int]
        if let messageID {
            waiting = leaf.dedupe.finished(messageID: messageID, outcome: outcome)
            guard !waiting.isEmpty else { return }  // already settled (deadline passed first)
        } else {
            waiting = [token]
        }
        if case .unreachable(let why) = outcome, counted {
            leaf.counters.cloudToDeviceUnreachable += 1
            logCloudToDeviceHeld(leaf, why)
        } else if case .abandon(let why) = outcome, counted {
            logCloudToDeviceHeld(leaf, why)
        }
        for t in waiting {
            if let condition { cloudToDeviceDeliveries[t]?.condition = condition }
            performCloudToDevice(leaf.flow.finished(token: t, outcome: outcome, nowMs: engine.nowMs()), for: leaf, counted: counted)
        }
    }

    /// The leaf's adapter says it can be reached: a held message is retried now, a pause ends.
    func cloudToDeviceReachable(_ leafID: String) {
        guard let leaf = leaves[leafID] else { return }
        performCloudToDevice(leaf.flow.reachable(nowMs: engine.nowMs()), for: leaf)
    }

    func tickCloudToDevice(_ leaf: LeafRuntime, nowMs: Int64) {
        guard leaf.wantedLinks.contains(.cloudToDevice) else { return }
        performCloudToDevice(leaf.flow.tick(nowMs: nowMs), for: leaf)
    }

    func performCloudToDevice(_ actions: [CloudToDeviceFlow.Action], for leaf: LeafRuntime, counted: Bool = true) {
        for action in actions {
            switch action {
            case .grantCredit:
                if let link = leaf.links[.cloudToDevice], leaf.attachedLinks.contains(.cloudToDevice) { link.flow(1) }
            case .dispatch(let token, let deadline):
                dispatchCloudToDevice(token: token, deadlineMs: deadline, leaf: leaf)
            case .settle(let token, let outcome):
                settleCloudToDevice(token: token, outcome: outcome, counted: counted)
            }
        }
    }

    private func settleCloudToDevice(token: Int, outcome: C2DOutcome, counted: Bool) {
        guard let entry = cloudToDeviceDeliveries.removeValue(forKey: token) else { return }  // its link is gone
        let leaf = leaves[entry.leaf]
        switch outcome {
        case .complete:
            entry.delivery.dispose(.accepted)
            if counted { leaf?.counters.cloudToDeviceCompleted += 1 }
        case .reject(let why):
            entry.delivery.dispose(.rejected(AMQPCondition(name: entry.condition ?? "amqp:not-allowed", description: why)))
            if counted { leaf?.counters.cloudToDeviceRejected += 1 }
        case .abandon, .unreachable:
            entry.delivery.dispose(.released)
            leaf?.counters.cloudToDeviceAbandoned += 1
        }
    }

    /// At most one line per leaf per minute: an unreachable leaf must not flood the journal.
    private func logCloudToDeviceHeld(_ leaf: LeafRuntime, _ why: String) {
        let now = engine.nowMs()
        guard now - leaf.lastCloudToDeviceLogMs >= 60_000 else { return }
        leaf.lastCloudToDeviceLogMs = now
        logger.notice("uplink[\(index)]: \(leaf.deviceID): C2D message kept for a later attempt: \(why)",
                      metadata: ["leaf": "\(leaf.deviceID)"])
    }
}

/// A C2D delivery the shard holds until it is settled.
struct CloudToDeviceDelivery {
    let leaf: String
    let delivery: AMQPDelivery
    let link: AMQPObjectID
    /// nil: it could not be decoded.
    let message: C2DMessage?
    /// The rejection's condition when it is not `amqp:not-allowed`.
    var condition: String?
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
