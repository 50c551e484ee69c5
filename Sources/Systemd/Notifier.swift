import CSystemd

#if canImport(Glibc)
import Glibc
#endif

/// The systemd notification protocol (sd_notify(3)), from the service's side. Without `NOTIFY_SOCKET` every call
/// is a no-op, so the daemon runs the same way by hand, in tests and under systemd.
public struct SystemdNotifier: Sendable {
    public init() {}

    /// True when a supervisor listens (systemd, or a test's socket).
    public var isSupervised: Bool { getenv("NOTIFY_SOCKET") != nil }

    /// How often systemd expects `WATCHDOG=1` (half of `WatchdogSec`, as sd_watchdog_enabled(3) advises);
    /// nil when the watchdog is off or meant for another process.
    public var watchdogPingMilliseconds: Int64? {
        var usec: UInt64 = 0
        guard sd_watchdog_enabled(0, &usec) > 0, usec > 0 else { return nil }
        return Int64(usec / 2000)
    }

    /// Sends `fields` (`KEY=value`, one per line) in one datagram. False when nobody listens or sending failed.
    @discardableResult
    public func notify(_ fields: [String]) -> Bool {
        // Newlines separate fields: a status text must not smuggle in another field.
        let text = fields.map { $0.replacingNewlines() }.joined(separator: "\n")
        return sd_notify(0, text) > 0
    }

    @discardableResult public func ready(status: String) -> Bool { notify(["READY=1", "STATUS=" + status]) }
    @discardableResult public func status(_ text: String) -> Bool { notify(["STATUS=" + text]) }
    @discardableResult public func watchdog() -> Bool { notify(["WATCHDOG=1"]) }
    @discardableResult public func stopping(status: String = "stopping") -> Bool { notify(["STOPPING=1", "STATUS=" + status]) }

    /// `RELOADING=1` with the monotonic timestamp systemd ≥ 253 wants for Type=notify-reload (older ignores it).
    @discardableResult public func reloading(status: String = "reloading") -> Bool {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        let usec = UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1000
        return notify(["RELOADING=1", "MONOTONIC_USEC=\(usec)", "STATUS=" + status])
    }
}

extension String {
    fileprivate func replacingNewlines() -> String {
        guard contains(where: \.isNewline) else { return self }
        return String(map { $0.isNewline ? " " : $0 })
    }
}
