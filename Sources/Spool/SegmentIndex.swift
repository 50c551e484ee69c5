/// A sealed segment's record headers, written beside it (`<first sequence>.idx`) when it is sealed, so recovery
/// reads a few bytes per record instead of the whole segment: reopening costs what the active segment holds, not
/// what the spool holds (issue 3: recovery depends on the tail, ≤ 1 s for 1 GB).
///
/// An index is only a shortcut. It describes exactly one segment size; a missing, torn, CRC-failing or stale index
/// (the segment's size differs) is ignored and the segment is scanned as before. No fsync: losing it costs a scan.
/// A record the index lists is still CRC-checked when it is read for delivery; a bad one is skipped and counted.
///
/// Built while the segment is written (a few bytes a record, in memory for the active segment only), so sealing
/// neither reads the segment back nor writes much: each record is LEB128 deltas from the one before it.
///
/// Format (little endian): "FGIX", u8 version 1, u64 segment size, u32 leaf count, each leaf as u16 length +
/// UTF-8, u32 record count, then per record: leaf index, sequence − previous sequence, offset − previous offset
/// (unsigned LEB128) and acquisition time − previous (zigzag LEB128); then a CRC32C of everything before it.
struct SegmentIndex: Sendable {
    static let magic: [UInt8] = Array("FGIX".utf8)
    static let version: UInt8 = 1

    /// By the name's UTF-8 bytes, as `LeafQueues` tells leaves apart (String equality would join spellings it
    /// keeps apart).
    private var leaves: [[UInt8]: UInt32] = [:]
    private var names: [String] = []
    /// The spool's leaf slot → this index's leaf number + 1 (0: not seen yet): the append path needs no hash.
    private var numberBySlot: [UInt32] = []
    private var body: [UInt8] = []
    private(set) var count = 0
    private var lastSequence: UInt64 = 0
    private var lastOffset: UInt64 = 0
    private var lastAcquired: Int64 = 0

    init() {}

    init(records: [(SpoolRecord, Int)]) {
        for (r, at) in records { add(r, at: at) }
    }

    static func path(ofSegment segmentPath: String) -> String { String(segmentPath.dropLast(4)) + ".idx" }

    /// Records arrive in file order (offsets grow).
    mutating func add(_ r: SpoolRecord, at offset: Int) {
        add(leafNumber: number(of: r.leaf), sequence: r.sequence, acquiredAtMs: r.acquiredAtMs, at: offset)
    }

    /// The same, for a leaf the spool knows by `slot` (LeafQueues).
    mutating func add(slot: Int32, leaf: String, sequence: UInt64, acquiredAtMs: Int64, at offset: Int) {
        let i = Int(slot)
        if i >= numberBySlot.count { numberBySlot.append(contentsOf: repeatElement(0, count: i + 1 - numberBySlot.count)) }
        if numberBySlot[i] == 0 { numberBySlot[i] = number(of: leaf) + 1 }
        add(leafNumber: numberBySlot[i] - 1, sequence: sequence, acquiredAtMs: acquiredAtMs, at: offset)
    }

    private mutating func number(of leaf: String) -> UInt32 {
        let key = Array(leaf.utf8)
        if let known = leaves[key] { return known }
        let number = UInt32(names.count)
        leaves[key] = number
        names.append(leaf)
        return number
    }

    private mutating func add(leafNumber: UInt32, sequence: UInt64, acquiredAtMs: Int64, at offset: Int) {
        // The four varints written together and appended once (four appends cost ~280 instructions a record).
        withUnsafeTemporaryAllocation(byteCount: 40, alignment: 1) { buffer in
            let out = buffer.baseAddress!
            var n = Varint.write(UInt64(leafNumber), to: out)
            n += Varint.write(sequence &- lastSequence, to: out + n)
            n += Varint.write(UInt64(offset) &- lastOffset, to: out + n)
            n += Varint.write(Varint.zigzag(acquiredAtMs &- lastAcquired), to: out + n)
            body.append(contentsOf: UnsafeRawBufferPointer(rebasing: buffer[..<n]))
        }
        lastSequence = sequence
        lastOffset = UInt64(offset)
        lastAcquired = acquiredAtMs
        count += 1
    }

    func encoded(segmentSize: Int) -> [UInt8] {
        var out = Self.magic + [Self.version]
        out.reserveCapacity(32 + names.reduce(0) { $0 + 2 + $1.utf8.count } + body.count)
        Self.put(UInt64(segmentSize), &out)
        Self.put(UInt32(names.count), &out)
        for n in names {
            let u = Array(n.utf8.prefix(Int(UInt16.max)))
            Self.put(UInt16(u.count), &out)
            out += u
        }
        Self.put(UInt32(count), &out)
        out += body
        Self.put(CRC32C.checksum(out), &out)
        return out
    }

    /// The records (payloads empty) with their offsets, or nil when `bytes` is not a valid index for a segment of
    /// `segmentSize` bytes.
    static func decode(_ bytes: [UInt8], segmentSize: Int) -> [(SpoolRecord, Int)]? {
        var records: [(SpoolRecord, Int)] = []
        guard walk(bytes, segmentSize: segmentSize, { records.append(($0, $1)) }) else { return nil }
        return records
    }

    /// Checks `bytes` whole (CRC, structure), then hands each record to `visit` in file order; false (and no visit)
    /// when it is not a valid index for a segment of `segmentSize` bytes. Recovery streams an index this way: no
    /// array of every record, whose freed pages would stay in the process.
    static func forEach(_ bytes: [UInt8], segmentSize: Int, _ visit: (SpoolRecord, Int) -> Void) -> Bool {
        guard walk(bytes, segmentSize: segmentSize, { _, _ in }) else { return false }
        return walk(bytes, segmentSize: segmentSize, visit)
    }

    /// This (in-memory) index's records, in file order: no check of bytes it wrote itself.
    func forEach(segmentSize: Int, _ visit: (SpoolRecord, Int) -> Void) {
        _ = Self.walk(encoded(segmentSize: segmentSize), segmentSize: segmentSize, visit)
    }

    private static func walk(_ bytes: [UInt8], segmentSize: Int, _ visit: (SpoolRecord, Int) -> Void) -> Bool {
        bytes.withUnsafeBytes { b -> Bool in
            guard segmentSize >= 0, b.count >= 4 + 1 + 8 + 4 + 4 + 4, Array(b[0..<4]) == magic, b[4] == version else { return false }
            let end = b.count - 4
            guard CRC32C.checksum(UnsafeRawBufferPointer(rebasing: b[0..<end])) == RecordCodec.read32(b, end) else { return false }
            var at = 5
            func u16() -> Int? { guard at + 2 <= end else { return nil }; defer { at += 2 }; return Int(UInt16(b[at]) | UInt16(b[at + 1]) << 8) }
            func u32() -> UInt32? { guard at + 4 <= end else { return nil }; defer { at += 4 }; return RecordCodec.read32(b, at) }
            func u64() -> UInt64? { guard at + 8 <= end else { return nil }; defer { at += 8 }; return RecordCodec.read64(b, at) }
            func varint() -> UInt64? { Varint.read(b, &at, end: end) }
            guard let size = u64(), size == UInt64(segmentSize), let leafCount = u32() else { return false }
            var names: [String] = []
            for _ in 0..<leafCount {
                guard let n = u16(), at + n <= end else { return false }
                names.append(String(decoding: UnsafeRawBufferPointer(rebasing: b[at..<(at + n)]), as: UTF8.self))
                at += n
            }
            guard let count = u32(), Int(count) <= end - at else { return false }  // at least a byte a field
            var sequence: UInt64 = 0, offset: UInt64 = 0, acquired: Int64 = 0
            for i in 0..<count {
                guard let leaf = varint(), leaf < UInt64(names.count), let ds = varint(), let doff = varint(), let za = varint() else { return false }
                // Sequences wrap as they were encoded (a salvaged segment may hold them out of order); offsets only grow.
                let (o, overflowO) = offset.addingReportingOverflow(doff)
                guard !overflowO, o < UInt64(segmentSize), i == 0 || doff > 0 else { return false }
                sequence = sequence &+ ds
                offset = o
                acquired = acquired &+ Varint.unzigzag(za)
                visit(SpoolRecord(leaf: names[Int(leaf)], sequence: sequence, acquiredAtMs: acquired, payload: []), Int(offset))
            }
            return at == end
        }
    }

    private static func put<T: FixedWidthInteger>(_ v: T, _ out: inout [UInt8]) {
        withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) }
    }
}
