/// A sealed segment's record headers, written beside it (`<first sequence>.idx`) when it is sealed, so recovery
/// reads a few bytes per record instead of the whole segment: reopening costs what the active segment holds, not
/// what the spool holds (issue 3: recovery depends on the tail, ≤ 1 s for 1 GB).
///
/// An index is only a shortcut. It describes exactly one segment size; a missing, torn, CRC-failing or stale index
/// (the segment's size differs) is ignored and the segment is scanned as before. No fsync: losing it costs a scan.
/// A record the index lists is still CRC-checked when it is read for delivery; a bad one is skipped and counted.
///
/// Format (little endian): "FGIX", u8 version 1, u64 segment size, u32 leaf count, each leaf as u16 length +
/// UTF-8, u32 record count, each record as u32 leaf index, u64 sequence, i64 acquisition time, u32 offset; then a
/// CRC32C of everything before it.
enum SegmentIndex {
    static let magic: [UInt8] = Array("FGIX".utf8)
    static let version: UInt8 = 1

    static func path(ofSegment segmentPath: String) -> String { String(segmentPath.dropLast(4)) + ".idx" }

    static func encode(segmentSize: Int, records: [(SpoolRecord, Int)]) -> [UInt8] {
        var leaves: [String: UInt32] = [:]
        var names: [String] = []
        for (r, _) in records where leaves[r.leaf] == nil {
            leaves[r.leaf] = UInt32(names.count)
            names.append(r.leaf)
        }
        var out = magic + [version]
        out.reserveCapacity(32 + names.reduce(0) { $0 + 2 + $1.utf8.count } + records.count * 24)
        put(UInt64(segmentSize), &out)
        put(UInt32(names.count), &out)
        for n in names {
            let u = Array(n.utf8.prefix(Int(UInt16.max)))
            put(UInt16(u.count), &out)
            out += u
        }
        put(UInt32(records.count), &out)
        for (r, offset) in records {
            put(leaves[r.leaf]!, &out)
            put(r.sequence, &out)
            put(UInt64(bitPattern: r.acquiredAtMs), &out)
            put(UInt32(offset), &out)
        }
        put(CRC32C.checksum(out), &out)
        return out
    }

    /// The records (payloads empty) with their offsets, or nil when the index is not a valid one for a segment of
    /// `segmentSize` bytes.
    static func decode(_ bytes: [UInt8], segmentSize: Int) -> [(SpoolRecord, Int)]? {
        bytes.withUnsafeBytes { b -> [(SpoolRecord, Int)]? in
            guard b.count >= 4 + 1 + 8 + 4 + 4 + 4, Array(b[0..<4]) == magic, b[4] == version else { return nil }
            let crcAt = b.count - 4
            guard CRC32C.checksum(UnsafeRawBufferPointer(rebasing: b[0..<crcAt])) == RecordCodec.read32(b, crcAt) else { return nil }
            var at = 5
            func u16() -> Int? { guard at + 2 <= crcAt else { return nil }; defer { at += 2 }; return Int(UInt16(b[at]) | UInt16(b[at + 1]) << 8) }
            func u32() -> UInt32? { guard at + 4 <= crcAt else { return nil }; defer { at += 4 }; return RecordCodec.read32(b, at) }
            func u64() -> UInt64? { guard at + 8 <= crcAt else { return nil }; defer { at += 8 }; return RecordCodec.read64(b, at) }
            guard segmentSize >= 0, let size = u64(), size == UInt64(segmentSize), let leafCount = u32() else { return nil }
            var names: [String] = []
            for _ in 0..<leafCount {
                guard let n = u16(), at + n <= crcAt else { return nil }
                names.append(String(decoding: UnsafeRawBufferPointer(rebasing: b[at..<(at + n)]), as: UTF8.self))
                at += n
            }
            guard let count = u32(), crcAt - at == Int(count) * 24 else { return nil }
            var records: [(SpoolRecord, Int)] = []
            records.reserveCapacity(Int(count))
            for _ in 0..<count {
                guard let leaf = u32(), Int(leaf) < names.count, let sequence = u64(), let acquired = u64(), let offset = u32(),
                      Int(offset) < segmentSize else { return nil }
                records.append((SpoolRecord(leaf: names[Int(leaf)], sequence: sequence, acquiredAtMs: Int64(bitPattern: acquired), payload: []), Int(offset)))
            }
            return records
        }
    }

    private static func put<T: FixedWidthInteger>(_ v: T, _ out: inout [UInt8]) {
        withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) }
    }
}
