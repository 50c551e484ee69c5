/// A shard's telemetry deliveries awaiting the hub's outcome, found again by the delivery tag they were sent with.
///
/// An entry's tag is its slot in the low 24 bits and a count of every entry ever stored above them, so an outcome is
/// matched without hashing (a dictionary keyed by the delivery cost ~65 instructions a reading in the coalescing
/// benchmark, most of it the hash), and no tag is issued twice in 2^40 entries. Outcomes of a retired link do not reach the
/// table (the shard forgets the link's role first); should one ever come for an entry already gone, it matches
/// nothing rather than the slot's next user. Unique tags are what AMQP asks of a link's unsettled deliveries.
struct UnsettledTelemetry {
    struct Entry {
        let leaf: LeafRuntime
        /// The spool records the message carries (none for a heartbeat).
        let sequences: [UInt64]
        let quotaGeneration: Int
    }

    private var slots: [(tag: UInt64, entry: Entry?)] = []
    private var freeSlots: [Int] = []
    private var stored: UInt64 = 0
    private(set) var count = 0

    private static let slotBits: UInt64 = 24

    var isEmpty: Bool { count == 0 }

    /// Stores `entry`; returns the tag to send its delivery with.
    mutating func insert(_ entry: Entry) -> UInt64 {
        stored &+= 1
        count += 1
        let slot = freeSlots.popLast() ?? slots.count
        precondition(slot < 1 << Self.slotBits, "more telemetry deliveries unsettled than a tag can number")
        let tag = stored << Self.slotBits | UInt64(slot)
        if slot == slots.count { slots.append((tag, entry)) } else { slots[slot] = (tag, entry) }
        return tag
    }

    /// Takes out the entry sent with `tag`; nil when there is none (a tag not ours, or its entry already gone).
    mutating func remove(tag: UInt64) -> Entry? {
        let slot = Int(truncatingIfNeeded: tag & (1 << Self.slotBits - 1))
        guard slot < slots.count, slots[slot].tag == tag, let entry = slots[slot].entry else { return nil }
        free(slot)
        return entry
    }

    /// Takes out every entry of `leaf` (its links are going); returns their records.
    mutating func removeAll(of leaf: LeafRuntime) -> [UInt64] {
        var sequences: [UInt64] = []
        for slot in slots.indices {
            guard let entry = slots[slot].entry, entry.leaf === leaf else { continue }
            sequences += entry.sequences
            free(slot, shrinking: false)  // the loop still walks `slots`
        }
        if count == 0 { shrink() }
        return sequences
    }

    /// Takes out every entry (the connection went); returns their records.
    mutating func removeAll() -> [UInt64] {
        let sequences = slots.flatMap { $0.entry?.sequences ?? [] }
        slots = []
        freeSlots = []
        count = 0
        return sequences
    }

    private mutating func free(_ slot: Int, shrinking: Bool = true) {
        slots[slot].entry = nil
        count -= 1
        if count == 0 && shrinking { shrink() } else { freeSlots.append(slot) }
    }

    /// With nothing in flight a burst's slots are not kept (tags stay unique: they count entries, not slots).
    private mutating func shrink() {
        let keep = slots.count <= 64
        slots.removeAll(keepingCapacity: keep)
        freeSlots.removeAll(keepingCapacity: keep)
    }
}
