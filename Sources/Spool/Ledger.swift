/// The set of acknowledged sequences, as sorted disjoint closed ranges. Pure value.
public struct AckSet: Sendable, Equatable {
    public private(set) var ranges: [ClosedRange<UInt64>] = []

    public init() {}

    public func contains(_ s: UInt64) -> Bool {
        var lo = 0, hi = ranges.count - 1
        while lo <= hi {
            let mid = (lo + hi) / 2
            if ranges[mid].upperBound < s { lo = mid + 1 } else if ranges[mid].lowerBound > s { hi = mid - 1 } else { return true }
        }
        return false
    }

    public mutating func insert(_ r: ClosedRange<UInt64>) {
        // First range that could touch r (its upper bound reaches r.lower - 1).
        var lo = 0, hi = ranges.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if ranges[mid].upperBound &+ 1 < r.lowerBound { lo = mid + 1 } else { hi = mid }
        }
        var merged = r
        var end = lo
        while end < ranges.count, ranges[end].lowerBound <= merged.upperBound &+ 1 {
            merged = min(merged.lowerBound, ranges[end].lowerBound)...max(merged.upperBound, ranges[end].upperBound)
            end += 1
        }
        ranges.replaceSubrange(lo..<end, with: [merged])
    }

    /// Forgets everything below `floor` (those records no longer exist).
    public mutating func drop(below floor: UInt64) {
        ranges = ranges.compactMap { r in
            if r.upperBound < floor { return nil }
            return max(r.lowerBound, floor)...r.upperBound
        }
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
