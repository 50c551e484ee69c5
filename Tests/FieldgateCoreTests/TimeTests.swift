import FieldgateCore
import HubTestSupport
import Testing

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

@Suite("Wall clock formatting")
struct TimeTests {
    /// The hand-written ISO 8601 writer agrees with Foundation's formatter (and parser) across the whole range it covers
    /// (leap days, centuries, the last millisecond of 9999) and at random instants.
    @Test func iso8601MatchesFoundation() {
        var rng = SplitMix(seed: 0x150_8601)
        let fixed: [Int64] = [0, 1, 999, 1000, 86_399_999, 86_400_000, 951_782_400_000 /* 2000-02-29 */, 4_107_542_400_000 /* 2100-03-01 */,
                              1_764_000_000_123, 253_402_300_799_999]
        for ms in fixed + (0..<20_000).map({ _ in Int64(rng.next() % 253_402_300_800_000) }) {
            let foundation = Date(timeIntervalSince1970: Double(ms) / 1000).formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
            // Foundation formats a Double of seconds and truncates its fraction (0.999 s can print as .998): up to the
            // second the two agree, the milliseconds are the exact ones.
            let ours = WallClock.iso8601(milliseconds: ms)
            #expect(ours.prefix(19) == foundation.prefix(19), "\(ms)")
            #expect(ours.suffix(4) == String(1000 + ms % 1000).suffix(3) + "Z", "\(ms)")
            #expect(WallClock.parseISO8601(WallClock.iso8601(milliseconds: ms)) == ms)
        }
    }
}
