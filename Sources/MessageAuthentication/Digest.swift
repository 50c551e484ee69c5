import CLibCrypto

/// SHA-1 over libcrypto, for the one place a protocol still names it: the WebSocket opening handshake
/// (RFC 6455 §4.2.2, `Sec-WebSocket-Accept`). Not for security.
public enum SHA1 {
    public static func digest(_ message: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 20)
        var length: UInt32 = 0
        let done = message.withUnsafeBytes { m in
            out.withUnsafeMutableBytes { o in
                EVP_Digest(m.baseAddress, m.count, o.baseAddress?.assumingMemoryBound(to: UInt8.self), &length, EVP_sha1(), nil) == 1
            }
        }
        precondition(done && length == 20, "SHA-1 failed in libcrypto")
        return out
    }
}

/// Unpredictable bytes from libcrypto's generator (WebSocket keys and masks, RFC 6455 §10.3).
public enum SecureRandom {
    public static func bytes(_ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        let ok = out.withUnsafeMutableBytes { RAND_bytes($0.baseAddress?.assumingMemoryBound(to: UInt8.self), Int32(count)) == 1 }
        precondition(ok, "RAND_bytes failed in libcrypto")
        return out
    }
}
