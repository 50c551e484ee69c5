/// A leaf's record offsets in one segment, in order, in 1–3 bytes each instead of 4 (the spool's memory per
/// buffered record, issue 3: ≤ 4 MB per million). Offsets only grow within a segment (it is append-only). Leaves
/// that report periodically interleave regularly, so the gap between a leaf's records barely changes: each entry
/// stores the change of the gap (zigzag, LEB128), usually one byte. Read front to back with a cursor.
struct OffsetList: Sendable {
    private var bytes: [UInt8] = []
    private(set) var count = 0
    private var last: UInt32 = 0
    private var lastGap: Int64 = 0
    /// The cursor: the byte where the next entry starts, the offset and gap before it, how many were taken.
    private var readPosition = 0
    private var readBase: UInt32 = 0
    private var readGap: Int64 = 0
    private(set) var taken = 0

    init(_ first: UInt32) { append(first) }

    var remaining: Int { count - taken }

    mutating func append(_ offset: UInt32) {
        let gap = Int64(offset) - Int64(last)
        let change = gap - lastGap
        last = offset
        lastGap = gap
        count += 1
        var zigzag = UInt64(bitPattern: (change << 1) ^ (change >> 63))
        while zigzag >= 0x80 {
            bytes.append(UInt8(zigzag & 0x7F) | 0x80)
            zigzag >>= 7
        }
        bytes.append(UInt8(zigzag))
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
        readPosition += length
        taken += 1
    }

    private func decode() -> (offset: UInt32, gap: Int64, length: Int) {
        var zigzag: UInt64 = 0
        var shift: UInt64 = 0
        var i = readPosition
        while true {
            let b = bytes[i]
            zigzag |= UInt64(b & 0x7F) << shift
            i += 1
            if b & 0x80 == 0 { break }
            shift += 7
        }
        let change = Int64(bitPattern: zigzag >> 1) ^ -Int64(bitPattern: zigzag & 1)
        let gap = readGap + change
        return (UInt32(truncatingIfNeeded: Int64(readBase) + gap), gap, i - readPosition)
    }

    /// Drops the growth slack (a sealed segment's lists never grow again), and what was taken already.
    mutating func compact() {
        var exact = [UInt8]()
        exact.reserveCapacity(bytes.count - readPosition)
        exact.append(contentsOf: bytes[readPosition...])
        bytes = exact
        readPosition = 0
    }
}
