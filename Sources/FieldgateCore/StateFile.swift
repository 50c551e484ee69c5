#if canImport(Glibc)
import Glibc
#endif

/// A small file of state kept across restarts, replaced whole: written to `path.new`, then renamed over `path`,
/// so a reader (or a restart after kill -9) sees the old content or the new, never a mix. Not fsynced: it is
/// written often and a power cut may take the last few seconds (ext4 flushes a file renamed over another).
/// Blocking: call it off the cooperative pool.
public enum StateFile {
    /// The file's bytes; nil when it does not exist or cannot be read.
    public static func read(_ path: String) -> [UInt8]? { read(path, at: nil) }

    /// The file's bytes if it is a regular file of at most `limit` bytes, not reached through a symbolic link (for
    /// files another user writes); else nil.
    public static func read(_ path: String, limit: Int) -> [UInt8]? { read(path, at: limit) }

    private static func read(_ path: String, at limit: Int?) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC | (limit == nil ? 0 : O_NOFOLLOW | O_NONBLOCK))
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        if let limit {
            var info = stat()
            guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_size <= limit else { return nil }
        }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16_384)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return n == 0 ? out : nil }
            out += chunk[0..<n]
        }
    }

    /// Replaces the file with `bytes` (mode 0640 unless `mode` says otherwise). Returns the errno on failure. `durable`: the file and its directory
    /// entry are on disk when this returns (fdatasync, rename, fsync of the directory), for content that exists nowhere
    /// else.
    @discardableResult
    public static func replace(_ path: String, with bytes: [UInt8], durable: Bool = false, mode: mode_t = 0o640) -> Int32? {
        let temporary = path + ".new"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode)
        guard fd >= 0 else { return errno }
        if mode != 0o640 { fchmod(fd, mode) }  // the umask may have narrowed it
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, bytes.count - done) }
            if n < 0 {
                if errno == EINTR { continue }
                let e = errno
                close(fd)
                unlink(temporary)
                return e
            }
            done += n
        }
        if durable && fdatasync(fd) != 0 {
            let e = errno
            close(fd)
            unlink(temporary)
            return e
        }
        close(fd)
        guard rename(temporary, path) == 0 else {
            let e = errno
            unlink(temporary)
            return e
        }
        if durable {
            let slash = path.lastIndex(of: "/").map { path[..<$0] } ?? "."
            let dir = open(slash.isEmpty ? "/" : String(slash), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard dir >= 0 else { return errno }
            defer { close(dir) }
            if fsync(dir) != 0 { return errno }
        }
        return nil
    }
}
