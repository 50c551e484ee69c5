import FieldgateCore
import IoTHub
import Logging
import ProtonAMQP

extension Shard {
    /// A direct-method request (docs/iothub-protocol.md §6.2). Every request gets an answer: the router's, 400 for
    /// a payload that is not JSON, 404 when the router has no such method, 504 at the local deadline.
    func methodRequest(_ bytes: [UInt8], delivery: AMQPDelivery, leafID: String) {
        delivery.dispose(.accepted)
        delivery.link.flow(1)
        guard let leaf = leaves[leafID] else { return }
        guard let request = try? AMQPMessageCodec.decode(bytes), case .uuid(let requestID)? = request.correlationID else {
            logger.warning("uplink[\(index)]: \(leafID): a method request without a uuid correlation-id cannot be answered; dropped", metadata: ["leaf": "\(leafID)"])
            return
        }
        leaf.counters.methodCalls += 1
        let name = request.applicationProperties[IoTHubAMQP.methodNameProperty]?.stringValue ?? ""
        let body = request.body.bytes
        let payload: JSONValue
        if body.isEmpty {
            payload = .null
        } else if let parsed = JSONValue.parse(body) {
            payload = parsed
        } else {
            return respond(to: requestID, leafID: leafID, with: .error(400, "the method payload is not JSON"))
        }
        let call = MethodCall(deviceID: leafID, name: name, payload: payload,
                              deadlineMilliseconds: engine.nowMs() + engine.configuration.methodDeadlineMilliseconds)
        engine.invoke(call, shard: index, requestID: requestID)
    }

    /// Sends a method response on the leaf's response link. A response for a link that is gone is dropped: the
    /// hub has already failed that call.
    func respond(to requestID: AMQPUUID, leafID: String, with result: MethodResponse) {
        guard let leaf = leaves[leafID], leaf.attachedLinks.contains(.methodResponses), let link = leaf.links[.methodResponses] else {
            logger.notice("uplink[\(index)]: \(leafID): the method response link is gone; the answer (\(result.status)) is dropped")
            return
        }
        if result.status == 504 { leaf.counters.methodTimeouts += 1 }
        var m = AMQPMessage(data: result.payload.bytes)
        m.correlationID = .uuid(requestID)
        m.applicationProperties[IoTHubAMQP.methodStatusProperty] = .int(Int32(clamping: result.status))
        m.contentType = "application/json"
        link.send(AMQPMessageCodec.encode(m), tag: nextDeliveryTag(), settled: true)
    }
}
