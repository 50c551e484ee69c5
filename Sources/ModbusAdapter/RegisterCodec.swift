import FieldgateCore

/// What a point holds and how many registers it spans.
public enum PointType: Sendable, Equatable, Hashable, CustomStringConvertible {
    case u16, i16, u32, i32, u64, i64, f32, f64
    /// `length` characters (bytes), two per register, high byte first unless the order says BA; NUL-padded.
    case string(length: Int)
    /// A coil or discrete input; on a register: non-zero.
    case bool
    /// One bit (0 = least significant) of a register.
    case bit(Int)

    public var registerCount: Int {
        switch self {
        case .u16, .i16, .bool, .bit: 1
        case .u32, .i32, .f32: 2
        case .u64, .i64, .f64: 4
        case .string(let n): (n + 1) / 2
        }
    }

    /// The names a profile uses (`type = "f32"`); `string` and `bit` take `length` and `bit` keys.
    public static func named(_ name: String, length: Int?, bit: Int?) -> PointType? {
        switch name {
        case "u16", "uint16": .u16
        case "i16", "int16": .i16
        case "u32", "uint32": .u32
        case "i32", "int32": .i32
        case "u64", "uint64": .u64
        case "i64", "int64": .i64
        case "f32", "float32", "float": .f32
        case "f64", "float64", "double": .f64
        case "string": length.map { .string(length: $0) }
        case "bool": .bool
        case "bit": bit.map { .bit($0) }
        default: nil
        }
    }

    public var description: String {
        switch self {
        case .u16: "u16"
        case .i16: "i16"
        case .u32: "u32"
        case .i32: "i32"
        case .u64: "u64"
        case .i64: "i64"
        case .f32: "f32"
        case .f64: "f64"
        case .string(let n): "string(\(n))"
        case .bool: "bool"
        case .bit(let b): "bit(\(b))"
        }
    }

    var isFloat: Bool { self == .f32 || self == .f64 }
    var isNumeric: Bool {
        switch self { case .string, .bool, .bit: false; default: true }
    }
}

/// How a device lays a multi-register value out on the wire, in the letters vendors use: A is the most
/// significant byte. ABCD is Modbus's own big-endian order; CDAB swaps the words (registers), BADC the bytes inside
/// each register, DCBA both. For 64-bit values the same two swaps give ABCDEFGH, GHEFCDAB, BADCFEHG, HGFEDCBA;
/// a 32-bit letter set on a 64-bit point means the same swaps. Strings take AB or BA (BADC) per register.
public struct RegisterOrder: Sendable, Equatable, Hashable, CustomStringConvertible {
    public var swapWords: Bool
    public var swapBytes: Bool

    public static let bigEndian = RegisterOrder(swapWords: false, swapBytes: false)

    public init(swapWords: Bool, swapBytes: Bool) {
        self.swapWords = swapWords
        self.swapBytes = swapBytes
    }

    /// Parses ABCD / CDAB / BADC / DCBA, their 64-bit forms, or AB / BA.
    public init?(_ text: String) {
        switch text.uppercased() {
        case "ABCD", "ABCDEFGH", "AB": self.init(swapWords: false, swapBytes: false)
        case "CDAB", "GHEFCDAB": self.init(swapWords: true, swapBytes: false)
        case "BADC", "BADCFEHG", "BA": self.init(swapWords: false, swapBytes: true)
        case "DCBA", "HGFEDCBA": self.init(swapWords: true, swapBytes: true)
        default: return nil
        }
    }

    /// Whether `text` is an order for `type`: 8 letters only for 64-bit values, AB/BA only for one register or a
    /// string (where only the byte swap means something).
    public static func fits(_ text: String, _ type: PointType) -> Bool {
        switch (type, text.count) {
        case (.u64, 4), (.u64, 8), (.i64, 4), (.i64, 8), (.f64, 4), (.f64, 8): true
        case (.u32, 4), (.i32, 4), (.f32, 4): true
        case (.u16, 2), (.u16, 4), (.i16, 2), (.i16, 4), (.bool, 2), (.bool, 4), (.bit, 2), (.bit, 4), (.string, 2), (.string, 4): true
        default: false
        }
    }

    public var description: String {
        switch (swapWords, swapBytes) {
        case (false, false): "ABCD"
        case (true, false): "CDAB"
        case (false, true): "BADC"
        case (true, true): "DCBA"
        }
    }

    /// Wire bytes ↔ big-endian value bytes. Both swaps are their own inverse, so this goes both ways.
    func reorder(_ bytes: [UInt8], words: Bool = true) -> [UInt8] {
        var b = bytes
        if swapBytes { for i in stride(from: 0, to: b.count - 1, by: 2) { b.swapAt(i, i + 1) } }
        if swapWords && words {
            var out: [UInt8] = []
            out.reserveCapacity(b.count)
            for i in stride(from: b.count - 2, through: 0, by: -2) { out.append(b[i]); out.append(b[i + 1]) }
            b = out
        }
        return b
    }
}

/// A decoded raw value, before scale and offset.
public enum RawValue: Sendable, Equatable {
    case int(Int64)
    case uint(UInt64)
    case float(Double)
    case string(String)
    case bool(Bool)

    var asDouble: Double? {
        switch self {
        case .int(let i): Double(i)
        case .uint(let u): Double(u)
        case .float(let d): d
        case .string, .bool: nil
        }
    }
}

public struct CodecError: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
    init(_ d: String) { description = d }
}

/// Register words ↔ typed values. Pure; golden-vector tested for every type × order.
public enum RegisterCodec {
    /// Registers as they came off the wire (each big-endian on the wire, as libmodbus returns them) → bytes.
    static func wireBytes(_ registers: ArraySlice<UInt16>) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(registers.count * 2)
        for r in registers { out.append(UInt8(r >> 8)); out.append(UInt8(r & 0xFF)) }
        return out
    }

    static func registers(_ bytes: [UInt8]) -> [UInt16] {
        stride(from: 0, to: bytes.count, by: 2).map { UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]) }
    }

    /// Decodes `type` from exactly `type.registerCount` registers (bits: one value, 0 or 1).
    public static func decode(_ registers: ArraySlice<UInt16>, as type: PointType, order: RegisterOrder) -> RawValue {
        switch type {
        case .bool: return .bool(registers.first! != 0)
        case .bit(let n): return .bool(registers.first! >> UInt16(n) & 1 == 1)
        case .string:
            let bytes = order.reorder(wireBytes(registers), words: false)
            var end = bytes.count
            while end > 0 && (bytes[end - 1] == 0 || bytes[end - 1] == 0x20) { end -= 1 }
            let text = bytes[..<end].map { $0 == 0 ? Character(" ") : ($0 < 0x80 ? Character(Unicode.Scalar($0)) : "\u{FFFD}") }
            return .string(String(text))
        default:
            // Straight from the registers, no intermediate arrays (this runs for every point of every poll).
            var u: UInt64 = 0
            let n = registers.count
            for k in 0..<n {
                var r = registers[registers.startIndex + (order.swapWords ? n - 1 - k : k)]
                if order.swapBytes { r = r.byteSwapped }
                u = u << 16 | UInt64(r)
            }
            switch type {
            case .u16, .u32, .u64: return .uint(u)
            case .i16: return .int(Int64(Int16(truncatingIfNeeded: u)))
            case .i32: return .int(Int64(Int32(truncatingIfNeeded: u)))
            case .i64: return .int(Int64(bitPattern: u))
            case .f32: return .float(Double(Float(bitPattern: UInt32(truncatingIfNeeded: u))))
            case .f64: return .float(Double(bitPattern: u))
            default: fatalError("unreachable")
            }
        }
    }

    /// Encodes `value` as registers in the device's order. Integers must fit the type; floats must be finite.
    public static func encode(_ value: RawValue, as type: PointType, order: RegisterOrder) throws(CodecError) -> [UInt16] {
        switch type {
        case .bool:
            guard case .bool(let b) = value else { throw CodecError("needs true or false") }
            return [b ? 1 : 0]
        case .bit:
            throw CodecError("a single bit inside a register cannot be written alone")
        case .string(let n):
            guard case .string(let s) = value else { throw CodecError("needs a string") }
            let utf8 = Array(s.utf8)
            guard utf8.count <= n else { throw CodecError("\"\(s)\" is longer than \(n) bytes") }
            let padded = utf8 + [UInt8](repeating: 0, count: type.registerCount * 2 - utf8.count)
            return registers(order.reorder(padded, words: false))
        default:
            let bits: UInt64
            let width = type.registerCount * 16
            switch (type, value) {
            case (.f32, _):
                guard let d = value.asDouble, d.isFinite, abs(d) <= Double(Float.greatestFiniteMagnitude) else { throw CodecError("needs a finite number") }
                bits = UInt64(Float(d).bitPattern)
            case (.f64, _):
                guard let d = value.asDouble, d.isFinite else { throw CodecError("needs a finite number") }
                bits = d.bitPattern
            case (_, .int(let i)):
                guard let b = fit(signed: i, type: type) else { throw CodecError("\(i) does not fit \(type)") }
                bits = b
            case (_, .uint(let u)):
                guard let b = fit(unsigned: u, type: type) else { throw CodecError("\(u) does not fit \(type)") }
                bits = b
            default:
                throw CodecError("needs a number")
            }
            var be: [UInt8] = []
            for shift in stride(from: width - 8, through: 0, by: -8) { be.append(UInt8(truncatingIfNeeded: bits >> UInt64(shift))) }
            return registers(order.reorder(be))
        }
    }

    private static func fit(signed i: Int64, type: PointType) -> UInt64? {
        switch type {
        case .u16: (0...Int64(UInt16.max)).contains(i) ? UInt64(i) : nil
        case .u32: (0...Int64(UInt32.max)).contains(i) ? UInt64(i) : nil
        case .u64: i >= 0 ? UInt64(i) : nil
        case .i16: (Int64(Int16.min)...Int64(Int16.max)).contains(i) ? UInt64(UInt16(bitPattern: Int16(i))) : nil
        case .i32: (Int64(Int32.min)...Int64(Int32.max)).contains(i) ? UInt64(UInt32(bitPattern: Int32(i))) : nil
        case .i64: UInt64(bitPattern: i)
        default: nil
        }
    }

    private static func fit(unsigned u: UInt64, type: PointType) -> UInt64? {
        if u <= UInt64(Int64.max) { return fit(signed: Int64(u), type: type) }
        return type == .u64 ? u : nil
    }
}
