/// A strict RFC 8259 JSON scanner over UTF-8 bytes, in two uses:
/// - `JSONValue.parse` builds a value tree from it (Foundation's `JSONDecoder` through `Codable` cost ~60 µs per
///   small document, most of it in thrown and caught type mismatches);
/// - `JSONScanner.members(of:)` validates a document whose top level is an object and returns each member's key and
///   the byte range of its value, so a hot path (UDP ingest: 50k datagrams/s) forwards a nested value as the bytes
///   that came, validated, without building it.
/// Strict: no comments, trailing commas, NaN, leading zeros or unescaped control characters; strings must be valid
/// UTF-8 and `\u` escapes valid UTF-16 (a lone surrogate is an error); nesting is bounded.
public struct JSONScanner {
    public enum Kind: Sendable, Equatable { case object, array, string, number, bool, null }

    /// A top-level member: its (unescaped) key and where its value lies in the scanned bytes.
    public struct Member: Sendable, Equatable {
        public let key: String
        public let kind: Kind
        public let range: Range<Int>
    }

    /// Nesting deeper than this is refused, so hostile input cannot exhaust the stack.
    public static let maxDepth = 256

    private let bytes: UnsafeBufferPointer<UInt8>
    private var i = 0

    private init(_ bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    /// The members of the top-level object in `bytes`; nil when `bytes` is not exactly one valid JSON object.
    /// Duplicate keys are all listed, in order.
    public static func members(of bytes: UnsafeBufferPointer<UInt8>) -> [Member]? {
        var s = JSONScanner(bytes)
        s.skipWhitespace()
        guard s.peek == UInt8(ascii: "{") else { return nil }
        s.i += 1
        var members: [Member] = []
        s.skipWhitespace()
        if s.peek == UInt8(ascii: "}") {
            s.i += 1
        } else {
            while true {
                s.skipWhitespace()
                guard let key = s.string(), s.colon() else { return nil }
                s.skipWhitespace()
                let start = s.i
                guard let kind = s.skipValue(depth: 1) else { return nil }
                members.append(Member(key: key, kind: kind, range: start..<s.i))
                guard let more = s.commaOrEnd(UInt8(ascii: "}")) else { return nil }
                if !more { break }
            }
        }
        return s.atEnd() ? members : nil
    }

    public static func members(of bytes: [UInt8]) -> [Member]? {
        bytes.withUnsafeBufferPointer { members(of: $0) }
    }

    /// The value of one whole document; nil when `bytes` is not exactly one valid JSON value.
    public static func value(of bytes: UnsafeBufferPointer<UInt8>) -> JSONValue? {
        var s = JSONScanner(bytes)
        s.skipWhitespace()
        guard let v = s.value(depth: 0), s.atEnd() else { return nil }
        return v
    }

    /// The string a scanned string token (`kind == .string`, quotes included) stands for.
    public static func string(at range: Range<Int>, in bytes: UnsafeBufferPointer<UInt8>) -> String? {
        var s = JSONScanner(bytes)
        s.i = range.lowerBound
        return s.string()
    }

    /// The number a scanned number token stands for: an integer when it is one that fits 64 bits, else a double.
    public static func number(at range: Range<Int>, in bytes: UnsafeBufferPointer<UInt8>) -> JSONValue? {
        var s = JSONScanner(bytes)
        s.i = range.lowerBound
        return s.number()
    }

    // MARK: scanning

    private var peek: UInt8? { i < bytes.count ? bytes[i] : nil }

    private mutating func skipWhitespace() {
        while i < bytes.count {
            switch bytes[i] {
            case 0x20, 0x09, 0x0A, 0x0D: i += 1
            default: return
            }
        }
    }

    private mutating func atEnd() -> Bool {
        skipWhitespace()
        return i == bytes.count
    }

    private mutating func colon() -> Bool {
        skipWhitespace()
        guard peek == UInt8(ascii: ":") else { return false }
        i += 1
        return true
    }

    /// After a member or element: true on `,` (another follows), false on `close`, nil on anything else.
    private mutating func commaOrEnd(_ close: UInt8) -> Bool? {
        skipWhitespace()
        guard let c = peek else { return nil }
        i += 1
        if c == UInt8(ascii: ",") { return true }
        return c == close ? false : nil
    }

    private mutating func literal(_ word: StaticString) -> Bool {
        let n = word.utf8CodeUnitCount
        guard i + n <= bytes.count else { return false }
        for k in 0..<n where bytes[i + k] != word.utf8Start[k] { return false }
        i += n
        return true
    }

    /// Validates one value and moves past it.
    private mutating func skipValue(depth: Int) -> Kind? {
        guard depth <= Self.maxDepth, let c = peek else { return nil }
        switch c {
        case UInt8(ascii: "{"):
            i += 1
            skipWhitespace()
            if peek == UInt8(ascii: "}") { i += 1; return .object }
            while true {
                skipWhitespace()
                guard peek == UInt8(ascii: "\""), skipString(), colon() else { return nil }
                skipWhitespace()
                guard skipValue(depth: depth + 1) != nil, let more = commaOrEnd(UInt8(ascii: "}")) else { return nil }
                if !more { return .object }
            }
        case UInt8(ascii: "["):
            i += 1
            skipWhitespace()
            if peek == UInt8(ascii: "]") { i += 1; return .array }
            while true {
                skipWhitespace()
                guard skipValue(depth: depth + 1) != nil, let more = commaOrEnd(UInt8(ascii: "]")) else { return nil }
                if !more { return .array }
            }
        case UInt8(ascii: "\""): return skipString() ? .string : nil
        case UInt8(ascii: "t"): return literal("true") ? .bool : nil
        case UInt8(ascii: "f"): return literal("false") ? .bool : nil
        case UInt8(ascii: "n"): return literal("null") ? .null : nil
        default:
            let start = i
            guard skipNumber() else { return nil }
            return isRepresentable(start..<i) ? .number : nil
        }
    }

    /// Whether a number token fits a double, as `number()` requires (found by udp-fuzz: `1e2222` scanned as a
    /// member but did not parse). Only tokens with an exponent or hundreds of digits can overflow.
    private func isRepresentable(_ token: Range<Int>) -> Bool {
        guard token.count > 300 || bytes[token].contains(where: { $0 | 0x20 == UInt8(ascii: "e") }) else { return true }
        return Double(String(decoding: UnsafeBufferPointer(rebasing: bytes[token]), as: UTF8.self))?.isFinite == true
    }

    /// Builds one value and moves past it.
    private mutating func value(depth: Int) -> JSONValue? {
        guard depth <= Self.maxDepth, let c = peek else { return nil }
        switch c {
        case UInt8(ascii: "{"):
            i += 1
            var object: [String: JSONValue] = [:]
            skipWhitespace()
            if peek == UInt8(ascii: "}") { i += 1; return .object(object) }
            while true {
                skipWhitespace()
                guard let key = string(), colon() else { return nil }
                skipWhitespace()
                guard let v = value(depth: depth + 1), let more = commaOrEnd(UInt8(ascii: "}")) else { return nil }
                object[key] = v  // the last of duplicate keys wins
                if !more { return .object(object) }
            }
        case UInt8(ascii: "["):
            i += 1
            var array: [JSONValue] = []
            skipWhitespace()
            if peek == UInt8(ascii: "]") { i += 1; return .array(array) }
            while true {
                skipWhitespace()
                guard let v = value(depth: depth + 1), let more = commaOrEnd(UInt8(ascii: "]")) else { return nil }
                array.append(v)
                if !more { return .array(array) }
            }
        case UInt8(ascii: "\""): return string().map(JSONValue.string)
        case UInt8(ascii: "t"): return literal("true") ? .bool(true) : nil
        case UInt8(ascii: "f"): return literal("false") ? .bool(false) : nil
        case UInt8(ascii: "n"): return literal("null") ? .null : nil
        default: return number()
        }
    }

    // MARK: numbers

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    private mutating func skipNumber() -> Bool {
        if peek == UInt8(ascii: "-") { i += 1 }
        guard let first = peek, first &- UInt8(ascii: "0") < 10 else { return false }
        if first == UInt8(ascii: "0") { i += 1 } else { _ = digits() }
        if peek == UInt8(ascii: ".") {
            i += 1
            guard digits() > 0 else { return false }
        }
        if peek == UInt8(ascii: "e") || peek == UInt8(ascii: "E") {
            i += 1
            if peek == UInt8(ascii: "+") || peek == UInt8(ascii: "-") { i += 1 }
            guard digits() > 0 else { return false }
        }
        return true
    }

    private mutating func digits() -> Int {
        let start = i
        while i < bytes.count, bytes[i] &- UInt8(ascii: "0") < 10 { i += 1 }
        return i - start
    }

    private mutating func number() -> JSONValue? {
        let start = i
        guard skipNumber() else { return nil }
        let token = UnsafeBufferPointer(rebasing: bytes[start..<i])
        var integral = true
        var magnitude: UInt64 = 0
        let negative = token[0] == UInt8(ascii: "-")
        for b in token.dropFirst(negative ? 1 : 0) {
            let d = b &- UInt8(ascii: "0")
            guard d < 10 else { integral = false; break }
            let (m, o1) = magnitude.multipliedReportingOverflow(by: 10)
            let (s, o2) = m.addingReportingOverflow(UInt64(d))
            guard !o1, !o2 else { integral = false; break }
            magnitude = s
        }
        if integral {
            if !negative, magnitude <= UInt64(Int64.max) { return .int(Int64(magnitude)) }
            if negative, magnitude <= UInt64(Int64.max) + 1 { return .int(magnitude == UInt64(Int64.max) + 1 ? .min : -Int64(magnitude)) }
        }
        // Out of range: ±infinity is not a JSON number, so it is refused like Foundation refuses it.
        guard let d = Double(String(decoding: token, as: UTF8.self)), d.isFinite else { return nil }
        return .double(d)
    }

    // MARK: strings

    /// Validates a string token (at its opening quote) and moves past it.
    private mutating func skipString() -> Bool {
        i += 1
        while i < bytes.count {
            let c = bytes[i]
            switch c {
            case UInt8(ascii: "\""):
                i += 1
                return true
            case UInt8(ascii: "\\"):
                guard escape(into: nil) else { return false }
            case 0..<0x20:
                return false
            case 0x80...:
                guard utf8Sequence() else { return false }
            default:
                i += 1
            }
        }
        return false
    }

    /// Decodes a string token (at its opening quote) and moves past it.
    private mutating func string() -> String? {
        guard peek == UInt8(ascii: "\"") else { return nil }
        let start = i + 1
        // Fast path: no escapes — the bytes are the string once validated.
        var j = start
        while j < bytes.count, bytes[j] != UInt8(ascii: "\""), bytes[j] != UInt8(ascii: "\\") { j += 1 }
        if j < bytes.count, bytes[j] == UInt8(ascii: "\"") {
            guard skipString() else { return nil }
            return String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<j]), as: UTF8.self)
        }
        i += 1
        var out: [UInt8] = []
        while i < bytes.count {
            let c = bytes[i]
            switch c {
            case UInt8(ascii: "\""):
                i += 1
                return String(decoding: out, as: UTF8.self)
            case UInt8(ascii: "\\"):
                guard escape(into: &out) else { return nil }
            case 0..<0x20:
                return nil
            case 0x80...:
                let from = i
                guard utf8Sequence() else { return nil }
                out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[from..<i]))
            default:
                out.append(c)
                i += 1
            }
        }
        return nil
    }

    /// One escape sequence at `\`; appends what it stands for (UTF-8) when `out` is given.
    private mutating func escape(into out: UnsafeMutablePointer<[UInt8]>?) -> Bool {
        guard i + 1 < bytes.count else { return false }
        let e = bytes[i + 1]
        i += 2
        let simple: UInt8? = switch e {
        case UInt8(ascii: "\""): 0x22
        case UInt8(ascii: "\\"): 0x5C
        case UInt8(ascii: "/"): 0x2F
        case UInt8(ascii: "b"): 0x08
        case UInt8(ascii: "f"): 0x0C
        case UInt8(ascii: "n"): 0x0A
        case UInt8(ascii: "r"): 0x0D
        case UInt8(ascii: "t"): 0x09
        default: nil
        }
        if let simple {
            out?.pointee.append(simple)
            return true
        }
        guard e == UInt8(ascii: "u"), let unit = hex4() else { return false }
        var scalar = UInt32(unit)
        if (0xD800..<0xDC00).contains(unit) {
            guard i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else { return false }
            i += 2
            guard let low = hex4(), (0xDC00..<0xE000).contains(low) else { return false }
            scalar = 0x10000 + ((UInt32(unit) - 0xD800) << 10) + (UInt32(low) - 0xDC00)
        } else if (0xDC00..<0xE000).contains(unit) {
            return false  // a low surrogate alone
        }
        if let out, let s = Unicode.Scalar(scalar) { UTF8.encode(s) { out.pointee.append($0) } }
        return true
    }

    private mutating func hex4() -> UInt16? {
        guard i + 4 <= bytes.count else { return nil }
        var v: UInt16 = 0
        for k in 0..<4 {
            let c = bytes[i + k]
            let d: UInt8
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = c - UInt8(ascii: "A") + 10
            default: return nil
            }
            v = v << 4 | UInt16(d)
        }
        i += 4
        return v
    }

    /// One well-formed multi-byte UTF-8 sequence at `i` (no overlongs, surrogates or values past U+10FFFF).
    private mutating func utf8Sequence() -> Bool {
        let c = bytes[i]
        let length: Int
        var lower: UInt8 = 0x80, upper: UInt8 = 0xBF
        switch c {
        case 0xC2...0xDF: length = 2
        case 0xE0: length = 3; lower = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: length = 3
        case 0xED: length = 3; upper = 0x9F
        case 0xF0: length = 4; lower = 0x90
        case 0xF1...0xF3: length = 4
        case 0xF4: length = 4; upper = 0x8F
        default: return false
        }
        guard i + length <= bytes.count else { return false }
        guard (lower...upper).contains(bytes[i + 1]) else { return false }
        for k in 2..<max(2, length) where !(0x80...0xBF).contains(bytes[i + k]) { return false }
        i += length
        return true
    }
}
