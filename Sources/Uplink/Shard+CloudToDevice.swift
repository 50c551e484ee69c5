import FieldgateCore
import IoTHub
import Logging
import ProtonAMQP

extension Shard {
    // MARK: cloud to device

    func cloudToDeviceArrived(_ bytes: [UInt8], delivery: AMQPDelivery, leafID: String) {
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
        if roles[entry.link] != nil { leaf?.links[.cloudToDevice]?.flow(1) }
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
