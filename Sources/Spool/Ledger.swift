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

    /// The set's ranges clipped to `low...high`.
    public func ranges(from low: UInt64, through high: UInt64) -> [ClosedRange<UInt64>] {
        guard low <= high, !words.isEmpty, high >= base else { return [] }
        let firstWord = low < base ? 0 : Int(min((low - base) / 64, UInt64(words.count)))
        let endWord = Int(min((high - base) / 64 + 1, UInt64(words.count)))
        guard firstWord < endWord else { return [] }
        return collectRanges(limit: .max, words: firstWord..<endWord).compactMap { r in
            let lower = max(r.lowerBound, low), upper = min(r.upperBound, high)
            return lower <= upper ? lower...upper : nil
        }
    }

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

    /// Inserts one sequence; false when it is not kept (beyond `maxSpan`). A bit set in place: the range form
    /// cost ~100 instructions a record when every acknowledged record went in on its own.
    @discardableResult
    public mutating func insert(_ s: UInt64) -> Bool {
        if s >= base, !words.isEmpty {
            let bit = s - base
            if bit < UInt64(words.count) * 64 {
                words[Int(bit / 64)] |= 1 << (bit % 64)
                return true
            }
        }
        insert(s...s)
        return contains(s)
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

    /// Walks the bitmap from one change of bit to the next (trailingZeroBitCount), not bit by bit.
    private func collectRanges(limit: Int, words wordRange: Range<Int>? = nil) -> [ClosedRange<UInt64>] {
        let wordRange = wordRange ?? words.indices
        var out: [ClosedRange<UInt64>] = []
        var start: UInt64?
        var w = wordRange.lowerBound
        var bit = 0
        while w < wordRange.upperBound {
            let word = words[w]
            // The bits from `bit` up that end the current state: a set bit when outside a range, a clear one inside.
            let changes = (start == nil ? word : ~word) & (~UInt64(0) << UInt64(bit))
            guard changes != 0 else {
                w += 1
                bit = 0
                continue
            }
            bit = changes.trailingZeroBitCount
            let s = base + UInt64(w) * 64 + UInt64(bit)
            if let first = start {
                out.append(first...(s - 1))
                start = nil
                if out.count >= limit { return out }
            } else {
                start = s
            }
        }
        if let first = start { out.append(first...(base + UInt64(wordRange.upperBound) * 64 - 1)) }
        return out
    }

    /// `sequences` (distinct) as ranges, each run of consecutive ones in the order given becoming one range. Not
    /// sorted: the ledger takes ranges in any order, and a sort cost ~140 instructions a record when coalesced
    /// messages of interleaved leaves were acknowledged together.
    /// How many ranges `runs` makes of `sequences`, without making them.
    static func runCount(_ sequences: [UInt64]) -> Int {
        guard var previous = sequences.first else { return 0 }
        var count = 1
        for s in sequences.dropFirst() {
            if previous &+ 1 != s { count += 1 }
            previous = s
        }
        return count
    }

    static func runs(_ sequences: [UInt64]) -> [ClosedRange<UInt64>] {
        var out: [ClosedRange<UInt64>] = []
        var start: UInt64 = 0, end: UInt64 = 0
        for (i, s) in sequences.enumerated() {
            if i > 0, end &+ 1 == s {
                end = s
                continue
            }
            if i > 0 { out.append(start...end) }
            start = s
            end = s
        }
        if !sequences.isEmpty { out.append(start...end) }
        return out
    }
}

/// The ledger file: entries of `u64 first, u32 count, u32 crc32c(first, count)`. Appended on acknowledgement,
/// rewritten (temp + rename) when compacted. A corrupt entry is skipped: its records come back (at-least-once).
struct LedgerFile {
    static let entrySize = 16

    /// Entries for `ranges`, written in place (an entry built from byte appends cost ~800 instructions).
    static func encode(_ ranges: [ClosedRange<UInt64>]) -> [UInt8] {
        var entries = 0
        for r in ranges { entries += Int((r.upperBound - r.lowerBound) / UInt64(UInt32.max)) + 1 }
        return [UInt8](unsafeUninitializedCapacity: entries * entrySize) { buffer, initialized in
            let out = UnsafeMutableRawPointer(buffer.baseAddress!)
            var at = 0
            for r in ranges {
                var remaining = r.upperBound - r.lowerBound + 1
                var first = r.lowerBound
                while remaining > 0 {
                    let count = UInt32(min(remaining, UInt64(UInt32.max)))
                    out.storeBytes(of: first.littleEndian, toByteOffset: at, as: UInt64.self)
                    out.storeBytes(of: count.littleEndian, toByteOffset: at + 8, as: UInt32.self)
                    let crc = CRC32C.checksum(UnsafeRawBufferPointer(start: out + at, count: 12))
                    out.storeBytes(of: crc.littleEndian, toByteOffset: at + 12, as: UInt32.self)
                    at += entrySize
                    first &+= UInt64(count)
                    remaining -= UInt64(count)
                }
            }
            initialized = at
        }
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
