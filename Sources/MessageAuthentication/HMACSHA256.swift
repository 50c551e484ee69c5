import CLibCrypto

/// HMAC-SHA256 (RFC 2104) over OpenSSL's libcrypto — the only code that touches it. Used for SAS token
/// signatures, DPS group key derivation and signed UDP datagrams.
public enum HMACSHA256 {
    public static let byteCount = 32

    /// The 32-byte authentication code of `message` under `key`.
    public static func authenticationCode(for message: [UInt8], key: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: byteCount)
        var length: UInt32 = 0
        let done = key.withUnsafeBytes { k in
            message.withUnsafeBytes { m in
                out.withUnsafeMutableBytes { o in
                    // HMAC() only fails on allocation failure or an unavailable digest; both are fatal for us.
                    HMAC(EVP_sha256(), k.baseAddress, Int32(k.count), m.baseAddress?.assumingMemoryBound(to: UInt8.self), m.count,
                         o.baseAddress?.assumingMemoryBound(to: UInt8.self), &length) != nil
                }
            }
        }
        precondition(done && length == UInt32(byteCount), "HMAC-SHA256 failed in libcrypto")
        return out
    }

    /// True when `code` is the authentication code of `message` under `key`, compared in constant time.
    public static func isValid(_ code: [UInt8], for message: [UInt8], key: [UInt8]) -> Bool {
        guard code.count == byteCount else { return false }
        let expected = authenticationCode(for: message, key: key)
        return expected.withUnsafeBytes { e in code.withUnsafeBytes { c in CRYPTO_memcmp(e.baseAddress, c.baseAddress, byteCount) == 0 } }
    }
}
