import FieldgateCore

/// An AMQP 1.0 value, as Swift sees it. Types matter on this wire (IoT Hub SDKs reject an `int` where they expect a
/// `long`, a string where they expect a `uuid`), so every primitive keeps its exact AMQP type.
public indirect enum AMQPValue: Hashable, Sendable {
    case null
    case bool(Bool)
    case ubyte(UInt8)
    case ushort(UInt16)
    case uint(UInt32)
    case ulong(UInt64)
    case byte(Int8)
    case short(Int16)
    case int(Int32)
    case long(Int64)
    case float(Float)
    case double(Double)
    /// Milliseconds since the Unix epoch.
    case timestamp(Int64)
    case uuid(AMQPUUID)
    case binary([UInt8])
    case string(String)
    case symbol(String)
    case list([AMQPValue])
    case map([AMQPValue: AMQPValue])
    /// An AMQP array: every element has the type of the first.
    case array([AMQPValue])
    case described(descriptor: AMQPValue, value: AMQPValue)

    /// The string of a `.string` or `.symbol`, else nil.
    public var stringValue: String? {
        switch self {
        case .string(let s), .symbol(let s): return s
        default: return nil
        }
    }

    /// Any integer type widened to Int64, else nil.
    public var integerValue: Int64? {
        switch self {
        case .ubyte(let v): return Int64(v)
        case .ushort(let v): return Int64(v)
        case .uint(let v): return Int64(v)
        case .ulong(let v): return v <= UInt64(Int64.max) ? Int64(v) : nil
        case .byte(let v): return Int64(v)
        case .short(let v): return Int64(v)
        case .int(let v): return Int64(v)
        case .long(let v): return v
        default: return nil
        }
    }

    public var mapValue: [AMQPValue: AMQPValue]? {
        if case .map(let m) = self { return m }
        return nil
    }
}

/// A 16-byte AMQP uuid.
public struct AMQPUUID: Hashable, Sendable, CustomStringConvertible {
    public var bytes: [UInt8]

    public init(bytes: [UInt8]) {
        precondition(bytes.count == 16, "an AMQP uuid has 16 bytes")
        self.bytes = bytes
    }

    /// A random (version 4) uuid.
    public static func random() -> AMQPUUID {
        var g = SystemRandomNumberGenerator()
        var b = (0..<16).map { _ in UInt8.random(in: 0...255, using: &g) }
        b[6] = (b[6] & 0x0F) | 0x40
        b[8] = (b[8] & 0x3F) | 0x80
        return AMQPUUID(bytes: b)
    }

    /// Parses the canonical 8-4-4-4-12 hex form.
    public init?(string: String) {
        let hex = string.filter { $0 != "-" }
        guard hex.count == 32, string.count == 36 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(16)
        var it = hex.makeIterator()
        while let hi = it.next(), let lo = it.next() {
            guard let h = hi.hexDigitValue, let l = lo.hexDigitValue else { return nil }
            out.append(UInt8(h << 4 | l))
        }
        self.bytes = out
    }

    public var description: String {
        let hex = bytes.map { b in String(b, radix: 16).leftPadded(to: 2) }
        return hex[0..<4].joined() + "-" + hex[4..<6].joined() + "-" + hex[6..<8].joined() + "-"
            + hex[8..<10].joined() + "-" + hex[10..<16].joined()
    }
}


extension AMQPValue: ExpressibleByStringLiteral {
    public init(stringLiteral value: String) { self = .string(value) }
}
