import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Wraps any log handler with the daemon's two log rules (issue 8, part 3):
/// - **rate limiting**: a call site (file + line) may log `burst` lines per `windowSeconds`; the rest are counted
///   and summed up in the next line that site logs, so a flapping device cannot flood the journal;
/// - **redaction**: SAS signatures and shared access keys never reach a log line, whoever wrote the message.
public struct GuardedLogHandler: LogHandler {
    private var inner: any LogHandler
    private let limiter: CallSiteLimiter

    public init(_ inner: any LogHandler, limiter: CallSiteLimiter) {
        self.inner = inner
        self.limiter = limiter
    }

    public var logLevel: Logger.Level {
        get { inner.logLevel }
        set { inner.logLevel = newValue }
    }

    public var metadata: Logger.Metadata {
        get { inner.metadata }
        set { inner.metadata = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { inner[metadataKey: key] }
        set { inner[metadataKey: key] = newValue }
    }

    public func log(event: LogEvent) {
        guard let suppressed = limiter.admit(site: "\(event.file):\(event.line)", nowMs: Int64(time(nil)) * 1000) else { return }
        var text = Redaction.redact(event.message.description)
        if suppressed > 0 { text += " (\(suppressed) similar lines suppressed)" }
        var guarded = event
        guarded.message = "\(text)"
        inner.log(event: guarded)
    }
}

/// Per-call-site token counting, shared by every logger of the process.
public final class CallSiteLimiter: Sendable {
    private struct Site { var windowStartMs: Int64; var count: Int; var suppressed: Int }
    private let sites = Mutex<[String: Site]>([:])
    let burst: Int
    let windowMs: Int64

    public init(burst: Int = 10, windowSeconds: Int64 = 10) {
        self.burst = burst
        self.windowMs = windowSeconds * 1000
    }

    /// nil: drop this line. Otherwise how many lines of this site were dropped since the last one written.
    public func admit(site: String, nowMs: Int64) -> Int? {
        sites.withLock { s -> Int? in
            var entry = s[site] ?? Site(windowStartMs: nowMs, count: 0, suppressed: 0)
            if nowMs - entry.windowStartMs >= windowMs { entry.windowStartMs = nowMs; entry.count = 0 }
            defer { s[site] = entry }
            guard entry.count < burst else { entry.suppressed += 1; return nil }
            entry.count += 1
            let dropped = entry.suppressed
            entry.suppressed = 0
            return dropped
        }
    }
}

/// Removes secrets from text: the signature of a SAS token (`sig=…`) and connection-string keys
/// (`SharedAccessKey=…`), up to the next separator.
public enum Redaction {
    static let markers = ["sig=", "SharedAccessKey=", "sharedaccesskey="]

    public static func redact(_ text: String) -> String {
        guard markers.contains(where: { text.contains($0) }) else { return text }
        var out = ""
        var rest = Substring(text)
        while let (range, marker) = markers.compactMap({ m in rest.firstRange(of: m).map { ($0, m) } }).min(by: { $0.0.lowerBound < $1.0.lowerBound }) {
            out += String(rest[..<range.lowerBound]) + marker + "<redacted>"
            rest = rest[range.upperBound...].drop { !Self.isSeparator($0) }
        }
        return out + rest
    }

    private static func isSeparator(_ c: Character) -> Bool { c == "&" || c == ";" || c == "\"" || c == "'" || c.isWhitespace || c == "," }
}
