import CSystemd

#if canImport(Glibc)
import Glibc
#endif

/// Which journal entries an excerpt takes.
public struct JournalQuery: Sendable, Equatable {
    /// The unit whose entries are read (`_SYSTEMD_UNIT`): everything fieldgated logged, and what its process wrote
    /// to stderr before the journal handler took over (a crash, a Swift runtime error).
    public var unit: String
    public var sinceMs: Int64
    public var untilMs: Int64
    /// syslog priorities 0 (emerg) … this one (7: debug, everything).
    public var maxPriority = 7
    /// Only entries about this leaf (`LEAF=`).
    public var leaf: String?
    /// The excerpt keeps the newest entries within this many bytes.
    public var maxBytes = 4 << 20

    public init(unit: String, sinceMs: Int64, untilMs: Int64) {
        self.unit = unit
        self.sinceMs = sinceMs
        self.untilMs = untilMs
    }
}

/// Journal entries as JSON lines: `time` (ISO 8601, UTC), `priority`, `message`, then the entry's own fields
/// (`FIELDGATE_COMPONENT`, `LEAF`, `HUB_ERROR`, …) and `_PID`. journald's other trusted fields are left out.
public struct JournalExcerpt: Sendable {
    public var jsonLines: [UInt8]
    public var entries: Int
    /// Older entries were left out to stay within `maxBytes`.
    public var truncated: Bool
}

/// Why the journal could not be read.
public struct JournalError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

public enum Journal {
    /// Reads the local journal (or the journal files in `directory`). Blocking: call it off the cooperative pool.
    public static func read(_ query: JournalQuery, directory: String? = nil) throws(JournalError) -> JournalExcerpt {
        var journal: OpaquePointer?
        let opened = directory.map { sd_journal_open_directory(&journal, $0, 0) } ?? sd_journal_open(&journal, Int32(SD_JOURNAL_LOCAL_ONLY))
        guard opened >= 0, let j = journal else {
            throw JournalError(message: "cannot open the journal: \(String(cString: strerror(-opened)))")
        }
        defer { sd_journal_close(j) }
        // Files the process may not read are skipped without an error: with none at all the excerpt would be empty
        // for no visible reason.
        if directory == nil && sd_journal_has_runtime_files(j) <= 0 && sd_journal_has_persistent_files(j) <= 0 {
            throw JournalError(message: "no journal file is readable by this process (the fieldgate user must be in the systemd-journal group; the package's sysusers.d entry adds it)")
        }
        func match(_ field: String) throws(JournalError) {
            let rc = field.withCString { sd_journal_add_match(j, $0, 0) }
            if rc < 0 { throw JournalError(message: "journal match \(field): \(String(cString: strerror(-rc)))") }
        }
        // Whole fields: the default threshold (64 KiB) cuts a long message, possibly inside a UTF-8 sequence.
        _ = sd_journal_set_data_threshold(j, 0)
        try match("_SYSTEMD_UNIT=\(query.unit)")
        // Matches on one field are alternatives; on different fields all must hold.
        if query.maxPriority < 7 { for p in 0...max(0, query.maxPriority) { try match("PRIORITY=\(p)") } }
        if let leaf = query.leaf { try match("LEAF=\(leaf)") }
        guard sd_journal_seek_realtime_usec(j, UInt64(max(0, query.sinceMs)) * 1000) >= 0 else {
            throw JournalError(message: "cannot seek the journal to \(query.sinceMs)")
        }

        var lines: [[UInt8]] = []
        var first = 0
        var bytes = 0
        var truncated = false
        while sd_journal_next(j) > 0 {
            var usec: UInt64 = 0
            guard sd_journal_get_realtime_usec(j, &usec) >= 0 else { continue }
            if Int64(usec / 1000) > query.untilMs { break }
            let line = entryLine(j, milliseconds: Int64(usec / 1000))
            lines.append(line)
            bytes += line.count
            while bytes > query.maxBytes, first < lines.count {
                bytes -= lines[first].count
                lines[first] = []
                first += 1
                truncated = true
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(bytes)
        for line in lines[first...] { out += line }
        return JournalExcerpt(jsonLines: out, entries: lines.count - first, truncated: truncated)
    }

    /// One entry as a JSON line.
    private static func entryLine(_ j: OpaquePointer, milliseconds: Int64) -> [UInt8] {
        var fields: [(String, String)] = []
        var data: UnsafeRawPointer?
        var length = 0
        sd_journal_restart_data(j)
        while sd_journal_enumerate_data(j, &data, &length) > 0 {
            guard let data else { continue }
            let bytes = UnsafeRawBufferPointer(start: data, count: length)
            guard let eq = bytes.firstIndex(of: UInt8(ascii: "=")) else { continue }
            let name = String(decoding: bytes[..<eq], as: UTF8.self)
            guard !name.hasPrefix("_") || name == "_PID" else { continue }
            guard let value = String(validating: bytes[(eq + 1)...], as: UTF8.self) else { continue }  // binary: left out
            fields.append((name, value))
        }
        var line = "{\"time\":\"\(iso8601(milliseconds))\""
        let byName = Dictionary(fields, uniquingKeysWith: { a, _ in a })
        if let p = byName["PRIORITY"] { line += ",\"priority\":\(Int(p) ?? 6)" }
        line += ",\"message\":" + jsonString(byName["MESSAGE"] ?? "")
        for (name, value) in fields.sorted(by: { $0.0 < $1.0 }) where name != "MESSAGE" && name != "PRIORITY" {
            line += "," + jsonString(name) + ":" + jsonString(value)
        }
        line += "}\n"
        return Array(line.utf8)
    }

    private static func jsonString(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case let c where c.value < 0x20: out += "\\u00" + (c.value < 0x10 ? "0" : "") + String(c.value, radix: 16)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// UTC, milliseconds (no Foundation in this module).
    static func iso8601(_ ms: Int64) -> String {
        var seconds = time_t(ms / 1000)
        var t = tm()
        gmtime_r(&seconds, &t)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let millis = Int(ms % 1000)
        let frac = millis < 10 ? "00\(millis)" : millis < 100 ? "0\(millis)" : "\(millis)"
        return "\(t.tm_year + 1900)-\(two(t.tm_mon + 1))-\(two(t.tm_mday))T\(two(t.tm_hour)):\(two(t.tm_min)):\(two(t.tm_sec)).\(frac)Z"
    }
}
