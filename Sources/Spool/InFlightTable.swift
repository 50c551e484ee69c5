/// Records handed out and not yet settled: sequence → where the record lives. Pure value.
///
/// Every delivered reading is put here once and taken out once, so it sits on the per-reading path: a Swift
/// `Dictionary` hashed each sequence with SipHash (~150 instructions a look-up). Sequences are distinct integers
/// handed out in increasing order, so a multiplicative hash spreads them well: open addressing with linear probing
/// and backward-shift deletion (no tombstones), at most half full, probed through one buffer pointer.
struct InFlightTable: Sendable {
    private struct Bucket {
        var sequence: UInt64
        /// `slot == -1` marks an empty bucket (a leaf's slot is never negative).
        var location: RecordLocation
        var isEmpty: Bool { location.slot < 0 }
    }

    private var buckets: [Bucket]
    private var shift: UInt64
    private(set) var count = 0

    private static let empty = Bucket(sequence: 0, location: RecordLocation(slot: -1, segment: 0, offset: 0))
    private static let minimumBuckets = 64

    init() {
        buckets = Array(repeating: Self.empty, count: Self.minimumBuckets)
        shift = UInt64(64 - Self.minimumBuckets.trailingZeroBitCount)
    }

    var isEmpty: Bool { count == 0 }

    subscript(_ sequence: UInt64) -> RecordLocation? {
        get {
            buckets.withUnsafeBufferPointer { b in
                var i = home(sequence)
                while !b[i].isEmpty {
                    if b[i].sequence == sequence { return b[i].location }
                    i = (i + 1) & (b.count - 1)
                }
                return nil
            }
        }
        set {
            if let newValue { insert(sequence, newValue) } else { removeValue(forKey: sequence) }
        }
    }

    private func home(_ sequence: UInt64) -> Int {
        Int(truncatingIfNeeded: (sequence &* 0x9E37_79B9_7F4A_7C15) >> shift)
    }

    mutating func insert(_ sequence: UInt64, _ location: RecordLocation) {
        precondition(location.slot >= 0)
        if (count + 1) * 2 > buckets.count { resize(to: buckets.count * 2) }
        let start = home(sequence)
        let added = buckets.withUnsafeMutableBufferPointer { b -> Bool in
            var i = start
            while !b[i].isEmpty {
                if b[i].sequence == sequence {
                    b[i].location = location
                    return false
                }
                i = (i + 1) & (b.count - 1)
            }
            b[i] = Bucket(sequence: sequence, location: location)
            return true
        }
        if added { count += 1 }
    }

    @discardableResult
    mutating func removeValue(forKey sequence: UInt64) -> RecordLocation? {
        let start = home(sequence)
        let shift = self.shift
        let removed = buckets.withUnsafeMutableBufferPointer { b -> RecordLocation? in
            let mask = b.count - 1
            var i = start
            while !b[i].isEmpty, b[i].sequence != sequence { i = (i + 1) & mask }
            guard !b[i].isEmpty else { return nil }
            let removed = b[i].location
            // Backward shift: later members of the probe run move up so every look-up still finds them.
            var hole = i
            var j = (i + 1) & mask
            while !b[j].isEmpty {
                let home = Int(truncatingIfNeeded: (b[j].sequence &* 0x9E37_79B9_7F4A_7C15) >> shift)
                // j stays unless its home lies cyclically in (hole, j].
                let stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j)
                if !stays {
                    b[hole] = b[j]
                    hole = j
                }
                j = (j + 1) & mask
            }
            b[hole] = Self.empty
            return removed
        }
        guard removed != nil else { return nil }
        count -= 1
        // A drained burst does not keep its table; well below the growth point, so the size does not swing.
        if buckets.count > Self.minimumBuckets, count * 32 < buckets.count { resize(to: buckets.count / 4) }
        return removed
    }

    /// Removes and returns every entry whose location matches (a segment being deleted).
    mutating func removeAll(where matches: (RecordLocation) -> Bool) -> [(sequence: UInt64, location: RecordLocation)] {
        var removed: [(sequence: UInt64, location: RecordLocation)] = []
        for b in buckets where !b.isEmpty && matches(b.location) { removed.append((b.sequence, b.location)) }
        for r in removed { removeValue(forKey: r.sequence) }
        return removed
    }

    /// Room for `capacity` entries at once: a fetch of many records grows the table once, not by doublings.
    mutating func reserve(_ capacity: Int) {
        guard capacity * 2 > buckets.count else { return }
        resize(to: 1 << (Int.bitWidth - (capacity * 2 - 1).leadingZeroBitCount))
    }

    /// Every entry re-placed through one buffer pointer (`insert` per entry checked the load and uniqueness each time).
    private mutating func resize(to count: Int) {
        let old = buckets
        buckets = Array(repeating: Self.empty, count: Swift.max(count, Self.minimumBuckets))
        shift = UInt64(64 - buckets.count.trailingZeroBitCount)
        let shift = self.shift
        buckets.withUnsafeMutableBufferPointer { b in
            let mask = b.count - 1
            for entry in old where !entry.isEmpty {
                var i = Int(truncatingIfNeeded: (entry.sequence &* 0x9E37_79B9_7F4A_7C15) >> shift)
                while !b[i].isEmpty { i = (i + 1) & mask }
                b[i] = entry
            }
        }
    }
}
