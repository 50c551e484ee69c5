import CLibCrypto

#if canImport(Glibc)
import Glibc
#endif

/// SHA-256 (FIPS 180-4) through libcrypto, fed in pieces: a downloaded package is checked as it is read, never held
/// whole in memory.
public struct SHA256Digest: ~Copyable {
    private let context: OpaquePointer

    public init() {
        // EVP_MD_CTX_new and EVP_DigestInit_ex only fail on allocation failure.
        guard let c = EVP_MD_CTX_new() else { fatalError("libcrypto: no digest context") }
        precondition(EVP_DigestInit_ex(c, EVP_sha256(), nil) == 1, "libcrypto: SHA-256 unavailable")
        context = c
    }

    deinit { EVP_MD_CTX_free(context) }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return }
        precondition(EVP_DigestUpdate(context, base, bytes.count) == 1, "libcrypto: SHA-256 update failed")
    }

    /// The digest as 64 lowercase hex digits.
    public consuming func hex() -> String {
        var out = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        precondition(EVP_DigestFinal_ex(context, &out, &length) == 1 && length == 32, "libcrypto: SHA-256 final failed")
        let digits = Array("0123456789abcdef".utf8)
        return String(decoding: out.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] }, as: UTF8.self)
    }

    /// The hex digest of `bytes`.
    public static func hex(of bytes: [UInt8]) -> String {
        var d = SHA256Digest()
        bytes.withUnsafeBytes { d.update($0) }
        return d.hex()
    }

    /// The hex digest of the file open at `descriptor`, read from its current offset to its end; nil on a read error.
    public static func hex(ofDescriptor descriptor: Int32) -> String? {
        var d = SHA256Digest()
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { return nil }
            if n == 0 { break }
            buffer.withUnsafeBytes { d.update(UnsafeRawBufferPointer(rebasing: $0[..<n])) }
        }
        return d.hex()
    }
}
