/// What a segment's bytes hold: its valid records, corrupt regions and whether it ends in a torn tail. Pure, so
/// recovery and the fuzzer run the same code.
public struct SegmentScan {
    /// Valid records (headers only: payloads are not copied) with their offsets, in file order.
    public private(set) var records: [(SpoolRecord, Int)] = []
    /// Byte ranges that hold no valid record (quarantined by recovery).
    public private(set) var corruptRegions: [Range<Int>] = []
    /// Valid records found after a corrupt region.
    public private(set) var salvaged = 0
    /// End of the last valid record.
    public private(set) var validEnd = 0
    /// The bytes after the last valid record are an incomplete record, not corruption.
    public private(set) var tornTail = false

    public init(scanning raw: UnsafeRawBufferPointer) {
        self.init(scanning: raw, keepRecords: true) { _, _ in }
    }

    /// Hands each valid record to `visit` as it is found; `keepRecords: false` leaves `records` empty.
    init(scanning raw: UnsafeRawBufferPointer, keepRecords: Bool, _ visit: (SpoolRecord, Int) -> Void) {
        var offset = 0
        var corruptStart: Int?
        while offset < raw.count {
            switch RecordCodec.decode(raw, at: offset, payload: false) {
            case .record(let r, let size):
                if let start = corruptStart {
                    corruptRegions.append(start..<offset)
                    corruptStart = nil
                }
                if !corruptRegions.isEmpty { salvaged += 1 }
                if keepRecords { records.append((r, offset)) }
                visit(r, offset)
                offset += size
                validEnd = offset
            case .truncated where corruptStart == nil && !Self.hasValidRecord(raw, after: offset):
                tornTail = true
                offset = raw.count
            case .corrupt, .truncated:
                if corruptStart == nil { corruptStart = offset }
                offset += 1  // resynchronise byte by byte; CRC32C rejects false starts
            }
        }
        if let start = corruptStart { corruptRegions.append(start..<raw.count) }
    }

    /// True if a valid record starts anywhere after `offset` (a frame that only looks truncated is then corruption,
    /// e.g. a flipped length bit, not a torn tail).
    static func hasValidRecord(_ raw: UnsafeRawBufferPointer, after offset: Int) -> Bool {
        var at = offset + 1
        while at + RecordCodec.prefixSize + RecordCodec.minimumHeaderSize <= raw.count {
            if case .record = RecordCodec.decode(raw, at: at) { return true }
            at += 1
        }
        return false
    }
}

/// Entry points for fuzzing the decoders of untrusted bytes (segments and ledger).
public enum SpoolFuzzing {
    /// Scans `bytes` as a segment and as a ledger; checks the invariants the scan promises. Traps on a violation.
    public static func check(_ bytes: UnsafeRawBufferPointer) {
        let scan = SegmentScan(scanning: bytes)
        var previousEnd = 0
        for (r, at) in scan.records {
            precondition(at >= previousEnd, "records overlap")
            guard case .record(let again, let size) = RecordCodec.decode(bytes, at: at, payload: false) else { preconditionFailure("record does not decode again") }
            precondition(again == r, "decode is not deterministic")
            previousEnd = at + size
        }
        precondition(scan.validEnd <= bytes.count)
        _ = LedgerFile.decode(Array(bytes))
        // A segment index: the scan's records survive encode → decode; arbitrary bytes decode or are refused.
        let index = SegmentIndex(records: scan.records).encoded(segmentSize: bytes.count)
        let back = SegmentIndex.decode(index, segmentSize: bytes.count)
        precondition(back?.count == scan.records.count, "an index does not round-trip")
        for ((a, x), (b, y)) in zip(scan.records, back ?? []) {
            precondition(x == y && a.leaf == b.leaf && a.sequence == b.sequence && a.acquiredAtMs == b.acquiredAtMs, "index entry differs")
        }
        _ = SegmentIndex.decode(Array(bytes), segmentSize: bytes.count >= 13 ? Int(truncatingIfNeeded: RecordCodec.read64(bytes, 5)) : 0)
    }
}
