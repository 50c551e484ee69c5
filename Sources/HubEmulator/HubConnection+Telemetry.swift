import FieldgateCore
import IoTHub
import Logging
import ProtonAMQP

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

extension HubConnection {
    /// A D2C transfer: a single message or a batch (docs/iothub-protocol.md §4, §12 items 16–20).
    ///
    /// Batches: Proton 0.37 cannot read a transfer's message-format (docs/iothub-protocol.md §16), so a batch is
    /// recognised by structure: a body made only of data sections that each hold a complete AMQP message (each
    /// starts with a section descriptor `0x00 0x53 0x70…0x78`). A JSON or text body never starts with 0x00, so plain
    /// telemetry is never mistaken for a batch.
    func receivedTelemetry(_ bytes: [UInt8], delivery: AMQPDelivery, deviceId: String) {
        if bytes.count > Int(IoTHubAMQP.linkMaxMessageSize) {
            delivery.dispose(.rejected(sizeCondition(bytes.count)))
            delivery.link.close(AMQPCondition(name: IoTHubAMQP.messageSizeExceeded, description: "a transfer larger than 1048576 bytes closes the link"))
            return
        }
        if core.isThrottled(deviceId) {
            return delivery.dispose(.rejected(AMQPCondition(
                name: IoTHubAMQP.throttled, description: hubErrorJSON(429001, "Throttling: device \(deviceId) is throttled"))))
        }
        let token = liveToken(covering: "/devices/\(deviceId)")
        guard token != nil || certificateDevice == deviceId else {
            return delivery.dispose(.rejected(AMQPCondition(name: IoTHubAMQP.unauthorizedAccess, description: "Token Invalid.")))
        }
        if let refusal = core.quotaRefusal() {
            return delivery.dispose(.rejected(AMQPCondition(name: IoTHubAMQP.resourceLimitExceeded, description: refusal)))
        }
        if let left = core.rejectTelemetry[deviceId], left > 0 {
            core.rejectTelemetry[deviceId] = left - 1
            return delivery.dispose(.rejected(AMQPCondition(name: IoTHubAMQP.argumentError, description: "rejected by fault injection (/faults/reject-telemetry)")))
        }
        let outer: AMQPMessage
        do { outer = try AMQPMessageCodec.decode(bytes) } catch {
            return delivery.dispose(.rejected(AMQPCondition(name: IoTHubAMQP.decodeError, description: "the message cannot be decoded: \(error.message)")))
        }
        var messages = [outer]
        var encodings = [bytes]
        if case .data(let sections) = outer.body, sections.allSatisfy(Self.looksLikeEncodedMessage) {
            do { messages = try sections.map { s throws(AMQPError) in try AMQPMessageCodec.decode(s) } } catch {
                return delivery.dispose(.rejected(AMQPCondition(name: IoTHubAMQP.decodeError, description: "a batch entry cannot be decoded: \(error.message)")))
            }
            encodings = sections
        }
        let sizes = messages.map(Self.protocolAgnosticSize)
        let size = sizes.reduce(0, +)
        guard size <= IoTHubAMQP.maxTelemetrySize else { return delivery.dispose(.rejected(sizeCondition(size))) }
        for m in messages {
            if let problem = Self.propertyProblem(m) {
                return delivery.dispose(.rejected(AMQPCondition(name: IoTHubAMQP.argumentError, description: problem)))
            }
        }
        let generationId = core.registry.devices[deviceId]?.generationId ?? ""
        let now = core.now
        let hubScope = token?.policy != nil
        let x509 = token == nil
        for encoded in encodings {
            core.recordEvent(StoredEvent(deviceId: deviceId, generationId: generationId, enqueuedMs: now, hubScope: hubScope, x509: x509, encoded: encoded))
        }
        core.chargeQuota(messageSizes: sizes)
        delivery.dispose(.accepted)
    }

    private func sizeCondition(_ size: Int) -> AMQPCondition {
        AMQPCondition(name: IoTHubAMQP.messageSizeExceeded,
                      description: "Message size is \(size) bytes which is greater than the max size \(IoTHubAMQP.maxTelemetrySize) bytes allowed.")
    }

    static func looksLikeEncodedMessage(_ section: [UInt8]) -> Bool {
        section.count >= 3 && section[0] == 0x00 && section[1] == 0x53 && (0x70...0x78).contains(section[2])
    }

    /// Body bytes + system property values + application property names and values (docs/iothub-protocol.md §4.3).
    static func protocolAgnosticSize(_ m: AMQPMessage) -> Int {
        var size = m.body.bytes.count
        for v in [m.messageID, m.correlationID].compactMap({ $0 }) { size += render(v).utf8.count }
        for s in [m.contentType, m.contentEncoding, m.to, m.subject].compactMap({ $0 }) { size += s.utf8.count }
        for (k, v) in m.applicationProperties { size += k.utf8.count + render(v).utf8.count }
        return size
    }

    /// ASCII table of the characters a message-id may hold (a lookup, not Unicode property queries, per message).
    private static let messageIDAllowed: [Bool] = {
        var t = [Bool](repeating: false, count: 128)
        for b in UInt8(ascii: "a")...UInt8(ascii: "z") { t[Int(b)] = true }
        for b in UInt8(ascii: "A")...UInt8(ascii: "Z") { t[Int(b)] = true }
        for b in UInt8(ascii: "0")...UInt8(ascii: "9") { t[Int(b)] = true }
        for b in "-:.+%_#*?!(),=@;$'".utf8 { t[Int(b)] = true }
        return t
    }()

    /// message-id: at most 128 ASCII alphanumerics and `- : . + % _ # * ? ! ( ) , = @ ; $ '`; application
    /// property names: ASCII letters, digits and the HTTP token punctuation; values: printable ASCII;
    /// `iothub-creation-time-utc`: an ISO 8601 time with a four-digit year.
    public static func propertyProblem(_ m: AMQPMessage) -> String? {
        if case .string(let id)? = m.messageID {
            let ok = !id.isEmpty && id.utf8.count <= 128 && id.utf8.allSatisfy { $0 < 128 && messageIDAllowed[Int($0)] }
            if !ok { return "message-id '\(id)' is longer than 128 characters or has characters outside the allowed set" }
        }
        for (k, v) in m.applicationProperties {
            guard MessageRules.isValidName(k) else {
                return "application property name '\(k)' has characters outside the allowed set"
            }
            if case .string(let s) = v, !MessageRules.isValidValue(s) {
                return "application property '\(k)' has a value outside printable ASCII"
            }
        }
        if let t = m.applicationProperties[IoTHubAMQP.creationTimeProperty] {
            guard case .string(let s) = t, s.utf8.count >= 20, s.utf8.dropFirst(4).first == UInt8(ascii: "-"), WallClock.parseISO8601(s) != nil else {
                return "iothub-creation-time-utc '\(Self.render(t))' is not an ISO 8601 UTC time"
            }
        }
        return nil
    }

    static func render(_ v: AMQPValue) -> String {
        switch v {
        case .string(let s), .symbol(let s): return s
        case .uuid(let u): return u.description
        case .bool(let b): return String(b)
        case .timestamp(let t): return WallClock.iso8601(milliseconds: t)
        case .binary(let b): return Data(b).base64EncodedString()
        default:
            if let i = v.integerValue { return String(i) }
            if case .double(let d) = v { return String(d) }
            if case .float(let f) = v { return String(f) }
            return String(describing: v)
        }
    }

    /// The service-side view of a stored message, stamped from the link identity (client values with the hub's
    /// names are overwritten: anti-spoofing, §4.5).
    static func render(_ stored: StoredEvent, sequence: Int64) -> ReceivedEvent {
        let m = (try? AMQPMessageCodec.decode(stored.encoded)) ?? AMQPMessage()
        let enqueued = WallClock.iso8601(milliseconds: stored.enqueuedMs)
        var system: [String: String] = [:]
        if let id = m.messageID { system["message-id"] = render(id) }
        if let c = m.correlationID { system["correlation-id"] = render(c) }
        if let ct = m.contentType { system["content-type"] = ct }
        if let ce = m.contentEncoding { system["content-encoding"] = ce }
        if let to = m.to { system["to"] = to }
        if let u = m.userID { system["user-id"] = String(decoding: u, as: UTF8.self) }
        if let t = m.creationTime { system["creation-time"] = WallClock.iso8601(milliseconds: t) }
        var annotations: [String: String] = [:]
        for (k, v) in m.messageAnnotations { if let key = k.stringValue { annotations[key] = render(v) } }
        annotations[IoTHubAMQP.connectionDeviceID] = stored.deviceId
        annotations[IoTHubAMQP.connectionAuthMethod] = JSONValue.object([
            "scope": .string(stored.hubScope ? "hub" : "device"), "type": .string(stored.x509 ? "x509" : "sas"), "issuer": "iothub", "acceptingIpFilterRule": .null,
        ]).serialized
        annotations[IoTHubAMQP.connectionAuthGenerationID] = stored.generationId
        annotations[IoTHubAMQP.enqueuedTime] = enqueued
        annotations[IoTHubAMQP.messageSource] = stored.source
        annotations[IoTHubAMQP.connectionModuleID] = nil
        let body = m.body.bytes
        let text = String(validating: body, as: UTF8.self)
        return ReceivedEvent(
            sequenceNumber: sequence, deviceId: stored.deviceId, moduleId: nil, enqueuedTimeUtc: enqueued,
            body: text, bodyBase64: text == nil ? Data(body).base64EncodedString() : nil,
            properties: m.applicationProperties.mapValues(render), annotations: annotations, systemProperties: system)
    }
}
