/// IoT Hub's rules for what a device-to-cloud message may carry (docs/message-rules.md), applied where readings
/// enter the gateway and again when they are encoded, so the hub never refuses a reading for its format:
///
/// - Application property names: ASCII letters, digits and `! # $ % & ' * + - . ^ _ ` | ~` (HTTP token
///   characters). A name with other bytes is percent-escaped (`bad key` → `bad%20key`, `über` → `%C3%BCber`).
/// - Values: printable ASCII (0x20–0x7E); other bytes are percent-escaped (`°C` → `%C2%B0C`, a tab → `%09`).
/// - Names starting with `$` (the hub reads them as system properties in routing) and names starting with
///   `iothub-` (the hub's own, e.g. `iothub-connection-device-id`) are dropped: a leaf must not spoof them.
/// - Names that differ only by case (routing matches them case-insensitively and keeps one): the first in byte
///   order is kept, the others dropped.
/// - Creation time (`iothub-creation-time-utc`, the acquisition time): 1970-01-01 up to 9999-12-31 (ISO 8601 has
///   four year digits); readings outside are refused at ingest.
/// - Size: body + system property values + property names and values ≤ 256 KB (`hubSize`).
public enum MessageRules {
    /// What was done to a reading's properties, counted per leaf and reason.
    public enum Fix: String, Sendable, Hashable, CaseIterable {
        /// A name had bytes outside the allowed set and was percent-escaped.
        case escapedName = "escaped_name"
        /// A value had bytes outside printable ASCII and was percent-escaped.
        case escapedValue = "escaped_value"
        /// A `$…` or `iothub-…` name, or an empty one, was dropped.
        case reservedName = "reserved_name"
        /// A name equal to another but for case was dropped.
        case duplicateName = "duplicate_name"
    }

    private static let nameTable: [Bool] = {
        var t = [Bool](repeating: false, count: 128)
        for b in UInt8(ascii: "a")...UInt8(ascii: "z") { t[Int(b)] = true }
        for b in UInt8(ascii: "A")...UInt8(ascii: "Z") { t[Int(b)] = true }
        for b in UInt8(ascii: "0")...UInt8(ascii: "9") { t[Int(b)] = true }
        for b in "!#$%&'*+-.^_`|~".utf8 { t[Int(b)] = true }
        return t
    }()

    public static func isValidName(_ name: String) -> Bool {
        bytes(of: name) { isValidName($0) }
    }

    public static func isValidValue(_ value: String) -> Bool {
        bytes(of: value) { isValidValue($0) }
    }

    /// `isValidName && !isReservedName` on bytes, for the encoder's path where nothing is decoded.
    public static func isAcceptableName(_ name: UnsafeRawBufferPointer) -> Bool {
        isValidName(name) && !isReservedName(name)
    }

    private static func isValidName(_ name: UnsafeRawBufferPointer) -> Bool {
        guard !name.isEmpty else { return false }
        for b in name where b >= 128 || !nameTable[Int(b)] { return false }
        return true
    }

    private static func isReservedName(_ name: UnsafeRawBufferPointer) -> Bool {
        name.first == UInt8(ascii: "$") || hasReservedPrefix(name)
    }

    private static func bytes(of s: String, _ body: (UnsafeRawBufferPointer) -> Bool) -> Bool {
        var s = s
        return s.withUTF8 { body(UnsafeRawBufferPointer($0)) }
    }

    /// The byte form of `isValidValue`.
    public static func isValidValue(_ value: UnsafeRawBufferPointer) -> Bool {
        for b in value where b < 0x20 || b >= 0x7F { return false }
        return true
    }

    /// Whether two names differ only by ASCII case (routing would keep only one).
    public static func equalIgnoringCase(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
        guard a.count == b.count else { return false }
        for i in 0..<a.count where a[i] | 0x20 != b[i] | 0x20 || (a[i] != b[i] && !isLetter(a[i])) { return false }
        return true
    }

    private static func isLetter(_ b: UInt8) -> Bool { (b | 0x20) >= UInt8(ascii: "a") && (b | 0x20) <= UInt8(ascii: "z") }

    private static func hasReservedPrefix(_ name: UnsafeRawBufferPointer) -> Bool {
        let prefix = "iothub-".utf8
        guard name.count >= prefix.count else { return false }
        for (i, p) in prefix.enumerated() where name[i] | 0x20 != p | 0x20 || (name[i] != p && !isLetter(p)) { return false }
        return true
    }

    /// Names a leaf may not set: the hub's system properties as routing sees them, and the hub's own (`iothub-` in
    /// any ASCII case).
    public static func isReservedName(_ name: String) -> Bool {
        bytes(of: name) { isReservedName($0) }
    }

    private static func escape(_ s: String, keeping allowed: (UInt8) -> Bool) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(s.utf8.count + 8)
        for b in s.utf8 {
            if allowed(b) { out.append(b) } else { out += [UInt8(ascii: "%"), hex[Int(b >> 4)], hex[Int(b & 0xF)]] }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The properties as the hub will take them, and what had to be done.
    public static func sanitize(_ properties: [String: String]) -> (properties: [String: String], fixes: [Fix]) {
        if properties.allSatisfy({ isValidName($0.key) && isValidValue($0.value) && !isReservedName($0.key) }) {
            // The common case (it runs for every message sent): nothing to do, unless two names differ only by case.
            if properties.count < 2 || Set(properties.keys.map { $0.lowercased() }).count == properties.count { return (properties, []) }
        }
        var out: [String: String] = [:]
        var fixes: [Fix] = []
        var seen: Set<String> = []
        for (name, value) in properties.sorted(by: { Array($0.key.utf8).lexicographicallyPrecedes(Array($1.key.utf8)) }) {
            var n = name
            if !isValidName(n) {
                n = escape(n) { $0 < 128 && nameTable[Int($0)] }
                if !n.isEmpty { fixes.append(.escapedName) }
            }
            if n.isEmpty || isReservedName(n) {
                fixes.append(.reservedName)
                continue
            }
            guard seen.insert(n.lowercased()).inserted else {
                fixes.append(.duplicateName)
                continue
            }
            var v = value
            if !isValidValue(v) {
                v = escape(v) { $0 >= 0x20 && $0 < 0x7F }
                fixes.append(.escapedValue)
            }
            out[n] = v
        }
        return (out, fixes)
    }

    /// 1970-01-01T00:00:00Z: a gateway without a real-time clock reads 1970 until it synchronizes, and its readings
    /// must still go out (stamped as they were taken).
    public static let earliestCreationTimeMilliseconds: Int64 = 0
    /// 9999-12-31T23:59:59.999Z.
    public static let latestCreationTimeMilliseconds: Int64 = 253_402_300_799_999

    public static func isPlausibleCreationTime(_ ms: Int64) -> Bool {
        (earliestCreationTimeMilliseconds...latestCreationTimeMilliseconds).contains(ms)
    }

    /// The hub's measure: body + system property values + application property names and values, in bytes.
    public static func hubSize(body: Int, systemValues: [String], properties: [String: String]) -> Int {
        body + systemValues.reduce(0) { $0 + $1.utf8.count } + properties.reduce(0) { $0 + $1.key.utf8.count + $1.value.utf8.count }
    }

    /// The most a D2C message (or batch) may measure: 256 KB.
    public static let maxMessageSize = 256 * 1024
}
