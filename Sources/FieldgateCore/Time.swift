#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Wall-clock helpers. Protocol state machines take their clock as a parameter; these are for the edges.
public enum WallClock {
    /// Milliseconds since the Unix epoch.
    public static func nowMilliseconds() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded()) }

    /// ISO 8601 UTC with milliseconds, as IoT Hub writes `$lastUpdated` (`2026-11-21T20:01:02.345Z`).
    public static func iso8601(milliseconds ms: Int64) -> String {
        let date = Date(timeIntervalSince1970: Double(ms) / 1000)
        return date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }

    public static func iso8601Now() -> String { iso8601(milliseconds: nowMilliseconds()) }

    /// Parses ISO 8601 (with or without fractional seconds) to milliseconds since the epoch.
    public static func parseISO8601(_ s: String) -> Int64? {
        if let d = try? Date(s, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true)) {
            return Int64((d.timeIntervalSince1970 * 1000).rounded())
        }
        if let d = try? Date(s, strategy: Date.ISO8601FormatStyle()) {
            return Int64((d.timeIntervalSince1970 * 1000).rounded())
        }
        return nil
    }
}
