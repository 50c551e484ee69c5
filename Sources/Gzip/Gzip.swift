internal import CZlib

/// gzip (RFC 1952) through zlib, the library every Linux system has: what the gateway compresses before it uploads
/// a file (logs, backlogs), so the cloud side opens it with any tool.
public enum Gzip {
    /// `bytes` compressed at zlib's default level.
    public static func compress(_ bytes: [UInt8]) -> [UInt8] {
        var stream = z_stream()
        guard fg_deflate_init_gzip(&stream, Z_DEFAULT_COMPRESSION) == Z_OK else { fatalError("zlib: deflateInit2 failed (out of memory)") }
        defer { deflateEnd(&stream) }
        var out = [UInt8](repeating: 0, count: Int(deflateBound(&stream, uLong(bytes.count))) + 32)
        let produced: Int = bytes.withUnsafeBytes { input in
            out.withUnsafeMutableBytes { output in
                stream.next_in = UnsafeMutablePointer(mutating: input.bindMemory(to: Bytef.self).baseAddress)
                stream.avail_in = uInt(input.count)
                stream.next_out = output.bindMemory(to: Bytef.self).baseAddress
                stream.avail_out = uInt(output.count)
                // deflateBound leaves room for everything: one call finishes.
                precondition(deflate(&stream, Z_FINISH) == Z_STREAM_END, "zlib: deflate did not finish within deflateBound")
                return output.count - Int(stream.avail_out)
            }
        }
        out.removeLast(out.count - produced)
        return out
    }

    /// The content of a gzip file (its members one after another), or nil when it is not gzip, is damaged, or
    /// would be longer than `limit`.
    public static func decompress(_ bytes: [UInt8], limit: Int) -> [UInt8]? {
        var stream = z_stream()
        guard fg_inflate_init_gzip(&stream) == Z_OK else { return nil }
        defer { inflateEnd(&stream) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        return bytes.withUnsafeBytes { input -> [UInt8]? in
            stream.next_in = UnsafeMutablePointer(mutating: input.bindMemory(to: Bytef.self).baseAddress)
            stream.avail_in = uInt(input.count)
            while true {
                let (rc, produced) = chunk.withUnsafeMutableBytes { output -> (Int32, Int) in
                    stream.next_out = output.bindMemory(to: Bytef.self).baseAddress
                    stream.avail_out = uInt(output.count)
                    let rc = inflate(&stream, Z_NO_FLUSH)
                    return (rc, output.count - Int(stream.avail_out))
                }
                out += chunk[..<produced]
                guard out.count <= limit else { return nil }
                switch rc {
                case Z_STREAM_END:
                    if stream.avail_in == 0 { return out }
                    guard inflateReset(&stream) == Z_OK else { return nil }  // another member follows
                case Z_OK:
                    continue
                case Z_BUF_ERROR where stream.avail_in == 0:
                    return nil  // truncated
                default:
                    return nil
                }
            }
        }
    }
}
