import FieldgateCore
import IoTHub
import ProtonAMQP
import Spool

/// One D2C message ready to send: the spool records it carries and its AMQP encoding.
struct OutgoingMessage: Sendable {
    var leaf: String
    var sequences: [UInt64]
    var bytes: [UInt8]
    /// The oldest acquisition time it carries (for latency figures).
    var acquiredAtMs: Int64
}

/// Turns spool records into D2C messages (contract 2): the message-id comes from the record, so every retry and
/// every restart sends the same id; `iothub-creation-time-utc` is the acquisition time.
struct TelemetryEncoder {
    /// Coalescing target in bytes; nil = one message per record.
    var coalesceTargetBytes: Int?
    var messageID: @Sendable (UInt64) -> String

    /// Encodes `records` (per leaf in order). Records that are not telemetry envelopes, or that the hub could never
    /// accept (over 256 KB by its measure, a creation time it cannot read), come back in `invalid`: sending them
    /// would only be refused, or close the link.
    func encode(_ records: [SpoolRecord]) -> (messages: [OutgoingMessage], invalid: [UInt64]) {
        var messages: [OutgoingMessage] = []
        var invalid: [UInt64] = []
        var group: [(SpoolRecord, TelemetryEnvelope)] = []
        var groupBytes = 0
        func flush() {
            guard !group.isEmpty else { return }
            messages.append(group.count == 1 ? single(group[0].0, group[0].1) : coalesced(group))
            group = []
            groupBytes = 0
        }
        for record in records {
            // The hub's rules once more (docs/message-rules.md): records spooled before a rule existed, or by
            // another adapter, must not be refused for their format either.
            guard var envelope = TelemetryEnvelope(decoding: record.payload), MessageRules.isPlausibleCreationTime(record.acquiredAtMs) else {
                invalid.append(record.sequence)
                continue
            }
            envelope.properties = MessageRules.sanitize(envelope.properties).properties
            guard Self.hubSize(envelope, id: messageID(record.sequence)) <= IoTHubAMQP.maxTelemetrySize else {
                invalid.append(record.sequence)
                continue
            }
            guard let target = coalesceTargetBytes.map({ min($0, IoTHubAMQP.maxTelemetrySize - 1024) }), Self.isJSON(envelope) else {
                flush()
                messages.append(single(record, envelope))
                continue
            }
            if let first = group.first, first.0.leaf != record.leaf || first.1.properties != envelope.properties
                || groupBytes + envelope.body.count + 1 > target {
                flush()
            }
            group.append((record, envelope))
            groupBytes += envelope.body.count + 1
        }
        flush()
        return (messages, invalid)
    }

    /// The hub's measure of the message one record makes (with its creation-time property).
    static func hubSize(_ e: TelemetryEnvelope, id: String) -> Int {
        MessageRules.hubSize(body: e.body.count, systemValues: [id, e.contentType, e.contentEncoding], properties: e.properties)
            + IoTHubAMQP.creationTimeProperty.utf8.count + 24
    }

    private static func isJSON(_ e: TelemetryEnvelope) -> Bool {
        e.contentType.lowercased().hasPrefix("application/json") && e.contentEncoding.lowercased() == "utf-8"
    }

    private func single(_ record: SpoolRecord, _ envelope: TelemetryEnvelope) -> OutgoingMessage {
        let m = message(id: messageID(record.sequence), acquiredAtMs: record.acquiredAtMs, envelope: envelope, body: envelope.body)
        return OutgoingMessage(leaf: record.leaf, sequences: [record.sequence], bytes: m, acquiredAtMs: record.acquiredAtMs)
    }

    /// Several JSON readings of one leaf as one JSON array. Its id names the record range it carries.
    private func coalesced(_ group: [(SpoolRecord, TelemetryEnvelope)]) -> OutgoingMessage {
        var body: [UInt8] = [UInt8(ascii: "[")]
        for (i, (_, e)) in group.enumerated() {
            if i > 0 { body.append(UInt8(ascii: ",")) }
            body.append(contentsOf: e.body)
        }
        body.append(UInt8(ascii: "]"))
        let first = group[0].0, last = group[group.count - 1].0
        let id = messageID(first.sequence) + "-" + String(last.sequence)
        let m = message(id: id, acquiredAtMs: first.acquiredAtMs, envelope: group[0].1, body: body)
        return OutgoingMessage(leaf: first.leaf, sequences: group.map(\.0.sequence), bytes: m, acquiredAtMs: first.acquiredAtMs)
    }

    private func message(id: String, acquiredAtMs: Int64, envelope: TelemetryEnvelope, body: [UInt8]) -> [UInt8] {
        var m = AMQPMessage(data: body)
        m.messageID = .string(id)
        m.contentType = envelope.contentType
        m.contentEncoding = envelope.contentEncoding
        for (k, v) in envelope.properties { m.applicationProperties[k] = .string(v) }
        m.applicationProperties[IoTHubAMQP.creationTimeProperty] = .string(WallClock.iso8601(milliseconds: acquiredAtMs))
        return AMQPMessageCodec.encode(m)
    }
}
