/// A leaf's record offsets in one segment, in order, in 1–3 bytes each instead of 4 (the spool's memory per
/// buffered record, issue 3: ≤ 4 MB per million). Offsets only grow within a segment (it is append-only). Leaves
/// that report periodically interleave regularly, so the gap between a leaf's records barely changes: each entry
/// stores the change of the gap (zigzag, LEB128), usually one byte. Read front to back with a cursor.
struct OffsetList: Sendable {
    // 32-bit fields throughout: offsets and gaps within a segment are u32, counts cannot exceed the records of one
    // segment, and a buffered run costs this struct once per leaf and segment (issue 3's memory figure).
    private var bytes: [UInt8] = []
    private var storedCount: UInt32 = 0
    private var last: UInt32 = 0
    /// Offsets only grow within a segment, so a gap is never negative.
    private var lastGap: UInt32 = 0
    /// The cursor: the byte where the next entry starts, the offset and gap before it, how many were taken.
    private var readPosition: UInt32 = 0
    private var readBase: UInt32 = 0
    private var readGap: UInt32 = 0
    private var storedTaken: UInt32 = 0

    var count: Int { Int(storedCount) }
    var taken: Int { Int(storedTaken) }

    init(_ first: UInt32) { append(first) }

    var remaining: Int { count - taken }

    mutating func append(_ offset: UInt32) {
        let gap = offset &- last
        let change = Int64(gap) - Int64(lastGap)
        last = offset
        lastGap = gap
        storedCount += 1
        Varint.put(Varint.zigzag(change), &bytes)
    }

    /// The next offset not yet taken (nil when all are).
    var first: UInt32? {
        guard taken < count else { return nil }
        return decode().offset
    }

    /// Takes the next offset.
    mutating func removeFirst() {
        guard taken < count else { return }
        let (offset, gap, length) = decode()
        readBase = offset
        readGap = gap
        readPosition += UInt32(length)
        storedTaken += 1
    }

    private func decode() -> (offset: UInt32, gap: UInt32, length: Int) {
        var at = Int(readPosition)
        let zigzag = bytes.withUnsafeBytes { Varint.read($0, &at, end: $0.count) } ?? 0  // written by `append`: whole
        let gap = UInt32(truncatingIfNeeded: Int64(readGap) + Varint.unzigzag(zigzag))
        return (readBase &+ gap, gap, at - Int(readPosition))
    }

    /// Drops the growth slack (a sealed segment's lists never grow again), and what was taken already.
    mutating func compact() {
        var exact = [UInt8]()
        exact.reserveCapacity(bytes.count - Int(readPosition))
        exact.append(contentsOf: bytes[Int(readPosition)...])
        bytes = exact
        readPosition = 0
    }
}
