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
    /// Years 1970–9999 are written by hand (the uplink stamps every message, and a formatter per message cost more
    /// than the rest of its encoding); others go through Foundation.
    public static func iso8601(milliseconds ms: Int64) -> String {
        guard (0...iso8601LatestMilliseconds).contains(ms) else {
            let date = Date(timeIntervalSince1970: Double(ms) / 1000)
            return date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
        }
        return String(unsafeUninitializedCapacity: iso8601Length) { buffer in
            writeISO8601(milliseconds: ms, to: UnsafeMutableRawPointer(buffer.baseAddress!))
            return iso8601Length
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`
    public static let iso8601Length = 24
    /// 9999-12-31T23:59:59.999Z
    public static let iso8601LatestMilliseconds: Int64 = 253_402_300_799_999

    /// Writes the `iso8601Length` bytes of `ms` (0...`iso8601LatestMilliseconds`) at `out`: the civil date from the
    /// day count (proleptic Gregorian, as ISO 8601 and Foundation count).
    public static func writeISO8601(milliseconds ms: Int64, to out: UnsafeMutableRawPointer) {
        precondition((0...iso8601LatestMilliseconds).contains(ms), "iso8601: \(ms) ms is outside 1970–9999")
        let days = ms / 86_400_000
        let msOfDay = Int(ms % 86_400_000)
        // Days since 1970-01-01 → year, month, day (eras of 400 years from 0000-03-01).
        let z = days + 719_468
        let era = z / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = Int(dayOfYear - (153 * mp + 2) / 5 + 1)
        let month = Int(mp < 10 ? mp + 3 : mp - 9)
        let year = Int(yearOfEra + era * 400 + (month <= 2 ? 1 : 0))
        let p = out.assumingMemoryBound(to: UInt8.self)
        func digits(_ value: Int, _ count: Int, at offset: Int) {
            var v = value
            for i in stride(from: offset + count - 1, through: offset, by: -1) {
                p[i] = UInt8(truncatingIfNeeded: 48 + v % 10)
                v /= 10
            }
        }
        digits(year, 4, at: 0); p[4] = UInt8(ascii: "-")
        digits(month, 2, at: 5); p[7] = UInt8(ascii: "-")
        digits(day, 2, at: 8); p[10] = UInt8(ascii: "T")
        digits(msOfDay / 3_600_000, 2, at: 11); p[13] = UInt8(ascii: ":")
        digits(msOfDay / 60_000 % 60, 2, at: 14); p[16] = UInt8(ascii: ":")
        digits(msOfDay / 1000 % 60, 2, at: 17); p[19] = UInt8(ascii: ".")
        digits(msOfDay % 1000, 3, at: 20); p[23] = UInt8(ascii: "Z")
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
