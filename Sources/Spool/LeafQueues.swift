#if canImport(Glibc)
import Glibc
#endif

/// Where one record lives: its leaf's slot in `LeafQueues`, its segment and its offset there.
struct RecordLocation: Hashable {
    var slot: Int32
    var segment: UInt32
    var offset: UInt32
}

/// The undelivered records of every leaf, in memory (the disk holds the records; this holds where they are).
///
/// Each leaf gets a slot the first time it appears, for the spool's lifetime, so the append path hashes a leaf's
/// name once per record (not once per structure it touches) and the reader walks slots, not dictionary keys. Slots
/// are in order of first appearance: the round-robin order of `Spool.next`. Pure: no I/O.
///
/// A backlog's locations are listed only up to a budget (`listedBudget` records): the segments that start once it
/// is reached are cold — their records are counted per leaf, and listed when the leaves get to them, segment by
/// segment in file order (`Spool.list(for:)` reads the segment's index). Memory then follows the budget, not the
/// backlog: a million records listed cost ~1.1 MB, a spooled million over 1000 leaves ~0.1 MB.
///
/// Leaves drain at different paces (one leaves a throttle seconds before another). A segment is listed for the leaf
/// that ran dry and for the leaves that reached it with few records listed; one with plenty listed stays behind
/// there (`Leaf.behindFrom`) and lists it when it runs dry in turn. So a fast leaf does not list the whole backlog
/// for the slow ones (a 1 M drain listed ~1 MB that way); a leaf that gets there later reads only its own section
/// of the segment's index (`Spool.listSections`).
struct LeafQueues {
    struct Leaf {
        /// Replaced only by a string of the same bytes (`slot(of:)`), so that callers' own copies are recognized.
        private(set) var name: String
        /// `name`'s two words (`LeafQueues.identity`).
        private(set) var identity: StringIdentity
        /// `LeafQueues.hash(name)`, kept for the table's growth and a cheap first comparison.
        let nameHash: UInt64

        init(name: String, nameHash: UInt64) {
            self.name = name
            self.identity = LeafQueues.identity(name)
            self.nameHash = nameHash
        }

        mutating func adopt(_ sameName: String) {
            name = sameName
            identity = LeafQueues.identity(sameName)
        }
        /// Its listed records in file order, across segments (about a byte a record).
        var queue = LocationStream()
        /// Records given back for retry, oldest first: they come before `queue`.
        var retry: [(sequence: UInt64, location: RecordLocation)] = []
        /// Its records in cold segments: after `queue`, not listed yet.
        var cold = 0
        /// The first segment whose records of this leaf are not listed, when a listing left it behind (it had
        /// plenty listed then); nil: `coldFrom`, the listing's front, is.
        var behindFrom: UInt32?
        /// Queued (listed or cold), retried and in-flight records: what `settle` still has to account for.
        var depth = 0

        var hasQueued: Bool { !retry.isEmpty || !queue.isEmpty || cold > 0 }
    }

    /// Records listed in the queues at most: the segments that start while it is reached are cold.
    var listedBudget = 65_536
    /// Records listed in the queues (retried ones apart).
    private(set) var listed = 0
    /// The first cold segment: this one and every later one hold records counted, not listed. nil: all listed.
    private(set) var coldFrom: UInt32?

    /// Slots by name: open addressing over `leaves`, -1 = empty, at most half full. Every appended record looks its
    /// leaf up here; a `Dictionary<String, Int32>` cost ~340 instructions a look-up (SipHash over a String).
    private var buckets = [Int32](repeating: -1, count: 64)
    private var leaves: [Leaf] = []
    /// Slots by the two words of the caller's string (`identity`), two places each, -1 = empty, as many entries as
    /// `buckets`: the appending adapters pass the same strings over and over, and two words compared cost less than
    /// the name's hash and comparison (~230 instructions a record of interleaved leaves).
    private var byIdentity = [Int32](repeating: -1, count: 64)

    var count: Int { leaves.count }

    subscript(_ slot: Int32) -> Leaf { leaves[Int(slot)] }

    /// The leaf's records in cold segments (read in place: a copy of the leaf retained its queues).
    func cold(_ slot: Int32) -> Int { leaves[Int(slot)].cold }

    /// The first segment whose records of the leaf are counted, not listed (nil: all are listed).
    func frontier(_ slot: Int32) -> UInt32? { leaves[Int(slot)].behindFrom ?? coldFrom }

    /// The leaves a listing in progress lists (by slot); empty between listings.
    private var listing: [Bool] = []

    /// The leaf's slot if it has one (nothing is made).
    func existingSlot(of leaf: String) -> Int32? { find(leaf, hash: Self.hash(leaf)).slot }

    /// The leaf's slot, or the empty bucket where it would go.
    private func find(_ leaf: String, hash: UInt64) -> (slot: Int32?, bucket: Int) {
        let mask = buckets.count - 1
        var i = Int(truncatingIfNeeded: hash) & mask
        while buckets[i] >= 0 {
            let known = Int(buckets[i])
            // Equal strings whose bytes differ (canonically equivalent spellings) hash apart: the hash tells them
            // apart, `==` tells colliding hashes apart. Fields read in place: a copy of the leaf retained its queues.
            if leaves[known].nameHash == hash, leaves[known].name == leaf { return (buckets[i], i) }
            i = (i + 1) & mask
        }
        return (nil, i)
    }

    /// The leaf's slot, made on its first appearance.
    mutating func slot(of leaf: String) -> Int32 {
        let id = Self.identity(leaf)
        // Both words mixed into every bit (splitmix64's finalizer): names like `bench-51` and `bench-52` differ in
        // one byte of one word only.
        var x = id.words.0 ^ (id.words.1 << 32 | id.words.1 >> 32)
        x = (x ^ x >> 30) &* 0xBF58_476D_1CE4_E5B9
        x = (x ^ x >> 27) &* 0x94D0_49BB_1331_11EB
        x ^= x >> 31
        // Two places a string may sit in: with two to four entries a leaf, one place each left a fifth of the
        // leaves evicting one another.
        let mask = byIdentity.count - 1
        let first = Int(truncatingIfNeeded: x) & mask, second = Int(truncatingIfNeeded: x >> 32) & mask
        let atFirst = byIdentity[first], atSecond = byIdentity[second]
        if atFirst >= 0, leaves[Int(atFirst)].identity == id { return atFirst }
        if atSecond >= 0, leaves[Int(atSecond)].identity == id { return atSecond }
        let cache = atFirst < 0 || atSecond >= 0 ? first : second
        let hash = Self.hash(leaf)
        let (found, i) = find(leaf, hash: hash)
        if let found {
            // The same name in another string (after recovery, or from another caller): kept from now on, so that
            // the caller's next records are found by their words. Only a string of the very same bytes.
            if Self.sameBytes(leaf, leaves[Int(found)].name) {
                leaves[Int(found)].adopt(leaf)
                byIdentity[cache] = found
            }
            return found
        }
        let slot = Int32(leaves.count)
        leaves.append(Leaf(name: leaf, nameHash: hash))
        if leaves.count * 2 > buckets.count {
            rebuildBuckets(count: buckets.count * 2)  // the identities refill as the leaves come again
        } else {
            buckets[i] = slot
            byIdentity[cache] = slot
        }
        return slot
    }

    /// A string's two words. Equal words are the same string: a small string's words hold its bytes, a large one's
    /// point at its storage, which a leaf's `name` keeps alive and unchanged (a change to another copy of a shared
    /// storage copies it first). Unequal words say nothing: equal strings can live in different storages.
    struct StringIdentity: Equatable {
        var words: (UInt64, UInt64)
        static func == (a: Self, b: Self) -> Bool { a.words.0 == b.words.0 && a.words.1 == b.words.1 }
    }

    #if arch(i386) || arch(arm) || arch(wasm32) || arch(arm64_32)
    #error("LeafQueues.identity reads a String as two 64-bit words: a 64-bit target is needed")
    #endif
    static func identity(_ s: String) -> StringIdentity {
        StringIdentity(words: unsafeBitCast(s, to: (UInt64, UInt64).self))
    }

    private mutating func rebuildBuckets(count: Int) {
        byIdentity = [Int32](repeating: -1, count: count)
        buckets = [Int32](repeating: -1, count: count)
        for (slot, leaf) in leaves.enumerated() {
            var i = Int(truncatingIfNeeded: leaf.nameHash) & (count - 1)
            while buckets[i] >= 0 { i = (i + 1) & (count - 1) }
            buckets[i] = Int32(slot)
        }
    }

    /// Names are the same leaf when their UTF-8 bytes are (as the hash sees them; `==` would also join canonically
    /// equivalent spellings that hash apart).
    static func sameBytes(_ a: String, _ b: String) -> Bool {
        // Unequal strings never have equal bytes, and `==` answers that fast (small strings bit for bit); only
        // equal ones have their bytes compared.
        guard a == b else { return false }
        let bytes = a.utf8.withContiguousStorageIfAvailable { x in
            b.utf8.withContiguousStorageIfAvailable { y in x.count == y.count && (x.isEmpty || memcmp(x.baseAddress!, y.baseAddress!, x.count) == 0) }
        }
        return (bytes ?? nil) ?? a.utf8.elementsEqual(b.utf8)
    }

    /// A leaf name's hash over its UTF-8 bytes, eight at a time (names come from the configuration: no adversary
    /// chooses them). Device ids are ASCII, so equal names have equal bytes.
    static func hash(_ name: String) -> UInt64 {
        name.withUTF8Bytes { raw in
            var h: UInt64 = 0xCBF2_9CE4_8422_2325 ^ UInt64(raw.count)
            var i = 0
            while i + 8 <= raw.count {
                h = (h ^ raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)) &* 0x0000_0100_0000_01B3
                h ^= h >> 29
                i += 8
            }
            var tail: UInt64 = 0
            var shift: UInt64 = 0
            while i < raw.count {
                tail |= UInt64(raw[i]) << shift
                shift += 8
                i += 1
            }
            h = (h ^ tail) &* 0x0000_0100_0000_01B3
            return h ^ (h >> 32)
        }
    }

    /// Queues a record at the back of its leaf. In place: copying a leaf's queue out and back would copy it on
    /// every append (quadratic).
    mutating func enqueue(_ slot: Int32, segment: UInt32, offset: UInt32) {
        let i = Int(slot)
        if let cold = leaves[i].behindFrom ?? coldFrom, segment >= cold {
            leaves[i].cold += 1
        } else {
            leaves[i].queue.append(segment: segment, offset: offset)
            listed += 1
        }
        leaves[i].depth += 1
        depth += 1
    }

    /// A segment starts (appended to, or recovered): its records are listed only while the budget allows; past it,
    /// it and the segments after it are cold.
    mutating func segmentStarts(_ segment: UInt32) {
        if coldFrom == nil, listed >= listedBudget { coldFrom = segment }
    }

    /// A listing of `segment` starts: it lists the records of `dry` (the leaf that ran out of listed records) and of
    /// every leaf whose first unlisted segment it is (`previous`: the segment before it, nil: none) and that has
    /// fewer than its share of the budget listed — every such leaf when the budget has room for the whole segment
    /// (`records`). The others stay behind at it.
    mutating func beginListing(segment: UInt32, previous: UInt32?, records: Int, dry: Int32) {
        let roomy = listed + records <= listedBudget
        let share = Swift.max(16, listedBudget / Swift.max(1, leaves.count))
        listing = leaves.indices.map { i in
            let leaf = leaves[i]
            guard leaf.cold > 0, let front = leaf.behindFrom ?? coldFrom, front <= segment else { return false }
            guard previous.map({ front > $0 }) ?? true else { return false }  // records in an earlier segment first
            return i == Int(dry) || roomy || leaf.queue.count + leaf.retry.count < share
        }
    }

    /// A record of the segment being listed, found in its index, joins its leaf's list if the listing lists that
    /// leaf (its records come in file order, after every record already listed). False when it does not.
    mutating func list(_ slot: Int32, segment: UInt32, offset: UInt32) -> Bool {
        let i = Int(slot)
        guard i < listing.count, listing[i], leaves[i].cold > 0 else { return false }
        leaves[i].cold -= 1
        leaves[i].queue.append(segment: segment, offset: offset)
        listed += 1
        return true
    }

    /// The leaves the listing in progress lists.
    var listingSlots: [Int32] { listing.indices.compactMap { listing[$0] ? Int32($0) : nil } }

    /// The listing of `segment` could not read it: nothing changed, the next try starts over.
    mutating func abandonListing() { listing = [] }

    /// The listing of `segment` is done; `next` is the segment after it (nil: none). Its leaves' first unlisted
    /// segment is `next`; the leaves it did not list that had records counted there stay behind at it. A listed
    /// leaf with nothing left unlisted but still records counted lost them (corruption since they were counted):
    /// they leave its depth, returned per slot.
    mutating func finishListing(segment: UInt32, next: UInt32?) -> [(slot: Int32, count: Int)] {
        let passesFront = coldFrom.map { $0 <= segment } ?? false
        if passesFront { coldFrom = next }
        var lost: [(slot: Int32, count: Int)] = []
        for i in leaves.indices {
            if i < listing.count, listing[i] {
                // Behind at `next` unless the front is there already.
                leaves[i].behindFrom = next.flatMap { n in (coldFrom.map { n < $0 } ?? true) ? n : nil }
                if (leaves[i].behindFrom ?? coldFrom) == nil, leaves[i].cold > 0 {
                    lost.append((Int32(i), leaves[i].cold))
                    forgetCold(i)
                }
            } else if passesFront, leaves[i].behindFrom == nil, leaves[i].cold > 0 {
                leaves[i].behindFrom = segment
            }
        }
        listing = []
        return lost
    }

    /// The leaf's records counted in segments that are gone: forgotten (they leave its depth); how many.
    mutating func loseCold(_ slot: Int32) -> [(slot: Int32, count: Int)] {
        let i = Int(slot), count = leaves[i].cold
        leaves[i].behindFrom = nil
        guard count > 0 else { return [] }
        forgetCold(i)
        return [(slot, count)]
    }

    private mutating func forgetCold(_ i: Int) {
        leaves[i].depth -= leaves[i].cold
        depth -= leaves[i].cold
        leaves[i].cold = 0
    }

    /// Whether some leaf has records counted cold in `segment` (or before it).
    func hasCold(upTo segment: UInt32) -> Bool {
        leaves.contains { $0.cold > 0 && ($0.behindFrom ?? coldFrom).map { $0 <= segment } ?? false }
    }

    /// A record of `segment`, which is being deleted: when it is counted cold for its leaf it is forgotten (it
    /// leaves the leaf's depth) and true; false when it is listed (`removeRecords` finds those) or in flight.
    mutating func dropCold(_ slot: Int32, segment: UInt32) -> Bool {
        let i = Int(slot)
        guard leaves[i].cold > 0, let front = leaves[i].behindFrom ?? coldFrom, front <= segment else { return false }
        leaves[i].cold -= 1
        leaves[i].depth -= 1
        depth -= 1
        return true
    }

    /// The leaf's next record: retried ones first, then its queue. Its depth is unchanged (the record is now in
    /// flight or about to be settled).
    mutating func popFront(_ slot: Int32) -> RecordLocation? { take(slot)?.location }

    /// A record `take` removed, with the sequence it had in the retry list (nil: from the queue).
    struct Taken {
        var location: RecordLocation
        var retrySequence: UInt64?
    }

    /// `popFront`, keeping what `putBack` needs to restore the leaf exactly.
    mutating func take(_ slot: Int32) -> Taken? {
        let i = Int(slot)
        if !leaves[i].retry.isEmpty {
            let r = leaves[i].retry.removeFirst()
            return Taken(location: r.location, retrySequence: r.sequence)
        }
        guard let next = leaves[i].queue.removeFirst() else { return nil }
        listed -= 1
        return Taken(location: RecordLocation(slot: slot, segment: next.segment, offset: next.offset), retrySequence: nil)
    }

    /// Undoes `take` for records that were never handed out (their read failed), given in the order taken: each
    /// goes back to the front of its leaf, so the leaf's order is as before.
    mutating func putBack(_ taken: [Taken]) {
        var bySlot: [Int32: [Taken]] = [:]
        for t in taken { bySlot[t.location.slot, default: []].append(t) }
        for (slot, entries) in bySlot {
            let i = Int(slot)
            // Taken from the retry list first, then from the runs: they go back the same way.
            let retried = entries.compactMap { t in t.retrySequence.map { (sequence: $0, location: t.location) } }
            leaves[i].retry.insert(contentsOf: retried, at: 0)
            let queued = entries.filter { $0.retrySequence == nil }.map { ($0.location.segment, $0.location.offset) }
            leaves[i].queue.prepend(queued)
            listed += queued.count
        }
    }

    /// Gives in-flight records back for retry, each leaf's in sequence order.
    mutating func giveBack(_ records: [(sequence: UInt64, location: RecordLocation)]) {
        var touched: Set<Int32> = []
        for r in records {
            leaves[Int(r.location.slot)].retry.append(r)
            touched.insert(r.location.slot)
        }
        for slot in touched { leaves[Int(slot)].retry.sort { $0.sequence < $1.sequence } }
    }

    mutating func adjustDepth(_ slot: Int32, by change: Int) {
        leaves[Int(slot)].depth += change
        depth += change
    }

    /// Gives back the growth room of every leaf's queue (a segment was sealed: most queues stop growing for a while).
    mutating func trimQueues() {
        for i in leaves.indices { leaves[i].queue.trim() }
    }

    /// Forgets every queued and retried record of `segment` (it is being deleted); returns how many each leaf lost.
    /// Their depth goes down by as many.
    mutating func removeRecords(of segment: UInt32) -> [(slot: Int32, count: Int)] {
        var lost: [(slot: Int32, count: Int)] = []
        for i in leaves.indices {
            var count = leaves[i].queue.remove(segment: segment)
            listed -= count
            let retried = leaves[i].retry.count
            leaves[i].retry.removeAll { $0.location.segment == segment }
            count += retried - leaves[i].retry.count
            if count > 0 {
                leaves[i].depth -= count
                depth -= count
                lost.append((Int32(i), count))
            }
        }
        return lost
    }

    /// Every leaf's depth added up (kept as they change: a fetch asks for it).
    private(set) var depth = 0

    /// Leaves with records, by name (spellings Swift finds equal but whose bytes differ are added together).
    var depthByLeaf: [String: Int] {
        Dictionary(leaves.filter { $0.depth > 0 }.map { ($0.name, $0.depth) }, uniquingKeysWith: +)
    }
}

extension String {
    /// The UTF-8 bytes without a mutable copy of the string (`withUTF8` needs one, a retain and a release per call
    /// on the append path): in place where Swift stores them contiguously, which native strings always are.
    func withUTF8Bytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        if let r = utf8.withContiguousStorageIfAvailable({ body(UnsafeRawBufferPointer($0)) }) { return r }
        return Array(utf8).withUnsafeBytes(body)
    }
}
