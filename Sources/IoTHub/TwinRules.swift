import FieldgateCore

/// The twin document rules of IoT Hub (docs/iothub-protocol.md §7.5), checked by the hub on every write and by the
/// gateway before it sends a reported patch.
public enum TwinRules {
    public static let maxSectionBytes = 8 * 1024
    public static let maxDepth = 5
    public static let maxKeyBytes = 64
    public static let maxStringBytes = 512
    public static let maxInteger: Int64 = 4_503_599_627_370_495
    public static let minInteger: Int64 = -4_503_599_627_370_496

    /// Validates a patch for `properties.reported` or `properties.desired` (null values allowed: they delete).
    /// Throws a `.twinRule` error naming the first violation.
    public static func validatePatch(_ patch: JSONValue) throws(IoTHubError) {
        guard case .object(let root) = patch else { throw IoTHubError(.twinRule, "a twin patch must be a JSON object") }
        for (key, value) in root {
            try validate(key: key, path: key)
            try validate(value, depth: 1, path: key)
        }
        let size = sectionSize(patch)
        if size > maxSectionBytes {
            throw IoTHubError(.twinRule, "the patch is \(size) bytes, more than the \(maxSectionBytes) bytes a twin section may hold")
        }
    }

    /// The size IoT Hub counts: every character except control characters and whitespace outside strings.
    public static func sectionSize(_ value: JSONValue) -> Int {
        value.serialized.utf8.count  // compact serialization has no whitespace outside strings
    }

    private static func validate(key: String, path: String) throws(IoTHubError) {
        if key.isEmpty { throw IoTHubError(.twinRule, "empty key at '\(path)'") }
        if key.utf8.count > maxKeyBytes { throw IoTHubError(.twinRule, "key '\(path)' is longer than \(maxKeyBytes) bytes") }
        for scalar in key.unicodeScalars {
            if scalar.value < 0x20 || scalar == "." || scalar == "$" || scalar == " " {
                throw IoTHubError(.twinRule, "key '\(path)' contains a character twin keys may not hold ('.', '$', space or control)")
            }
        }
    }

    private static func validate(_ value: JSONValue, depth: Int, path: String) throws(IoTHubError) {
        switch value {
        case .array:
            throw IoTHubError(.twinRule, "'\(path)' is an array; twin properties may not hold arrays")
        case .string(let s) where s.utf8.count > maxStringBytes:
            throw IoTHubError(.twinRule, "'\(path)' is a string longer than \(maxStringBytes) bytes")
        case .int(let i) where i > maxInteger || i < minInteger:
            throw IoTHubError(.twinRule, "'\(path)' is an integer outside the range a twin may hold")
        case .object(let o):
            if depth >= maxDepth { throw IoTHubError(.twinRule, "'\(path)' nests deeper than \(maxDepth) levels") }
            for (k, v) in o {
                try validate(key: k, path: path + "." + k)
                try validate(v, depth: depth + 1, path: path + "." + k)
            }
        default:
            break
        }
    }

    /// JSON merge patch: objects merge recursively, `null` deletes, anything else replaces.
    public static func merge(_ patch: JSONValue, into target: JSONValue) -> JSONValue {
        guard case .object(let p) = patch else { return patch }
        var result = target.objectValue ?? [:]
        for (k, v) in p {
            if v == .null { result[k] = nil }
            else if case .object = v { result[k] = merge(v, into: result[k] ?? .object([:])) }
            else { result[k] = v }
        }
        return .object(result)
    }

    /// One patch with the effect of `first` then `second` (last write wins per path; a `null` in `second` still
    /// deletes). Used to fold reported patches queued while a leaf is offline into one.
    public static func compose(_ first: JSONValue, then second: JSONValue) -> JSONValue {
        guard case .object(let b) = second, case .object(var result) = first else { return second }
        for (k, v) in b {
            if case .object = v, case .object? = result[k] {
                result[k] = compose(result[k]!, then: v)
            } else {
                result[k] = v
            }
        }
        return .object(result)
    }
}
