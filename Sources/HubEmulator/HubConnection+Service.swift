import FieldgateCore
import IoTHub
import Logging
import ProtonAMQP

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The service endpoints IoT Hub offers over AMQP, after a ServiceConnect token (docs/hub-fidelity.md):
/// `/messages/devicebound` takes C2D messages, `/messages/serviceBound/feedback` hands out feedback batches.
/// Clients name them as a path or as `amqps://{host}/…` (uamqp), in any letter case (the C SDK writes
/// `deviceBound` and `servicebound`).
enum ServiceEndpoint {
    case deviceBound, feedback, fileNotifications

    init?(address: String, hubName: String) {
        var path = withoutScheme(address)
        if !path.hasPrefix("/") {
            guard let slash = path.firstIndex(of: "/"), path[..<slash].lowercased() == hubName.lowercased() else { return nil }
            path = String(path[slash...])
        }
        switch path.trimmingTrailingSlash.lowercased() {
        case "/messages/devicebound": self = .deviceBound
        case "/messages/servicebound/feedback": self = .feedback
        case "/messages/servicebound/filenotifications", "/messages/servicebound/fileuploadnotifications": self = .fileNotifications
        default: return nil
        }
    }
}

/// A feedback link's share of the queue: its waiter while it has credit, and the batches it holds unsettled.
struct FeedbackLinkState {
    var waiter: Int?
    var unsettled: [(tag: [UInt8], records: [FeedbackRecord])] = []
}

extension HubConnection {
    static let feedbackContentType = "application/vnd.microsoft.iothub.feedback.json"

    func attachService(_ link: AMQPLink, _ endpoint: ServiceEndpoint) {
        guard let token = serviceToken, token.expiry > core.now / 1000 - core.configuration.tokenClockSkewSeconds else {
            return refuse(link, AMQPCondition(name: IoTHubAMQP.unauthorizedAccess, description: hubErrorJSON(401002, "Unauthorized: no ServiceConnect token on this connection")))
        }
        switch (endpoint, link.isSender) {
        case (.deviceBound, false):
            accept(link, role: .serviceCloudToDevice, credit: 100)
        case (.feedback, true):
            accept(link, role: .serviceFeedback, credit: 0)
            feedbackLinks[link.id] = FeedbackLinkState()
            offerFeedback(link)
        case (.fileNotifications, true):
            accept(link, role: .serviceFileNotifications, credit: 0)
            fileNotificationLinks[link.id] = FileNotificationLinkState()
            offerFileNotifications(link)
        default:
            let path = switch endpoint {
            case .deviceBound: "/messages/devicebound"
            case .feedback: "/messages/serviceBound/feedback"
            case .fileNotifications: "/messages/serviceBound/filenotifications"
            }
            refuse(link, AMQPCondition(name: IoTHubAMQP.notAllowed, description: "a client \(link.isSender ? "receiver" : "sender") is not allowed on \(path)"))
        }
    }

    func evictServiceLinks(because condition: AMQPCondition) {
        for (_, state) in links where state.role == .serviceCloudToDevice || state.role == .serviceFeedback || state.role == .serviceFileNotifications {
            state.link.close(condition)
            detached(state.link)
        }
    }

    // MARK: C2D from a service client

    /// A message for `/devices/{id}/messages/devicebound` (its `to`), queued as the service API's C2D send queues
    /// it (50 per device, 64 KB, TTL). Accepted once queued; rejected with the reason otherwise.
    func receivedServiceCloudToDevice(_ bytes: [UInt8], delivery: AMQPDelivery) {
        do throws(HubError) {
            let message: AMQPMessage
            do { message = try AMQPMessageCodec.decode(bytes) } catch {
                throw HubError(.badRequest, "the message cannot be decoded: \(error)")
            }
            let (deviceId, c2d, ttl) = try cloudToDeviceMessage(from: message)
            _ = try core.sendCloudToDevice(deviceId, message: c2d, ttlMilliseconds: ttl)
            delivery.dispose(.accepted)
        } catch {
            if error.errorCode == 403010 {
                return delivery.dispose(.rejected(AMQPCondition(name: IoTHubAMQP.unauthorizedAccess, description: error.amqpDescription)))
            }
            let name: String = switch error.code {
            case .notFound: IoTHubAMQP.notFound
            case .throttled, .forbidden: IoTHubAMQP.resourceLimitExceeded
            case .tooLarge: IoTHubAMQP.messageSizeExceeded
            default: IoTHubAMQP.argumentError
            }
            delivery.dispose(.rejected(AMQPCondition(name: name, description: error.message)))
        }
    }

    private func cloudToDeviceMessage(from m: AMQPMessage) throws(HubError) -> (String, CloudToDeviceMessage, Int64?) {
        guard let to = m.to else { throw HubError(.badRequest, "the message has no 'to' (/devices/{id}/messages/devicebound)") }
        let parts = to.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 5, parts[0].isEmpty, parts[1] == "devices", parts[3] == "messages",
              parts[4].lowercased() == "devicebound", let deviceId = PercentEncoding.decode(String(parts[2])), !deviceId.isEmpty
        else { throw HubError(.badRequest, "'to' must be /devices/{id}/messages/devicebound, not '\(to)'") }
        var properties: [String: String] = [:]
        var ack = FeedbackRequest.none
        for (key, value) in m.applicationProperties {
            let text = Self.text(of: value)
            if key == IoTHubAMQP.ackProperty {
                guard let a = FeedbackRequest(rawValue: text) else {
                    throw HubError(.badRequest, "\(IoTHubAMQP.ackProperty) must be none, positive, negative or full")
                }
                ack = a
            } else {
                properties[key] = text
            }
        }
        let c2d = CloudToDeviceMessage(
            messageId: m.messageID.map(Self.text(of:)) ?? AMQPUUID.random().description,
            correlationId: m.correlationID.map(Self.text(of:)),
            body: m.body.bytes, properties: properties, contentType: m.contentType,
            contentEncoding: m.contentEncoding, ack: ack)
        let ttl = m.absoluteExpiryTime.map { max($0 - core.now, 1) }
        return (deviceId, c2d, ttl)
    }

    /// A property or id as the device will see it: strings as they are, numbers in decimal, uuids in their
    /// usual form (C2D application properties are strings on the device side).
    static func text(of value: AMQPValue) -> String {
        if let s = value.stringValue { return s }
        if let n = value.integerValue { return String(n) }
        switch value {
        case .uuid(let u): return u.description
        case .bool(let b): return b ? "true" : "false"
        case .double(let d): return String(d)
        case .float(let f): return String(f)
        default: return "\(value)"
        }
    }

    // MARK: feedback to a service client

    /// While the link has credit, it waits on the hub's feedback queue for the next batch.
    func offerFeedback(_ link: AMQPLink) {
        guard var state = feedbackLinks[link.id], state.waiter == nil, link.credit > 0 else { return }
        let id = link.id
        state.waiter = core.feedback.addWaiter { [self] records in sendFeedback(records, on: id) }
        feedbackLinks[id] = state
        core.dispatchFeedback()
    }

    /// One message per batch, as IoT Hub sends it: a JSON array of records in a data section.
    private func sendFeedback(_ records: [FeedbackRecord], on id: AMQPObjectID) {
        guard var state = feedbackLinks[id], let link = links[id]?.link else {
            core.feedback.giveBack(records)
            return
        }
        state.waiter = nil
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var message = AMQPMessage(data: (try? Array(encoder.encode(records))) ?? Array("[]".utf8))
        message.messageID = .string(AMQPUUID.random().description)
        message.contentType = Self.feedbackContentType
        message.userID = Array(core.configuration.hubName.utf8)
        message.messageAnnotations[.symbol(IoTHubAMQP.enqueuedTimeAnnotation)] = .timestamp(core.now)
        let tag = AMQPUUID.random().bytes
        transmit(message, on: link, tag: tag)
        if link.remoteSenderSettleMode != .settled { state.unsettled.append((tag, records)) }
        feedbackLinks[id] = state
        offerFeedback(link)
    }

    /// accepted: the records are consumed; rejected: dropped as the hub dead-letters them; released or modified:
    /// they return to the front of the queue for the next consumer.
    func feedbackDisposition(_ delivery: AMQPDelivery) {
        let id = delivery.link.id
        guard let outcome = delivery.remoteOutcome ?? (delivery.isRemotelySettled ? .accepted : nil) else { return }
        if var state = feedbackLinks[id], let i = state.unsettled.firstIndex(where: { $0.tag == delivery.tag }) {
            let batch = state.unsettled.remove(at: i)
            feedbackLinks[id] = state
            switch outcome {
            case .accepted: break  // consumed: the queue let go of them when it handed them over
            case .rejected: core.logger.notice("a service client rejected \(batch.records.count) feedback records: dropped")
            case .released, .modified:
                core.feedback.giveBack(batch.records)
                core.dispatchFeedback()
            }
        }
        delivery.settle()
    }

    /// The link went away: its waiter leaves the queue and what it held unsettled goes back, in order.
    func feedbackLinkGone(_ id: AMQPObjectID) {
        guard let state = feedbackLinks.removeValue(forKey: id) else { return }
        if let waiter = state.waiter { _ = core.feedback.removeWaiter(waiter) }
        guard !state.unsettled.isEmpty else { return }
        core.feedback.giveBack(state.unsettled.flatMap(\.records))
        core.dispatchFeedback()
    }
}

/// A file-notification link's share of the queue: its waiter while it has credit, and the notifications it holds
/// unsettled (one message each).
struct FileNotificationLinkState {
    var waiter: Int?
    var unsettled: [(tag: [UInt8], notification: FileUploads.Notification)] = []
}

extension HubConnection {
    static let fileNotificationContentType = "application/vnd.microsoft.iothub.filenotification.json"

    /// While the link has credit, it waits on the hub's file-notification queue.
    func offerFileNotifications(_ link: AMQPLink) {
        guard var state = fileNotificationLinks[link.id], state.waiter == nil, link.credit > 0 else { return }
        let id = link.id
        state.waiter = core.fileUploads.notifications.addWaiter { [self] records in sendFileNotifications(records, on: id) }
        fileNotificationLinks[id] = state
        core.dispatchFileNotifications()
    }

    /// One message per notification, its JSON record as the body; what the credit does not cover goes back.
    private func sendFileNotifications(_ records: [FileUploads.Notification], on id: AMQPObjectID) {
        guard var state = fileNotificationLinks[id], let link = links[id]?.link else {
            core.fileUploads.notifications.giveBack(records)
            return
        }
        state.waiter = nil
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var sent = 0
        for record in records where link.credit > 0 {
            var message = AMQPMessage(data: (try? Array(encoder.encode(record))) ?? Array("{}".utf8))
            message.messageID = .string(AMQPUUID.random().description)
            message.contentType = Self.fileNotificationContentType
            message.userID = Array(core.configuration.hubName.utf8)
            message.messageAnnotations[.symbol(IoTHubAMQP.enqueuedTimeAnnotation)] = .timestamp(core.now)
            let tag = AMQPUUID.random().bytes
            transmit(message, on: link, tag: tag)
            if link.remoteSenderSettleMode != .settled { state.unsettled.append((tag, record)) }
            sent += 1
        }
        if sent < records.count { core.fileUploads.notifications.giveBack(Array(records[sent...])) }
        fileNotificationLinks[id] = state
        offerFileNotifications(link)
    }

    /// accepted or rejected: consumed; released or modified: back to the front of the queue.
    func fileNotificationDisposition(_ delivery: AMQPDelivery) {
        let id = delivery.link.id
        guard let outcome = delivery.remoteOutcome ?? (delivery.isRemotelySettled ? .accepted : nil) else { return }
        if var state = fileNotificationLinks[id], let i = state.unsettled.firstIndex(where: { $0.tag == delivery.tag }) {
            let held = state.unsettled.remove(at: i)
            fileNotificationLinks[id] = state
            switch outcome {
            case .accepted, .rejected: break  // consumed
            case .released, .modified:
                core.fileUploads.notifications.giveBack([held.notification])
                core.dispatchFileNotifications()
            }
        }
        delivery.settle()
    }

    /// The link went away: its waiter leaves the queue and what it held unsettled goes back, in order.
    func fileNotificationLinkGone(_ id: AMQPObjectID) {
        guard let state = fileNotificationLinks.removeValue(forKey: id) else { return }
        if let waiter = state.waiter { _ = core.fileUploads.notifications.removeWaiter(waiter) }
        guard !state.unsettled.isEmpty else { return }
        core.fileUploads.notifications.giveBack(state.unsettled.map(\.notification))
        core.dispatchFileNotifications()
    }
}
