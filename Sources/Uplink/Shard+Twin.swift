import FieldgateCore
import IoTHub
import Logging
import ProtonAMQP

extension Shard {
    /// A message on the twin receiver: a response (it has a correlation-id) or a desired-property notification.
    func twinMessage(_ bytes: [UInt8], delivery: AMQPDelivery, leafID: String) {
        delivery.dispose(.accepted)
        delivery.link.flow(1)
        guard let leaf = leaves[leafID], let m = try? AMQPMessageCodec.decode(bytes) else { return }
        let body = m.body.bytes
        let json = body.isEmpty ? nil : JSONValue.parse(body)
        if let correlation = m.correlationID?.stringValue {
            let status = m.messageAnnotations[.symbol("status")]?.integerValue.map(Int.init) ?? 0
            performTwin(leaf.twin.response(correlation: correlation, status: status, body: json, nowMs: engine.nowMs()), for: leaf)
        } else if let patch = json {
            performTwin(leaf.twin.desiredNotification(patch), for: leaf)
        }
    }

    func performTwin(_ actions: [TwinSync.Action], for leaf: LeafRuntime) {
        for action in actions {
            switch action {
            case .send(let request, let correlation):
                sendTwinRequest(request, correlation: correlation, leaf: leaf)
            case .applyDesired(let desired, let version):
                engine.applyDesired(desired, version: version, deviceID: leaf.deviceID)
            case .reportedAccepted(let ids):
                leaf.counters.reportedPatches += 1
                engine.reportsFinished(ids, error: nil)
            case .reportedRefused(let ids, let why):
                logger.warning("uplink[\(index)]: \(leaf.deviceID): \(why)", metadata: ["leaf": "\(leaf.deviceID)", "hub_error": "\(why)"])
                engine.reportsFinished(ids, error: why)
            case .desiredVersionWentBack(let from, let to):
                logger.notice("uplink[\(index)]: \(leaf.deviceID): the twin's desired $version went back from \(from) to \(to) (the device was re-created?); applying version \(to)",
                              metadata: ["leaf": "\(leaf.deviceID)"])
            }
        }
    }

    /// Queues a validated reported patch for `leafID` (sent now, or folded with others until it can be).
    func report(_ patch: JSONValue, id: Int, leafID: String) {
        guard let leaf = leaves[leafID] else { return engine.reportsFinished([id], error: "no leaf \(leafID)") }
        performTwin(leaf.twin.report(patch, id: id, nowMs: engine.nowMs()), for: leaf)
    }

    /// Retries unanswered twin requests and sends pending reported patches whose interval has passed (the tick).
    func flushReported(nowMs: Int64) {
        for leaf in leaves.values where leaf.wantedLinks.contains(.twinRequests) {
            performTwin(leaf.twin.expireRequests(nowMs: nowMs), for: leaf)
            if leaf.twin.hasPendingReported { performTwin(leaf.twin.flush(nowMs: nowMs), for: leaf) }
        }
    }

    private func sendTwinRequest(_ request: TwinSync.Request, correlation: String, leaf: LeafRuntime) {
        guard let link = leaf.links[.twinRequests] else { return }
        var m = AMQPMessage()
        m.correlationID = .string(correlation)
        switch request {
        case .subscribe:
            m.messageAnnotations = [.symbol("operation"): "PUT", .symbol("resource"): "/notifications/twin/properties/desired"]
        case .get:
            m.messageAnnotations = [.symbol("operation"): "GET"]
        case .patch(let patch):
            m.messageAnnotations = [.symbol("operation"): "PATCH", .symbol("resource"): "/properties/reported"]
            m.body = .data([patch.bytes])
        }
        link.send(AMQPMessageCodec.encode(m), tag: nextDeliveryTag(), settled: true)
    }
}
