import Logging
import Synchronization
import Systemd
import Testing

@Suite("log rules: redaction and rate limits")
struct LogPolicyTests {
    @Test func secretsNeverReachALine() {
        let token = "SharedAccessSignature sr=hub%2Fdevices%2Fm1&sig=AbC%2Bdef%3D&se=1700000000"
        #expect(Redaction.redact("put-token \(token) refused") == "put-token SharedAccessSignature sr=hub%2Fdevices%2Fm1&sig=<redacted>&se=1700000000 refused")
        #expect(Redaction.redact("HostName=h;DeviceId=d;SharedAccessKey=c2VjcmV0;x=1") == "HostName=h;DeviceId=d;SharedAccessKey=<redacted>;x=1")
        #expect(Redaction.redact("nothing secret here") == "nothing secret here")
        #expect(Redaction.redact("sig=a sig=b") == "sig=<redacted> sig=<redacted>")
    }

    @Test func aCallSiteIsLimitedPerWindow() {
        let limiter = CallSiteLimiter(burst: 3, windowSeconds: 10)
        let answers = (0..<6).map { limiter.admit(site: "a.swift:1", nowMs: 1000 + Int64($0)) }
        #expect(answers == [0, 0, 0, nil, nil, nil])
        #expect(limiter.admit(site: "b.swift:9", nowMs: 1010) == 0, "other sites are not affected")
        #expect(limiter.admit(site: "a.swift:1", nowMs: 11_001) == 3, "the next window's first line says how many were dropped")
    }

    @Test func theGuardedHandlerAppliesBoth() {
        let sink = Sink()
        let limiter = CallSiteLimiter(burst: 2, windowSeconds: 60)
        let logger = Logger(label: "t") { _ in GuardedLogHandler(sink, limiter: limiter) }
        for _ in 0..<5 { logger.warning("token sig=secret1") }
        #expect(sink.lines.withLock { $0 } == ["token sig=<redacted>", "token sig=<redacted>"])
    }

    @Test func journalFieldNames() {
        #expect(JournalLogHandler.fieldName("leaf") == "LEAF")
        #expect(JournalLogHandler.fieldName("hub_error") == "HUB_ERROR")
        #expect(JournalLogHandler.fieldName("a-b.c") == "A_B_C")
        #expect(JournalLogHandler.fieldName("_private") == nil, "leading _ is journald's own")
        #expect(JournalLogHandler.fieldName("9lives") == nil)
    }
}

/// Collects what reaches the inner handler.
final class Sink: LogHandler, @unchecked Sendable {
    let lines = Mutex<[String]>([])
    var logLevel: Logger.Level = .trace
    var metadata: Logger.Metadata = [:]
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        lines.withLock { $0.append(event.message.description) }
    }
}
