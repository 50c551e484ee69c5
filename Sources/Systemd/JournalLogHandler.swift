import CSystemd
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// swift-log into the systemd journal with structured fields: `MESSAGE`, `PRIORITY`, `FIELDGATE_COMPONENT` (the
/// logger's label) and every metadata key as an upper-case field (`LEAF`, `ADAPTER`, `HUB_ERROR`, …), so
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

    public func log(level: Logger.Level, message: Logger.Message, metadata explicit: Logger.Metadata?, source: String,
                    file: String, function: String, line: UInt) {
        var fields = [
            "MESSAGE=" + message.description,
            "PRIORITY=\(Self.priority(level))",
            "FIELDGATE_COMPONENT=" + label,
        ]
        let all = explicit.map { metadata.merging($0) { $1 } } ?? metadata
        for (key, value) in all {
            guard let name = Self.fieldName(key) else { continue }
            fields.append(name + "=" + "\(value)")
        }
        var storage = fields.map { Array($0.utf8) }
        let count = storage.count
        storage.withUnsafeMutableBufferPointer { items in
            var vectors = items.map { b in iovec(iov_base: UnsafeMutableRawPointer(mutating: b.withUnsafeBytes { $0.baseAddress }), iov_len: b.count) }
            // The arrays' storage stays put while `items` is borrowed, so the pointers above remain valid here.
            _ = sd_journal_sendv(&vectors, Int32(count))
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
