import FieldgateCore

/// Records fetched for delivery, each a view into the bytes read from disk: a fetch makes one array per `pread`,
/// not one per record (a payload array per record cost a malloc, a copy and a free, ~600 instructions a reading
/// once coalescing made everything else cheap). Records keep the order `Spool.fetch` picked them in.
public struct SpoolBatch: Sendable {
    /// Plain data (its leaf's name is the batch's, `leaf(_:)`): a name in every record cost a retain and a release
    /// wherever a record was copied.
    public struct Record: Sendable {
        public let sequence: UInt64
        /// Milliseconds since the Unix epoch when the reading was acquired.
        public let acquiredAtMs: Int64
        public let flags: UInt8
        /// A number for the leaf, the same for every record of a leaf and below the batch's `leafCount` (the spool's
        /// slot): a caller groups records by leaf in an array, not by hashing or comparing names.
        public let leafIndex: Int
        @usableFromInline let buffer: Int
        @usableFromInline let payload: Range<Int>
    }

    public private(set) var records: [Record] = []
    /// One more than the highest `leafIndex` of the records (every `leafIndex` is below it).
    public private(set) var leafCount = 0
    /// The bytes read, which the records point into.
    @usableFromInline var buffers: [OwnedBytes] = []
    /// The leaves' names by `leafIndex` ("" for a number no record has).
    private var leafNames: [String] = []
    /// The leaf number of the last record appended (its name is known).
    private var lastNamed = -1

    init() {}

    /// A batch of records that are already values (each payload its own buffer): for callers and tests that hold
    /// `SpoolRecord`s.
    public init(_ values: [SpoolRecord]) {
        records.reserveCapacity(values.count)
        var indexes: [String: Int] = [:]
        for v in values {
            let buffer = add(buffer: v.payload)
            let leafIndex = indexes[v.leaf] ?? indexes.count
            indexes[v.leaf] = leafIndex
            append(Record(sequence: v.sequence, acquiredAtMs: v.acquiredAtMs, flags: v.flags, leafIndex: leafIndex,
                          buffer: buffer, payload: 0..<v.payload.count), leaf: v.leaf)
        }
    }

    public var count: Int { records.count }
    /// Bytes of the buffers the records point into (what the batch keeps alive).
    public var bufferBytes: Int { buffers.reduce(0) { $0 + $1.bytes.count } }
    public var isEmpty: Bool { records.isEmpty }

    /// Keeps `buffer` for the records that point into it; returns its number.
    mutating func add(_ buffer: OwnedBytes) -> Int {
        buffers.append(buffer)
        return buffers.count - 1
    }

    /// Keeps a copy of `bytes`.
    mutating func add(buffer bytes: [UInt8]) -> Int { add(OwnedBytes(copying: bytes)) }

    /// Puts `buffer` in place of buffer `number` (the records pointing into it must be pointed anew).
    mutating func replace(buffer number: Int, with buffer: OwnedBytes) { buffers[number] = buffer }

    /// Appends `record` of the leaf named `leaf` (`leaf` is asked for only when the batch has no name for its
    /// number yet).
    mutating func append(_ record: Record, leaf: @autoclosure () -> String) {
        records.append(record)
        // A fetch takes several records of a leaf in a row: its name is looked at once for them.
        guard record.leafIndex != lastNamed else { return }
        lastNamed = record.leafIndex
        if record.leafIndex >= leafNames.count {
            leafNames.append(contentsOf: repeatElement("", count: record.leafIndex + 1 - leafNames.count))
            leafCount = leafNames.count
        }
        if leafNames[record.leafIndex].isEmpty { leafNames[record.leafIndex] = leaf() }
    }

    /// The name of the leaf of record `index`.
    public func leaf(_ index: Int) -> String { leafNames[records[index].leafIndex] }

    mutating func reserveCapacity(_ n: Int) { records.reserveCapacity(n) }

    /// The payload of record `index`, borrowed for the duration of `body`. Inlinable: the uplink calls it per
    /// record, and a generic call across the module boundary cost more than the copy it replaced.
    @inlinable
    public func withPayload<R>(_ index: Int, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withPayload(buffer: records[index].buffer, records[index].payload, body)
    }

    @inlinable
    func withPayload<R>(buffer: Int, _ range: Range<Int>, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(rebasing: buffers[buffer].bytes[range]))
    }

    /// The payload of record `index` in the batch's own memory, valid for as long as this batch (or a copy of it)
    /// lives: the uplink's encoder reads a fetch's payloads through these, with no closure per look.
    @inlinable
    public func unsafePayload(_ index: Int) -> UnsafeRawBufferPointer {
        let record = records[index]
        return UnsafeRawBufferPointer(rebasing: buffers[record.buffer].bytes[record.payload])
    }

    /// The payload of record `index`, copied.
    public func payload(_ index: Int) -> [UInt8] { withPayload(index) { Array($0) } }

    /// The records as values (payloads copied).
    public var values: [SpoolRecord] {
        records.indices.map { i in
            let r = records[i]
            return SpoolRecord(leaf: leaf(i), sequence: r.sequence, acquiredAtMs: r.acquiredAtMs, flags: r.flags, payload: payload(i))
        }
    }
}
