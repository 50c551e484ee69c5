/// The set of acknowledged sequences. Pure value.
///
/// A bitmap from `base` up: one bit per sequence of the live segments. As ranges (16 bytes each) it grew to 5 MB
/// while 1000 leaves drained a 1 M backlog, their acknowledgements interleaved one by one; as bits, a million
/// sequences take 125 KB whatever the pattern. Sequences below `base` (their segments are gone) are not kept.
public struct AckSet: Sendable, Equatable {
    /// The first sequence `words[0]` covers (a multiple of 64).
    private var base: UInt64 = 0
    private var words: [UInt64] = []
    /// The most a set spans above its base: 2^28 sequences (32 MB of bits), far beyond any spool's records; an
    /// acknowledgement past it (only a corrupt ledger could claim one) is not kept, so that record is redelivered.
    static let maxSpan: UInt64 = 1 << 28

    public init() {}

    /// The sorted disjoint ranges (for the ledger file).
    public var ranges: [ClosedRange<UInt64>] { collectRanges(limit: .max) }

    /// How many ranges the set has, counting no further than `limit`.
    public func rangeCount(upTo limit: Int) -> Int { collectRanges(limit: limit).count }

    /// Bytes the bitmap holds (its memory, for tests and figures).
    public var storageBytes: Int { words.capacity * 8 }

    public func contains(_ s: UInt64) -> Bool {
        guard s >= base else { return false }
        let bit = s - base
        guard bit < UInt64(words.count) * 64 else { return false }
        return words[Int(bit / 64)] & (1 << (bit % 64)) != 0
    }

    public mutating func insert(_ r: ClosedRange<UInt64>) {
        if words.isEmpty {
            base = r.lowerBound & ~63
        } else if r.lowerBound < base {
            // Acknowledgements come in any order: an older record's may follow a newer one's.
            let newBase = r.lowerBound & ~63
            let end = base + UInt64(words.count) * 64
            if end - newBase <= Self.maxSpan {
                words.insert(contentsOf: repeatElement(0, count: Int((base - newBase) / 64)), at: 0)
                base = newBase
            }
        }
        let lower = max(r.lowerBound, base)
        guard lower <= r.upperBound, lower - base < Self.maxSpan else { return }
        let upper = min(r.upperBound, base + Self.maxSpan - 1)
        let lastWord = Int((upper - base) / 64)
        if lastWord >= words.count { grow(toWords: lastWord + 1) }
        var s = lower
        while s <= upper {
            let bit = s - base
            let w = Int(bit / 64), offset = bit % 64
            let n = min(64 - offset, upper - s + 1)
            let mask: UInt64 = n == 64 ? ~0 : ((1 << n) - 1) << offset
            words[w] |= mask
            s += n
        }
    }

    /// Appends zero words up to `count`, with an eighth more room when it must reallocate: the array's own
    /// doubling left up to twice the bitmap's size allocated (and how much depended on malloc's rounding).
    private mutating func grow(toWords count: Int) {
        if count > words.capacity { words.reserveCapacity(count + count / 8 + 8) }
        words.append(contentsOf: repeatElement(0, count: count - words.count))
    }

    /// Forgets everything below `floor` (those records no longer exist).
    public mutating func drop(below floor: UInt64) {
        guard floor > base else { return }
        let whole = Int(min((floor - base) / 64, UInt64(words.count)))
        if whole > 0 {
            words.removeFirst(whole)
            base += UInt64(whole) * 64
        }
        if words.isEmpty { base = floor & ~63; return }
        let partial = floor - base  // < 64
        if partial > 0 { words[0] &= ~((1 << partial) - 1) }
    }

    private func collectRanges(limit: Int) -> [ClosedRange<UInt64>] {
        var out: [ClosedRange<UInt64>] = []
        var start: UInt64?
        for (w, word) in words.enumerated() {
            if word == 0 && start == nil { continue }
            if word == ~0 && start != nil { continue }
            for b in 0..<64 {
                let s = base + UInt64(w) * 64 + UInt64(b)
                let set = word & (1 << UInt64(b)) != 0
                if set, start == nil {
                    start = s
                } else if !set, let first = start {
                    out.append(first...(s - 1))
                    start = nil
                    if out.count >= limit { return out }
                }
            }
        }
        if let first = start { out.append(first...(base + UInt64(words.count) * 64 - 1)) }
        return out
    }

    /// Consecutive runs of `sequences` as ranges.
    static func runs(_ sequences: [UInt64]) -> [ClosedRange<UInt64>] {
        var out: [ClosedRange<UInt64>] = []
        for s in sequences.sorted() {
            if let last = out.last, last.upperBound &+ 1 == s { out[out.count - 1] = last.lowerBound...s }
            else if let last = out.last, last.contains(s) { continue }
            else { out.append(s...s) }
        }
        return out
    }
}

/// The ledger file: entries of `u64 first, u32 count, u32 crc32c(first, count)`. Appended on acknowledgement,
/// rewritten (temp + rename) when compacted. A corrupt entry is skipped: its records come back (at-least-once).
struct LedgerFile {
    static let entrySize = 16

    static func encode(_ ranges: [ClosedRange<UInt64>]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(ranges.count * entrySize)
        for r in ranges {
            var remaining = r.upperBound - r.lowerBound + 1
            var first = r.lowerBound
            while remaining > 0 {
                let count = UInt32(min(remaining, UInt64(UInt32.max)))
                var entry: [UInt8] = []
                RecordCodec.append64(first, to: &entry)
                RecordCodec.append32(count, to: &entry)
                RecordCodec.append32(CRC32C.checksum(entry), to: &entry)
                out += entry
                first += UInt64(count)
                remaining -= UInt64(count)
            }
        }
        return out
    }

    /// Valid entries as ranges, and the number of corrupt entries skipped.
    static func decode(_ bytes: [UInt8]) -> (ranges: [ClosedRange<UInt64>], corrupt: Int) {
        var ranges: [ClosedRange<UInt64>] = []
        var corrupt = 0
        bytes.withUnsafeBytes { b in
            var at = 0
            while at + entrySize <= b.count {
                let entry = UnsafeRawBufferPointer(rebasing: b[at..<(at + 12)])
                if CRC32C.checksum(entry) == RecordCodec.read32(b, at + 12) {
                    let first = RecordCodec.read64(b, at)
                    let count = UInt64(RecordCodec.read32(b, at + 8))
                    // A range past UInt64.max cannot come from us: a CRC-valid but impossible entry is corruption.
                    if count > 0, first <= UInt64.max - (count - 1) {
                        ranges.append(first...(first + count - 1))
                    } else if count > 0 {
                        corrupt += 1
                    }
                } else {
                    corrupt += 1
                }
                at += entrySize
            }
            if at < b.count { corrupt += 1 }  // a torn last entry
        }
        return (ranges, corrupt)
    }
}
