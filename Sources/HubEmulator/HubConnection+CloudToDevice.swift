import FieldgateCore
import IoTHub
import Logging
import ProtonAMQP

extension HubConnection {
    /// Delivers queued C2D messages while the device's receiver link has credit (docs/iothub-protocol.md §5.2).
    func pumpCloudToDevice(_ deviceId: String) {
        guard let linkID = devices[deviceId]?.cloudToDevice, let state = links[linkID] else { return }
        let link = state.link
        while link.credit > 0, var queue = core.queues[deviceId] {
            let lockToken = AMQPUUID.random().bytes
            let (next, ended) = queue.lockNext(lockToken: lockToken, now: core.now)
            core.queues[deviceId] = queue
            for (message, outcome) in ended { core.recordFeedback(deviceId: deviceId, message: message, outcome: outcome) }
            guard let message = next else { break }
            devices[deviceId]?.locks[lockToken] = link.send(
                AMQPMessageCodec.encode(Self.wireMessage(message, deviceId: deviceId, hubName: core.configuration.hubName)),
                tag: lockToken, settled: false)
            core.markDirty()
        }
    }

    static func wireMessage(_ m: CloudToDeviceMessage, deviceId: String, hubName: String) -> AMQPMessage {
        var w = AMQPMessage(data: m.body)
        w.messageID = .string(m.messageId)
        w.correlationID = m.correlationId.map(AMQPValue.string)
        w.to = "/devices/\(deviceId)/messages/deviceBound"
        w.userID = Array(hubName.utf8)
        w.contentType = m.contentType
        w.contentEncoding = m.contentEncoding
        w.absoluteExpiryTime = m.expiryTimeMs
        w.messageAnnotations = [
            .symbol(IoTHubAMQP.sequenceNumberAnnotation): .ulong(m.sequenceNumber),
            .symbol(IoTHubAMQP.enqueuedTimeAnnotation): .timestamp(m.enqueuedTimeMs),
            .symbol(IoTHubAMQP.deliveryCountAnnotation): .ubyte(UInt8(clamping: m.deliveryCount)),
        ]
        var props = m.properties.mapValues(AMQPValue.string)
        props[IoTHubAMQP.ackProperty] = .string(m.ack.rawValue)
        w.applicationProperties = props
        return w
    }

    /// complete / abandon / reject from the device's disposition (§5.3, §12 items 22–23).
    func cloudToDeviceDisposition(_ delivery: AMQPDelivery, deviceId: String) {
        guard let outcome = delivery.remoteOutcome else {
            if delivery.isRemotelySettled { delivery.settle() }
            return
        }
        let lockToken = delivery.tag
        devices[deviceId]?.locks[lockToken] = nil
        let disposition: CloudToDeviceQueue.Disposition
        switch outcome {
        case .accepted: disposition = .complete
        case .rejected: disposition = .reject
        case .released, .modified: disposition = .abandon
        }
        if let (message, ended) = core.queues[deviceId]?.settle(lockToken: lockToken, as: disposition, now: core.now) {
            if let ended { core.recordFeedback(deviceId: deviceId, message: message, outcome: ended) }
            core.markDirty()
        } else {
            // The lock expired or the message was purged: the device's outcome is lost (message-lock-lost).
            core.logger.info("C2D disposition for a lost lock on device \(deviceId) ignored")
        }
        delivery.settle()
        pumpCloudToDevice(deviceId)
    }
}

extension HubConnection {
    // MARK: direct methods (§6, §12 items 25–26)

    /// Sends a method request; false when the device has no paired method links on this connection.
    func sendMethodRequest(deviceId: String, requestID: AMQPUUID, name: String, payload: JSONValue) -> Bool {
        guard let entry = devices[deviceId], entry.methodsPaired, let requests = entry.methodRequests else { return false }
        var m = AMQPMessage(data: payload.bytes)
        m.correlationID = .uuid(requestID)
        m.applicationProperties = [IoTHubAMQP.methodNameProperty: .string(name)]
        send(m, on: requests.id)
        return true
    }

    func receivedMethodResponse(_ bytes: [UInt8], delivery: AMQPDelivery, deviceId: String) {
        delivery.dispose(.accepted)
        guard let m = try? AMQPMessageCodec.decode(bytes) else {
            return core.logger.notice("undecodable method response from \(deviceId) dropped")
        }
        guard case .uuid(let id)? = m.correlationID else {
            return core.logger.notice("method response from \(deviceId) without a uuid correlation-id dropped")
        }
        guard case .int(let status)? = m.applicationProperties[IoTHubAMQP.methodStatusProperty] else {
            return core.logger.notice("method response from \(deviceId) without an int \(IoTHubAMQP.methodStatusProperty) dropped")
        }
        let body = m.body.bytes
        let payload: JSONValue = body.isEmpty ? .null : (JSONValue.parse(body) ?? .string(String(decoding: body, as: UTF8.self)))
        core.completeMethod(id, with: MethodResult(status: Int(status), payload: payload))
    }

    // MARK: twin (§7, §12 items 27–30)

    func receivedTwinRequest(_ bytes: [UInt8], delivery: AMQPDelivery, deviceId: String) {
        delivery.dispose(.accepted)
        guard let m = try? AMQPMessageCodec.decode(bytes) else {
            return core.logger.notice("undecodable twin request from \(deviceId) dropped")
        }
        let operation = m.messageAnnotations[.symbol("operation")]?.stringValue
        let resource = m.messageAnnotations[.symbol("resource")]?.stringValue
        guard let correlation = m.correlationID else {
            return core.logger.notice("twin request from \(deviceId) without a correlation-id dropped")
        }
        var status = 200
        var version: Int64?
        var body: JSONValue?
        let twin = core.twin(for: deviceId)
        switch (operation, resource) {
        case ("GET", _):
            body = twin.deviceView
            version = twin.reportedVersion
        case ("PATCH", "/properties/reported"):
            let raw = m.body.bytes
            guard let patch = JSONValue.parse(raw), case .object = patch else {
                status = 400
                body = .object(["errorCode": 400004, "message": "the reported patch must be a JSON object"])
                break
            }
            var updated = twin
            do {
                version = try updated.patchReported(patch, nowMilliseconds: core.now)
                core.twins[deviceId] = updated
                core.markDirty()
                status = 204
                if core.configuration.twinChangeEvents, let version { core.recordTwinChange(deviceId: deviceId, reported: patch, version: version) }
            } catch {
                status = 400
                body = .object(["errorCode": 400004, "message": .string(error.message)])
            }
        case ("PUT", "/notifications/twin/properties/desired"):
            devices[deviceId]?.desiredSubscribed = true
        case ("DELETE", "/notifications/twin/properties/desired"):
            devices[deviceId]?.desiredSubscribed = false
        default:
            status = 400
            body = .object(["errorCode": 400004, "message": .string("unsupported twin operation \(operation ?? "-") on \(resource ?? "-")")])
        }
        guard let entry = devices[deviceId], entry.twinPaired, let responses = entry.twinResponses else {
            return core.logger.notice("twin response for \(deviceId) dropped: the twin links are not paired")
        }
        var reply = AMQPMessage()
        reply.correlationID = correlation
        var annotations: [AMQPValue: AMQPValue] = [.symbol("status"): .int(Int32(status))]
        if let version { annotations[.symbol("version")] = .long(version) }
        reply.messageAnnotations = annotations
        if let body { reply.body = .data([body.bytes]) }
        send(reply, on: responses.id)
    }

    /// Pushes a desired-properties patch if the device subscribed on its current twin link pair.
    func pushDesired(_ patch: JSONValue, deviceId: String, version: Int64) {
        guard let entry = devices[deviceId], entry.desiredSubscribed, entry.twinPaired, let responses = entry.twinResponses else { return }
        var m = AMQPMessage(data: patch.bytes)
        m.messageAnnotations = [.symbol("version"): .long(version)]
        send(m, on: responses.id)
    }
}
