/// One reading as the spool stores it and the uplink sends it: body, content type/encoding and the leaf's
/// application properties. The spool record adds leaf, sequence and acquisition time.
///
/// Encoding (version 1, little endian): u8 version, then content-type, content-encoding as u16-length strings,
/// u16 property count, each key and value as u16-length strings, then the body to the end.
public struct TelemetryEnvelope: Sendable, Equatable {
    public var contentType: String
    public var contentEncoding: String
    public var properties: [String: String]
    public var body: [UInt8]

    public init(body: [UInt8], contentType: String = "application/json", contentEncoding: String = "utf-8", properties: [String: String] = [:]) {
        self.body = body
        self.contentType = contentType
        self.contentEncoding = contentEncoding
        self.properties = properties
    }

    static let version: UInt8 = 1

    public func encoded() -> [UInt8] {
        var out: [UInt8] = [Self.version]
        out.reserveCapacity(body.count + 32)
        func put(_ s: String) {
            let u = Array(s.utf8.prefix(Int(UInt16.max)))
            out.append(UInt8(u.count & 0xFF)); out.append(UInt8(u.count >> 8))
            out.append(contentsOf: u)
        }
        put(contentType)
        put(contentEncoding)
        let props = properties.sorted { $0.key < $1.key }.prefix(Int(UInt16.max))
        out.append(UInt8(props.count & 0xFF)); out.append(UInt8(props.count >> 8))
        for (k, v) in props { put(k); put(v) }
        out.append(contentsOf: body)
        return out
    }

    /// nil when `bytes` is not a version-1 envelope (truncated, or written by something else, or with text that is
    /// not UTF-8).
    public init?(decoding bytes: [UInt8]) {
        let decoded = bytes.withUnsafeBytes { raw -> TelemetryEnvelope? in
            guard let layout = TelemetryEnvelopeLayout(raw) else { return nil }
            func text(_ part: UnsafeRawBufferPointer) -> String? { String(validating: part, as: UTF8.self) }
            guard let contentType = text(UnsafeRawBufferPointer(rebasing: raw[layout.contentType])),
                  let contentEncoding = text(UnsafeRawBufferPointer(rebasing: raw[layout.contentEncoding])) else { return nil }
            var properties: [String: String] = [:]
            var valid = true
            TelemetryEnvelopeLayout.forEachProperty(in: raw, layout.properties) { k, v in
                guard let key = text(k), let value = text(v) else { valid = false; return }
                properties[key] = value
            }
            guard valid else { return nil }
            return TelemetryEnvelope(body: Array(raw[layout.body]), contentType: contentType, contentEncoding: contentEncoding, properties: properties)
        }
        guard let decoded else { return nil }
        self = decoded
    }
}

/// Where the parts of an encoded envelope lie, found without copying or decoding them: the uplink encodes every
/// message from this (one pass over the bytes, nothing allocated). It also tells whether the envelope can go out
/// as it is: printable-ASCII content type and encoding, and properties the hub takes unchanged (`MessageRules`).
public struct TelemetryEnvelopeLayout {
    public var contentType: Range<Int>
    public var contentEncoding: Range<Int>
    /// The property entries as stored (key, value, key, value … as u16-length strings; sorted by key).
    public var properties: Range<Int>
    public var propertyCount: Int
    /// Bytes of every property name and value: the properties' share of the hub's size measure.
    public var propertyBytes: Int
    public var body: Range<Int>
    /// Every property passes `MessageRules` unchanged, and no two names differ only by case.
    public var propertiesAreClean: Bool
    /// Content type and encoding are printable ASCII (they travel as AMQP symbols).
    public var systemValuesAreASCII: Bool

    /// nil when `bytes` is not a complete version-1 envelope.
    public init?(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.first == TelemetryEnvelope.version else { return nil }
        var i = 1
        func string() -> Range<Int>? {
            guard i + 2 <= bytes.count else { return nil }
            let n = Int(bytes[i]) | Int(bytes[i + 1]) << 8
            guard i + 2 + n <= bytes.count else { return nil }
            defer { i += 2 + n }
            return i + 2 ..< i + 2 + n
        }
        guard let type = string(), let encoding = string(), i + 2 <= bytes.count else { return nil }
        let count = Int(bytes[i]) | Int(bytes[i + 1]) << 8
        i += 2
        let start = i
        var clean = true
        var total = 0
        for _ in 0..<count {
            guard let key = string(), let value = string() else { return nil }
            total += key.count + value.count
            if clean {
                let k = UnsafeRawBufferPointer(rebasing: bytes[key])
                clean = MessageRules.isAcceptableName(k) && MessageRules.isValidValue(UnsafeRawBufferPointer(rebasing: bytes[value]))
            }
        }
        if clean && count > 1 {
            // Rarely more than a handful: compare each name with the ones before it.
            var names: [UnsafeRawBufferPointer] = []
            Self.forEachProperty(in: bytes, start ..< i) { k, _ in
                if names.contains(where: { MessageRules.equalIgnoringCase($0, k) }) { clean = false }
                names.append(k)
            }
        }
        contentType = type
        contentEncoding = encoding
        properties = start ..< i
        propertyCount = count
        propertyBytes = total
        body = i ..< bytes.count
        propertiesAreClean = clean
        systemValuesAreASCII = MessageRules.isValidValue(UnsafeRawBufferPointer(rebasing: bytes[type]))
            && MessageRules.isValidValue(UnsafeRawBufferPointer(rebasing: bytes[encoding]))
    }

    /// Calls `body(name, value)` for each property entry in `range` (the layout's `properties`).
    public static func forEachProperty(in bytes: UnsafeRawBufferPointer, _ range: Range<Int>,
                                       _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) -> Void) {
        var i = range.lowerBound
        func next() -> UnsafeRawBufferPointer {
            let n = Int(bytes[i]) | Int(bytes[i + 1]) << 8
            defer { i += 2 + n }
            return UnsafeRawBufferPointer(rebasing: bytes[i + 2 ..< i + 2 + n])
        }
        while i < range.upperBound {
            let k = next()
            body(k, next())
        }
    }
}
