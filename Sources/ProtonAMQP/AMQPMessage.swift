/// An AMQP 1.0 message: the sections of §3.2 of the standard, with exact types kept.
///
/// Encoding writes the sections in the standard order. Decoding accepts them in **any** order, because the Azure
/// C SDK writes batch entries as properties, application-properties, message-annotations, data
/// (batches of IoT Hub telemetry).
public struct AMQPMessage: Sendable, Equatable {
    public var durable: Bool?
    public var priority: UInt8?
    public var ttlMilliseconds: UInt32?
    public var deliveryCount: UInt32?
    public var deliveryAnnotations: [AMQPValue: AMQPValue] = [:]
    public var messageAnnotations: [AMQPValue: AMQPValue] = [:]

    public var messageID: AMQPValue?
    public var userID: [UInt8]?
    public var to: String?
    public var subject: String?
    public var replyTo: String?
    public var correlationID: AMQPValue?
    public var contentType: String?
    public var contentEncoding: String?
    /// Milliseconds since the Unix epoch.
    public var absoluteExpiryTime: Int64?
    /// Milliseconds since the Unix epoch.
    public var creationTime: Int64?
    public var groupID: String?

    public var applicationProperties: [String: AMQPValue] = [:]
    public var body: Body = .none

    public enum Body: Sendable, Equatable {
        case none
        /// One or more data sections.
        case data([[UInt8]])
        case value(AMQPValue)
        case sequence([[AMQPValue]])

        /// The concatenated data sections, or the UTF-8 of a string value.
        public var bytes: [UInt8] {
            switch self {
            case .data(let sections): return sections.count == 1 ? sections[0] : sections.flatMap { $0 }
            case .value(.string(let s)): return Array(s.utf8)
            case .value(.binary(let b)): return b
            default: return []
            }
        }
    }

    public init() {}

    /// A message with one data section.
    public init(data: [UInt8]) {
        self.body = .data([data])
    }
}

/// The section descriptor codes of AMQP 1.0 §3.2.
enum SectionCode: UInt64 {
    case header = 0x70
    case deliveryAnnotations = 0x71
    case messageAnnotations = 0x72
    case properties = 0x73
    case applicationProperties = 0x74
    case data = 0x75
    case sequence = 0x76
    case value = 0x77
    case footer = 0x78
}

extension AMQPMessage {
    /// The sections in standard order, as described values.
    var sections: [AMQPValue] {
        var out: [AMQPValue] = []
        func described(_ code: SectionCode, _ v: AMQPValue) -> AMQPValue {
            .described(descriptor: .ulong(code.rawValue), value: v)
        }
        if durable != nil || priority != nil || ttlMilliseconds != nil || deliveryCount != nil {
            out.append(described(.header, .list([
                durable.map(AMQPValue.bool) ?? .null,
                priority.map(AMQPValue.ubyte) ?? .null,
                ttlMilliseconds.map(AMQPValue.uint) ?? .null,
                .null,
                deliveryCount.map(AMQPValue.uint) ?? .null,
            ].trimmingTrailingNulls())))
        }
        if !deliveryAnnotations.isEmpty { out.append(described(.deliveryAnnotations, .map(deliveryAnnotations))) }
        if !messageAnnotations.isEmpty { out.append(described(.messageAnnotations, .map(messageAnnotations))) }
        let props: [AMQPValue] = [
            messageID ?? .null,
            userID.map(AMQPValue.binary) ?? .null,
            to.map(AMQPValue.string) ?? .null,
            subject.map(AMQPValue.string) ?? .null,
            replyTo.map(AMQPValue.string) ?? .null,
            correlationID ?? .null,
            contentType.map(AMQPValue.symbol) ?? .null,
            contentEncoding.map(AMQPValue.symbol) ?? .null,
            absoluteExpiryTime.map(AMQPValue.timestamp) ?? .null,
            creationTime.map(AMQPValue.timestamp) ?? .null,
            groupID.map(AMQPValue.string) ?? .null,
        ].trimmingTrailingNulls()
        if !props.isEmpty { out.append(described(.properties, .list(props))) }
        if !applicationProperties.isEmpty {
            var map: [AMQPValue: AMQPValue] = [:]
            for (k, v) in applicationProperties { map[.string(k)] = v }
            out.append(described(.applicationProperties, .map(map)))
        }
        switch body {
        case .none: break
        case .data(let sections): for s in sections { out.append(described(.data, .binary(s))) }
        case .value(let v): out.append(described(.value, v))
        case .sequence(let seqs): for s in seqs { out.append(described(.sequence, .list(s))) }
        }
        return out
    }

    /// Fills the fields of one decoded section; unknown descriptors are an error.
    mutating func apply(section code: UInt64, value: AMQPValue) throws(AMQPError) {
        guard let kind = SectionCode(rawValue: code) else {
            throw AMQPError(.decode, "unknown message section descriptor 0x\(String(code, radix: 16))")
        }
        switch kind {
        case .header:
            guard case .list(let f) = value else { throw AMQPError(.decode, "header is not a list") }
            if case .bool(let b)? = f[safe: 0] { durable = b }
            if case .ubyte(let p)? = f[safe: 1] { priority = p }
            if case .uint(let t)? = f[safe: 2] { ttlMilliseconds = t }
            if case .uint(let c)? = f[safe: 4] { deliveryCount = c }
        case .deliveryAnnotations:
            deliveryAnnotations = value.mapValue ?? [:]
        case .messageAnnotations:
            guard let m = value.mapValue else { throw AMQPError(.decode, "message-annotations is not a map") }
            messageAnnotations = m
        case .properties:
            guard case .list(let f) = value else { throw AMQPError(.decode, "properties is not a list") }
            func nonNull(_ i: Int) -> AMQPValue? {
                guard let v = f[safe: i], v != .null else { return nil }
                return v
            }
            messageID = nonNull(0)
            if case .binary(let u)? = nonNull(1) { userID = u }
            to = nonNull(2)?.stringValue
            subject = nonNull(3)?.stringValue
            replyTo = nonNull(4)?.stringValue
            correlationID = nonNull(5)
            contentType = nonNull(6)?.stringValue
            contentEncoding = nonNull(7)?.stringValue
            if case .timestamp(let t)? = nonNull(8) { absoluteExpiryTime = t }
            if case .timestamp(let t)? = nonNull(9) { creationTime = t }
            groupID = nonNull(10)?.stringValue
        case .applicationProperties:
            guard let m = value.mapValue else { throw AMQPError(.decode, "application-properties is not a map") }
            var props: [String: AMQPValue] = [:]
            for (k, v) in m {
                guard case .string(let key) = k else {
                    throw AMQPError(.decode, "application-properties key is not a string")
                }
                props[key] = v
            }
            applicationProperties = props
        case .data:
            guard case .binary(let b) = value else { throw AMQPError(.decode, "data section is not binary") }
            if case .data(var existing) = body {
                existing.append(b)
                body = .data(existing)
            } else {
                body = .data([b])
            }
        case .sequence:
            guard case .list(let l) = value else { throw AMQPError(.decode, "amqp-sequence is not a list") }
            if case .sequence(var existing) = body {
                existing.append(l)
                body = .sequence(existing)
            } else {
                body = .sequence([l])
            }
        case .value:
            body = .value(value)
        case .footer:
            break
        }
    }
}

extension Array where Element == AMQPValue {
    func trimmingTrailingNulls() -> [AMQPValue] {
        var copy = self
        while copy.last == .null { copy.removeLast() }
        return copy
    }
}

extension Array {
    subscript(safe index: Int) -> Element? { indices.contains(index) ? self[index] : nil }
}
