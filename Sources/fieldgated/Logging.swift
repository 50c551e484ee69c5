import Logging
import Systemd

/// Where the daemon's logs go: the journal with structured fields under systemd, stderr otherwise; both through
/// the rate limit and redaction of `GuardedLogHandler`.
enum DaemonLogging {
    static func bootstrap(level: Logger.Level) {
        let limiter = CallSiteLimiter()
        let journal = JournalLogHandler.stderrIsJournal
        LoggingSystem.bootstrap { label in
            var inner: any LogHandler = journal ? JournalLogHandler(label: label) : StreamLogHandler.standardError(label: label)
            inner.logLevel = level
            return GuardedLogHandler(inner, limiter: limiter)
        }
    }
}
