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

    /// nil when `bytes` is not a version-1 envelope (truncated, or written by something else).
    public init?(decoding bytes: [UInt8]) {
        guard bytes.first == Self.version else { return nil }
        var i = 1
        func u16() -> Int? {
            guard i + 2 <= bytes.count else { return nil }
            defer { i += 2 }
            return Int(bytes[i]) | Int(bytes[i + 1]) << 8
        }
        func string() -> String? {
            guard let n = u16(), i + n <= bytes.count else { return nil }
            defer { i += n }
            return String(validating: bytes[i..<i + n], as: UTF8.self)
        }
        guard let contentType = string(), let contentEncoding = string(), let count = u16() else { return nil }
        var properties: [String: String] = [:]
        for _ in 0..<count {
            guard let k = string(), let v = string() else { return nil }
            properties[k] = v
        }
        self.init(body: Array(bytes[i...]), contentType: contentType, contentEncoding: contentEncoding, properties: properties)
    }
}
