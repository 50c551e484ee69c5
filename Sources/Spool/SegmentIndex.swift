/// A sealed segment's record headers, written beside it (`<first sequence>.idx`) when it is sealed, so recovery
/// reads a few bytes per record instead of the whole segment: reopening costs what the active segment holds, not
/// what the spool holds (issue 3: recovery depends on the tail, ≤ 1 s for 1 GB).
///
/// An index is only a shortcut. It describes exactly one segment size; a missing, torn, CRC-failing or stale index
/// (the segment's size differs) is ignored and the segment is scanned as before. No fsync: losing it costs a scan.
/// A record the index lists is still CRC-checked when it is read for delivery; a bad one is skipped and counted.
///
/// Built while the segment is written (a few bytes a record, in memory for the active segment only, in file order),
/// so sealing neither reads the segment back nor writes much: each record is LEB128 deltas from the one before it.
///
/// The file groups the records by leaf, so one leaf's records in a segment can be read without walking everyone's:
/// a leaf that drains behind the others lists a segment on its own (`Spool.list(for:)`) with one small read.
///
/// Format, version 2 (little endian): "FGIX", u8 version 2, u64 segment size, u32 leaf count, each leaf as u16
/// length + UTF-8, then each leaf's section size (u32, in the same order), u32 record count, then the sections in
/// that order: a leaf's records in file order, each as sequence − previous, offset − previous (unsigned LEB128) and
/// acquisition time − previous (zigzag LEB128), the first from zero, then a CRC32C of the section; then a CRC32C of
/// everything before it. Version 1 (until December 2026) held the records in file order, each naming its leaf; it
/// is still read.
struct SegmentIndex: Sendable {
    static let magic: [UInt8] = Array("FGIX".utf8)
    static let version: UInt8 = 2

    /// By the name's UTF-8 bytes, as `LeafQueues` tells leaves apart (String equality would join spellings it
    /// keeps apart).
    private var leaves: [[UInt8]: UInt32] = [:]
    private var names: [String] = []
    /// The spool's leaf slot → this index's leaf number + 1 (0: not seen yet): the append path needs no hash.
    private var numberBySlot: [UInt32] = []
    /// The records so far (`bodyCount` bytes), then zeros: room the next records are written into.
    private var body: [UInt8] = []
    private var bodyCount = 0
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

    /// The same, for a leaf the spool knows by `slot` (LeafQueues); its name is asked for on the leaf's first
    /// record in the segment only (passing it retained and released it for every record).
    mutating func add(slot: Int32, leaf: @autoclosure () -> String, sequence: UInt64, acquiredAtMs: Int64, at offset: Int) {
        let i = Int(slot)
        if i >= numberBySlot.count { numberBySlot.append(contentsOf: repeatElement(0, count: i + 1 - numberBySlot.count)) }
        if numberBySlot[i] == 0 { numberBySlot[i] = number(of: leaf()) + 1 }
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
        // The four varints (at most ten bytes each) written together, in place: four appends cost ~280
        // instructions a record, one append of the four ~100. The zeros written ahead are an eighth of what is
        // there (the array's capacity grows by doubling, so the bytes are copied about once; only what is written
        // is resident).
        if body.count - bodyCount < 40 { body.append(contentsOf: repeatElement(0, count: Swift.max(256, body.count / 8))) }
        let at = bodyCount
        bodyCount += body.withUnsafeMutableBytes { raw in
            let out = raw.baseAddress! + at
            var n = Varint.write(UInt64(leafNumber), to: out)
            n += Varint.write(sequence &- lastSequence, to: out + n)
            n += Varint.write(UInt64(offset) &- lastOffset, to: out + n)
            n += Varint.write(Varint.zigzag(acquiredAtMs &- lastAcquired), to: out + n)
            return n
        }
        lastSequence = sequence
        lastOffset = UInt64(offset)
        lastAcquired = acquiredAtMs
        count += 1
    }

    /// The index file (version 2): the records grouped by leaf, each leaf's in file order (see the type's comment).
    func encoded(segmentSize: Int) -> [UInt8] {
        // Two passes over the body, which is in file order: the first sizes each leaf's section, the second writes
        // each record at its leaf's place. No array of the records (a segment holds ~31,000 of them).
        let leafCount = names.count
        var sizes = [Int](repeating: 0, count: leafCount)
        var previous = [Previous](repeating: Previous(), count: leafCount)
        walkBody { leaf, sequence, offset, acquired in
            sizes[leaf] += previous[leaf].advance(sequence, offset, acquired, to: nil)
        }
        var out = Self.magic + [Self.version]
        let namesBytes = names.reduce(0) { $0 + 2 + Swift.min($1.utf8.count, Int(UInt16.max)) }
        out.reserveCapacity(5 + 8 + 4 + namesBytes + 4 * leafCount + 4 + sizes.reduce(0, +) + 4 * leafCount + 4)
        Self.put(UInt64(segmentSize), &out)
        Self.put(UInt32(leafCount), &out)
        for n in names {
            let u = Array(n.utf8.prefix(Int(UInt16.max)))
            Self.put(UInt16(u.count), &out)
            out += u
        }
        for size in sizes { Self.put(UInt32(size + 4), &out) }  // each section ends with its CRC
        Self.put(UInt32(count), &out)
        var cursor = [Int](repeating: 0, count: leafCount)
        var at = out.count
        for leaf in 0..<leafCount {
            cursor[leaf] = at
            at += sizes[leaf] + 4
        }
        let sectionsStart = out.count
        out.append(contentsOf: repeatElement(0, count: at - sectionsStart))
        previous = [Previous](repeating: Previous(), count: leafCount)
        out.withUnsafeMutableBytes { b in
            walkBody { leaf, sequence, offset, acquired in
                cursor[leaf] += previous[leaf].advance(sequence, offset, acquired, to: b.baseAddress! + cursor[leaf])
            }
            var start = sectionsStart
            for leaf in 0..<leafCount {
                let crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: b[start..<(start + sizes[leaf])]))
                b.storeBytes(of: crc.littleEndian, toByteOffset: start + sizes[leaf], as: UInt32.self)
                start += sizes[leaf] + 4
            }
        }
        Self.put(CRC32C.checksum(out), &out)
        return out
    }

    /// A leaf's previous record in its section: each record is stored as deltas from it.
    private struct Previous {
        var sequence: UInt64 = 0
        var offset: UInt64 = 0
        var acquired: Int64 = 0

        /// Writes the record's three varints at `out` (nil: only counts them); returns their size.
        mutating func advance(_ sequence: UInt64, _ offset: UInt64, _ acquired: Int64, to out: UnsafeMutableRawPointer?) -> Int {
            let values = (sequence &- self.sequence, offset &- self.offset, Varint.zigzag(acquired &- self.acquired))
            self.sequence = sequence
            self.offset = offset
            self.acquired = acquired
            guard let out else { return Varint.size(values.0) + Varint.size(values.1) + Varint.size(values.2) }
            var n = Varint.write(values.0, to: out)
            n += Varint.write(values.1, to: out + n)
            return n + Varint.write(values.2, to: out + n)
        }
    }

    /// The in-memory body's records in file order: leaf number, sequence, offset, acquisition time.
    private func walkBody(_ visit: (Int, UInt64, UInt64, Int64) -> Void) {
        body.withUnsafeBytes { all in
            let b = UnsafeRawBufferPointer(rebasing: all[..<bodyCount])
            var at = 0
            var sequence: UInt64 = 0, offset: UInt64 = 0, acquired: Int64 = 0
            while at < b.count {
                // Written by `add`: always four whole varints.
                let leaf = Varint.read(b, &at, end: b.count)!
                sequence = sequence &+ Varint.read(b, &at, end: b.count)!
                offset = offset &+ Varint.read(b, &at, end: b.count)!
                acquired = acquired &+ Varint.unzigzag(Varint.read(b, &at, end: b.count)!)
                visit(Int(leaf), sequence, offset, acquired)
            }
        }
    }

    /// The records (payloads empty) with their offsets, in file order, or nil when `bytes` is not a valid index for
    /// a segment of `segmentSize` bytes.
    static func decode(_ bytes: [UInt8], segmentSize: Int) -> [(SpoolRecord, Int)]? {
        var records: [(SpoolRecord, Int)] = []
        guard forEach(bytes, segmentSize: segmentSize, { records.append(($0, $1)) }) else { return nil }
        return records.sorted { $0.1 < $1.1 }
    }

    /// Checks `bytes` whole (CRC, structure), then hands each record to `visit` — a version 2 index leaf by leaf,
    /// each leaf's in file order; a version 1 index in file order; false (and no visit) when it is not a valid index
    /// for a segment of `segmentSize` bytes. Recovery streams an index this way: no array of every record, whose
    /// freed pages would stay in the process.
    static func forEach(_ bytes: [UInt8], segmentSize: Int, _ visit: (SpoolRecord, Int) -> Void) -> Bool {
        guard bytes.count > 4 else { return false }
        switch bytes[4] {
        case 1:
            guard walkVersion1(bytes, segmentSize: segmentSize, { _, _ in }) else { return false }
            return walkVersion1(bytes, segmentSize: segmentSize, visit)
        case version:
            guard let directory = LeafSections(bytes, segmentSize: segmentSize) else { return false }
            return bytes.withUnsafeBytes { b in
                var records = 0
                for section in directory.sections {
                    guard walkSection(UnsafeRawBufferPointer(rebasing: b[section]), segmentSize: segmentSize, { _, _, _ in records += 1 }) else { return false }
                }
                guard records == directory.recordCount else { return false }
                for (leaf, section) in directory.sections.enumerated() {
                    let name = directory.names[leaf]
                    _ = walkSection(UnsafeRawBufferPointer(rebasing: b[section]), segmentSize: segmentSize) { sequence, offset, acquired in
                        visit(SpoolRecord(leaf: name, sequence: sequence, acquiredAtMs: acquired, payload: []), offset)
                    }
                }
                return true
            }
        default:
            return false
        }
    }

    /// This (in-memory) index's records, in file order.
    func forEach(segmentSize: Int, _ visit: (SpoolRecord, Int) -> Void) {
        walkBody { leaf, sequence, offset, acquired in
            visit(SpoolRecord(leaf: names[leaf], sequence: sequence, acquiredAtMs: acquired, payload: []), Int(offset))
        }
    }

    /// Where each leaf's section lies in a version 2 index: a leaf's records can be read on their own (`pread` of
    /// its range, `forEach(section:)`) without walking everyone's.
    struct LeafSections {
        var names: [String] = []
        /// By leaf, in the order of `names`: the byte range of its section in the index file (its CRC included).
        var sections: [Range<Int>] = []
        /// The records the header says the sections hold.
        var recordCount = 0

        /// nil unless `bytes` is a whole, valid version 2 index for a segment of `segmentSize` bytes (its CRC is
        /// checked; the sections' contents are checked when they are read).
        init?(_ bytes: [UInt8], segmentSize: Int) {
            let valid = bytes.withUnsafeBytes { b -> Bool in
                guard segmentSize >= 0, b.count >= 4 + 1 + 8 + 4 + 4 + 4, Array(b[0..<4]) == magic, b[4] == version else { return false }
                let end = b.count - 4
                guard CRC32C.checksum(UnsafeRawBufferPointer(rebasing: b[0..<end])) == RecordCodec.read32(b, end) else { return false }
                var at = 5
                guard at + 12 <= end, RecordCodec.read64(b, at) == UInt64(segmentSize) else { return false }
                at += 8
                let leafCount = Int(RecordCodec.read32(b, at))
                at += 4
                guard leafCount <= (end - at) / 6 else { return false }  // a name's length and a section's, at least
                names.reserveCapacity(leafCount)
                for _ in 0..<leafCount {
                    guard at + 2 <= end else { return false }
                    let n = Int(UInt16(b[at]) | UInt16(b[at + 1]) << 8)
                    at += 2
                    guard at + n <= end else { return false }
                    names.append(String(decoding: UnsafeRawBufferPointer(rebasing: b[at..<(at + n)]), as: UTF8.self))
                    at += n
                }
                guard at + 4 * leafCount + 4 <= end else { return false }
                recordCount = Int(RecordCodec.read32(b, at + 4 * leafCount))
                var start = at + 4 * leafCount + 4
                sections.reserveCapacity(leafCount)
                for leaf in 0..<leafCount {
                    let size = Int(RecordCodec.read32(b, at + 4 * leaf))
                    guard size >= 4, size <= end - start else { return false }
                    sections.append(start..<(start + size))
                    start += size
                }
                return start == end
            }
            guard valid else { return nil }
        }
    }

    /// The records of one leaf's section (`bytes`: exactly its range, CRC included), in file order: sequence,
    /// offset, acquisition time. False (and no visit) when the section is damaged.
    static func forEach(section bytes: [UInt8], segmentSize: Int, _ visit: (UInt64, Int, Int64) -> Void) -> Bool {
        guard isValid(section: bytes, segmentSize: segmentSize) else { return false }
        forEach(checkedSection: bytes, segmentSize: segmentSize, visit)
        return true
    }

    /// Whether `bytes` is a sound section (its CRC, its records' structure) for a segment of `segmentSize` bytes.
    static func isValid(section bytes: [UInt8], segmentSize: Int) -> Bool {
        bytes.withUnsafeBytes { walkSection($0, segmentSize: segmentSize, { _, _, _ in }) }
    }

    /// `forEach(section:)` for a section `isValid` accepted.
    static func forEach(checkedSection bytes: [UInt8], segmentSize: Int, _ visit: (UInt64, Int, Int64) -> Void) {
        _ = bytes.withUnsafeBytes { walkSection($0, segmentSize: segmentSize, visit) }
    }

    private static func walkSection(_ b: UnsafeRawBufferPointer, segmentSize: Int, _ visit: (UInt64, Int, Int64) -> Void) -> Bool {
        guard b.count >= 4 else { return false }
        let end = b.count - 4
        guard CRC32C.checksum(UnsafeRawBufferPointer(rebasing: b[0..<end])) == RecordCodec.read32(b, end) else { return false }
        var at = 0
        var sequence: UInt64 = 0, offset: UInt64 = 0, acquired: Int64 = 0
        var first = true
        while at < end {
            guard let ds = Varint.read(b, &at, end: end), let doff = Varint.read(b, &at, end: end), let za = Varint.read(b, &at, end: end) else { return false }
            // Sequences wrap as they were encoded (a salvaged segment may hold them out of order); offsets only grow.
            let (o, overflow) = offset.addingReportingOverflow(doff)
            guard !overflow, o < UInt64(segmentSize), first || doff > 0 else { return false }
            first = false
            sequence = sequence &+ ds
            offset = o
            acquired = acquired &+ Varint.unzigzag(za)
            visit(sequence, Int(offset), acquired)
        }
        return true
    }

    /// A version 1 index (records in file order, each naming its leaf), as written until December 2026: still read.
    private static func walkVersion1(_ bytes: [UInt8], segmentSize: Int, _ visit: (SpoolRecord, Int) -> Void) -> Bool {
        bytes.withUnsafeBytes { b -> Bool in
            guard segmentSize >= 0, b.count >= 4 + 1 + 8 + 4 + 4 + 4, Array(b[0..<4]) == magic, b[4] == 1 else { return false }
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
