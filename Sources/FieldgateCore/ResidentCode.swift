#if canImport(Glibc)
import Glibc
#endif

/// Gives back the pages of code and read-only data that the daemon's start left mapped.
///
/// The kernel maps file pages in 64 KiB neighbourhoods around each fault, so parsing the configuration, the TLS
/// handshakes and a thousand attaches leave most of a static binary and of libcrypto resident although a running
/// gateway only executes a few megabytes of it. `MADV_DONTNEED` on a private file mapping only removes our page-table
/// entries: the pages stay in the page cache, and what is used again is mapped again on its next touch, from memory.
/// Only mappings that cannot hold private data are touched: file-backed, not writable, and with no anonymous (copied
/// on write, e.g. relocated) page at the moment of the call.
public enum ResidentCode {
    public struct Mapping: Equatable, Sendable {
        public var start: UInt
        public var end: UInt
        public var residentKB: Int

        public init(start: UInt, end: UInt, residentKB: Int) {
            self.start = start
            self.end = end
            self.residentKB = residentKB
        }
    }

    /// The mappings of `/proc/<pid>/smaps` text that may be released: a file path, no `w` permission, no
    /// anonymous pages, something resident.
    public static func releasable(smaps: String) -> [Mapping] {
        var out: [Mapping] = []
        var current: Mapping?
        var eligible = false
        var anonymousKB = 0
        func finish() {
            if let m = current, eligible, anonymousKB == 0, m.residentKB > 0 { out.append(m) }
            current = nil
        }
        for line in smaps.split(separator: "\n", omittingEmptySubsequences: true) {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard let first = fields.first else { continue }
            if let dash = first.firstIndex(of: "-"), fields.count >= 5,
               let start = UInt(first[..<dash], radix: 16), let end = UInt(first[first.index(after: dash)...], radix: 16) {
                finish()
                current = Mapping(start: start, end: end, residentKB: 0)
                anonymousKB = 0
                let permissions = fields[1]
                let path = fields.count >= 6 ? fields[5] : ""
                eligible = path.hasPrefix("/") && !permissions.contains("w") && permissions.hasSuffix("p") && !line.hasSuffix("(deleted)")
            } else if first == "Rss:", fields.count >= 2 {
                current?.residentKB = Int(fields[1]) ?? 0
            } else if first == "Anonymous:", fields.count >= 2 {
                anonymousKB = Int(fields[1]) ?? 1
            }
        }
        finish()
        return out
    }

    /// Releases this process's releasable mappings; returns the kB they had resident.
    @discardableResult
    public static func release() -> Int {
        guard let smaps = StateFile.read("/proc/self/smaps").map({ String(decoding: $0, as: UTF8.self) }) else { return 0 }
        var released = 0
        for m in releasable(smaps: smaps) {
            guard let base = UnsafeMutableRawPointer(bitPattern: m.start) else { continue }
            if madvise(base, Int(m.end - m.start), MADV_DONTNEED) == 0 { released += m.residentKB }
        }
        return released
    }
}
