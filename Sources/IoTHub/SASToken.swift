import MessageAuthentication
import FieldgateCore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A shared access signature token: `SharedAccessSignature sr=…&sig=…&se=…[&skn=…]`
/// (IoT Hub's SAS token format).
///
/// `resource` keeps `sr` exactly as sent, because the signature covers those bytes: the SDKs disagree on
/// URL-encoding and escape case, and a verifier must sign the `sr` as sent (§2.1, conclusion).
public struct SASToken: Sendable, Equatable {
    /// `sr` as it appears in the token (possibly URL-encoded).
    public var resource: String
    /// `sig`, URL-decoded (base64).
    public var signature: String
    /// `se`, seconds since the Unix epoch.
    public var expiry: Int64
    /// `skn`, the shared access policy name; nil for device-key tokens.
    public var keyName: String?

    /// The decoded resource URI (`myhub.azure-devices.net/devices/dev1`).
    public var decodedResource: String { PercentEncoding.decode(resource) ?? resource }

    public init(resource: String, signature: String, expiry: Int64, keyName: String?) {
        self.resource = resource
        self.signature = signature
        self.expiry = expiry
        self.keyName = keyName
    }

    /// Mints a token for `resourceURI` (unencoded, e.g. `hub/devices/dev1`) signed with the base64 `key`.
    /// `sr` is written URL-encoded with upper-case escapes, as the Node and C# SDKs do.
    public static func generate(resourceURI: String, key: String, expiry: Int64, keyName: String? = nil) throws(IoTHubError) -> String {
        let sr = PercentEncoding.encode(resourceURI)
        let sig = try sign(resource: sr, expiry: expiry, key: key)
        var out = "SharedAccessSignature sr=\(sr)&sig=\(PercentEncoding.encode(sig))&se=\(expiry)"
        if let keyName { out += "&skn=\(PercentEncoding.encode(keyName))" }
        return out
    }

    /// base64(HMAC-SHA256(base64decode(key), sr + "\n" + se)).
    public static func sign(resource: String, expiry: Int64, key: String) throws(IoTHubError) -> String {
        guard let keyBytes = Data(base64Encoded: key), !keyBytes.isEmpty else {
            throw IoTHubError(.invalidKey, "the key is not valid base64")
        }
        let mac = HMACSHA256.authenticationCode(for: Array("\(resource)\n\(expiry)".utf8), key: Array(keyBytes))
        return Data(mac).base64EncodedString()
    }

    /// Parses a token as the hub does: exactly `SharedAccessSignature <fields>`, fields split on `&`, names
    /// case-insensitive, `sr`, `sig` and `se` required.
    public static func parse(_ token: String) throws(IoTHubError) -> SASToken {
        let parts = token.split(separator: " ", omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0] == "SharedAccessSignature" else {
            throw IoTHubError(.malformedToken, "the token does not start with 'SharedAccessSignature '")
        }
        var fields: [String: String] = [:]
        for field in parts[1].split(separator: "&") {
            guard let eq = field.firstIndex(of: "=") else {
                throw IoTHubError(.malformedToken, "token field '\(field)' has no value")
            }
            let name = field[..<eq].lowercased()
            guard fields[name] == nil else { throw IoTHubError(.malformedToken, "token field '\(name)' repeats") }
            fields[name] = String(field[field.index(after: eq)...])
        }
        guard let sr = fields["sr"], !sr.isEmpty, let sigRaw = fields["sig"], let seRaw = fields["se"] else {
            throw IoTHubError(.malformedToken, "the token lacks sr, sig or se")
        }
        guard let sig = PercentEncoding.decode(sigRaw), let se = Int64(PercentEncoding.decode(seRaw) ?? "") else {
            throw IoTHubError(.malformedToken, "the token's sig or se is malformed")
        }
        let skn = fields["skn"].flatMap { PercentEncoding.decode($0) }
        return SASToken(resource: sr, signature: sig, expiry: se, keyName: skn)
    }

    /// True when `sig` is the signature of this token's `sr` and `se` under `key` (constant-time compare).
    public func isSigned(with key: String) -> Bool {
        guard let expected = try? SASToken.sign(resource: resource, expiry: expiry, key: key) else { return false }
        let a = Array(expected.utf8), b = Array(signature.utf8)
        guard a.count == b.count else { return false }
        var diff: UInt8 = 0
        for i in 0..<a.count { diff |= a[i] ^ b[i] }
        return diff == 0
    }
}

/// Key derivation for DPS symmetric-key group enrollments: base64(HMAC-SHA256(base64decode(groupKey), id)).
public func deriveDeviceKey(groupKey: String, registrationID: String) throws(IoTHubError) -> String {
    guard let keyBytes = Data(base64Encoded: groupKey), !keyBytes.isEmpty else {
        throw IoTHubError(.invalidKey, "the group key is not valid base64")
    }
    let mac = HMACSHA256.authenticationCode(for: Array(registrationID.utf8), key: Array(keyBytes))
    return Data(mac).base64EncodedString()
}

/// DPS registration ids: 1–128 characters, lowercase letters, digits and `-._:`, not starting or ending with a
/// special character. fieldgated checks its device ids by it; fieldgate-hub's DPS enforces it.
public func isValidRegistrationID(_ id: String) -> Bool {
    let special: Set<Character> = ["-", ".", "_", ":"]
    guard (1...128).contains(id.count), let first = id.first, let last = id.last,
          !special.contains(first), !special.contains(last) else { return false }
    return id.allSatisfy { ($0.isASCII && ($0.isLowercase || $0.isNumber)) || special.contains($0) }
}

/// True when `key` is non-empty base64, usable as a symmetric key.
public func isValidSymmetricKey(_ key: String) -> Bool {
    guard let bytes = Data(base64Encoded: key) else { return false }
    return !bytes.isEmpty
}

/// A fresh random base64 key of 32 bytes, as the hub generates for new devices.
public func generateSymmetricKey() -> String {
    var g = SystemRandomNumberGenerator()
    return Data((0..<32).map { _ in UInt8.random(in: 0...255, using: &g) }).base64EncodedString()
}

/// RFC 3986 percent-encoding. Decoding never turns `+` into a space: `+` is a legal device-id character
/// (docs/iothub-protocol.md §2.2).
public enum PercentEncoding {
    private static let unreserved = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~".utf8)

    public static func encode(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            if unreserved.contains(b) { out.unicodeScalars.append(Unicode.Scalar(b)) }
            else { out += "%" + String(b, radix: 16, uppercase: true).leftPadded(to: 2) }
        }
        return out
    }

    /// nil when an escape is malformed.
    public static func decode(_ s: String) -> String? {
        var bytes: [UInt8] = []
        var it = Array(s.utf8)[...]
        while let b = it.popFirst() {
            if b == UInt8(ascii: "%") {
                guard let h = it.popFirst(), let l = it.popFirst(),
                      let hv = Character(Unicode.Scalar(h)).hexDigitValue, let lv = Character(Unicode.Scalar(l)).hexDigitValue
                else { return nil }
                bytes.append(UInt8(hv << 4 | lv))
            } else {
                bytes.append(b)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }
}

