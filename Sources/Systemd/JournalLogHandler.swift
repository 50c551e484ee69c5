import CSystemd
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// swift-log into the systemd journal with structured fields: `MESSAGE`, `PRIORITY`, `FIELDGATE_COMPONENT` (the
/// module that logged: `Uplink`, `UDPAdapter`, `Spool`, …, or the logger's label) and every metadata key as an upper-case field (`LEAF`, `ADAPTER`, `HUB_ERROR`, …), so
/// `journalctl -u fieldgated LEAF=meter-1` works. Used when stderr is connected to the journal.
public struct JournalLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    private let label: String

    public init(label: String) { self.label = label }

    /// True when systemd connected stderr to the journal (`JOURNAL_STREAM` names stderr's device and inode).
    public static var stderrIsJournal: Bool {
        guard let v = getenv("JOURNAL_STREAM").map({ String(cString: $0) }) else { return false }
        let parts = v.split(separator: ":")
        var st = stat()
        guard parts.count == 2, fstat(2, &st) == 0 else { return false }
        return UInt64(parts[0]) == UInt64(st.st_dev) && UInt64(parts[1]) == UInt64(st.st_ino)
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let explicit = event.metadata
        var fields = [
            "MESSAGE=" + event.message.description,
            "PRIORITY=\(Self.priority(event.level))",
            "FIELDGATE_COMPONENT=" + (event.source.isEmpty ? label : event.source),
        ]
        let all = explicit.map { metadata.merging($0) { $1 } } ?? metadata
        for (key, value) in all {
            guard let name = Self.fieldName(key) else { continue }
            fields.append(name + "=" + "\(value)")
        }
        // One buffer for every field, so each iovec points into memory that lives through the call.
        var buffer: [UInt8] = []
        var ranges: [Range<Int>] = []
        for field in fields {
            let start = buffer.count
            buffer.append(contentsOf: field.utf8)
            ranges.append(start..<buffer.count)
        }
        buffer.withUnsafeMutableBytes { raw in
            guard let base = raw.baseAddress else { return }
            var vectors = ranges.map { iovec(iov_base: base + $0.lowerBound, iov_len: $0.count) }
            _ = sd_journal_sendv(&vectors, Int32(vectors.count))
        }
    }

    /// syslog priorities, as journald expects them.
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// A journal field name: upper case letters, digits and `_`, not starting with `_` (reserved) or a digit.
    public static func fieldName(_ key: String) -> String? {
        let upper = key.uppercased().map { $0.isLetter || $0.isNumber ? $0 : "_" }
        guard let first = upper.first, first != "_", !first.isNumber, upper.count <= 64 else { return nil }
        return String(upper)
    }
}
