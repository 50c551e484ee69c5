extension Spool {
    /// Records to append, laid out as the spool frames them: the payloads back to back in one buffer, each record
    /// naming its leaf by the number the batch gave the name.
    ///
    /// A producer that knows its leaves numbers them once, in a batch it keeps as a template, and starts each batch
    /// from a copy of it: the copies share the names (and their bytes) until one meets a new name. It then appends
    /// without an array, a string or a reference count per record (an `Entry` per record cost its producer and the
    /// append ~100 instructions a reading in the coalescing benchmark: retains and releases of its name and payload,
    /// and a leaf look-up per record when leaves interleave). `append(_: [Entry])` frames its entries as they are;
    /// both share what follows the framing.
    public struct AppendBatch: Sendable {
        /// A leaf's number in this batch (`leaf(_:)`); meaningless in another batch.
        public struct Leaf: Hashable, Sendable {
            let index: Int32
        }

        struct Record {
            var leaf: Int32
            var acquiredAtMs: Int64
            /// Where the payload ends in `payloads` (it starts where the previous record's ends).
            var payloadEnd: Int
        }

        private(set) var names: [String] = []
        /// The names' numbers by their bytes' hash (open addressing, at most half full; -1 is empty): names are
        /// told apart by their bytes, as the spool tells leaves apart.
        private var table: [Int32] = []
        private var hashes: [UInt64] = []
        /// The names' UTF-8 bytes side by side, and where each lies: what the frames copy.
        private(set) var nameBytes: [UInt8] = []
        private(set) var nameRanges: [Range<Int>] = []
        private(set) var records: [Record] = []
        private(set) var payloads: [UInt8] = []
        /// Made anew whenever a name is added: two batches holding the same one have the same names in the same
        /// order (copies of one template), so one's records join the other's as they are.
        private var numbering = Numbering()

        private final class Numbering: Sendable {}

        /// Room for `records` records of `payloadBytes` bytes in all, allocated once.
        public init(records: Int = 0, payloadBytes: Int = 0) {
            reserve(records: records, payloadBytes: payloadBytes)
        }

        /// Room for `records` more records of `payloadBytes` more bytes in all (a batch started from a template).
        public mutating func reserve(records: Int, payloadBytes: Int) {
            self.records.reserveCapacity(self.records.count + records)
            payloads.reserveCapacity(payloads.count + payloadBytes)
        }

        public var count: Int { records.count }
        public var isEmpty: Bool { records.isEmpty }

        /// The number of leaf `name` in this batch: the same bytes, the same number. (The spool tells leaves apart by
        /// their bytes; Swift's `==` would make two spellings of "café" one leaf.)
        public mutating func leaf(_ name: String) -> Leaf {
            let hash = LeafQueues.hash(name)
            if !table.isEmpty {
                let mask = table.count - 1
                var i = Int(truncatingIfNeeded: hash) & mask
                while table[i] >= 0 {
                    let known = Int(table[i])
                    if hashes[known] == hash, LeafQueues.sameBytes(names[known], name) { return Leaf(index: table[i]) }
                    i = (i + 1) & mask
                }
            }
            let number = Int32(names.count)
            names.append(name)
            hashes.append(hash)
            numbering = Numbering()
            if names.count * 2 > table.count { rebuildTable(count: Swift.max(16, table.count * 2)) } else { place(number) }
            let start = nameBytes.count
            nameBytes.append(contentsOf: name.utf8)
            nameRanges.append(start ..< nameBytes.count)
            return Leaf(index: number)
        }

        /// Puts name `number` in the table by its hash.
        private mutating func place(_ number: Int32) {
            let mask = table.count - 1
            var i = Int(truncatingIfNeeded: hashes[Int(number)]) & mask
            while table[i] >= 0 { i = (i + 1) & mask }
            table[i] = number
        }

        private mutating func rebuildTable(count: Int) {
            table = [Int32](repeating: -1, count: count)
            for number in names.indices { place(Int32(number)) }
        }

        /// Adds a record of `leaf` (a number this batch gave) with a copy of `payload`.
        public mutating func append(_ leaf: Leaf, acquiredAtMs: Int64, payload: UnsafeRawBufferPointer) {
            precondition(leaf.index >= 0 && Int(leaf.index) < names.count, "a leaf number from another batch")
            payloads.append(contentsOf: payload)
            records.append(Record(leaf: leaf.index, acquiredAtMs: acquiredAtMs, payloadEnd: payloads.count))
        }

        public mutating func append(_ leaf: Leaf, acquiredAtMs: Int64, payload: [UInt8]) {
            payload.withUnsafeBytes { append(leaf, acquiredAtMs: acquiredAtMs, payload: $0) }
        }

        /// Adds `other`'s records after these, in their order (its leaves numbered in this batch).
        public mutating func append(contentsOf other: AppendBatch) {
            guard !other.isEmpty else { return }
            if isEmpty && names.isEmpty {
                self = other
                return
            }
            // The same numbering: no name looked up (a template of a thousand leaves would cost a thousand).
            let leaves = other.numbering === numbering ? nil : other.names.map { leaf($0).index }
            let base = payloads.count
            payloads.append(contentsOf: other.payloads)
            records.reserveCapacity(records.count + other.records.count)
            for r in other.records {
                records.append(Record(leaf: leaves?[Int(r.leaf)] ?? r.leaf, acquiredAtMs: r.acquiredAtMs, payloadEnd: base + r.payloadEnd))
            }
        }
    }
}

