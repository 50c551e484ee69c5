/// A leaf's record offsets in one segment, in order, as LEB128 deltas: 2–3 bytes a record instead of 4 (the
/// spool's memory per buffered record, issue 3: ≤ 4 MB per million). Offsets only grow within a segment (it is
/// append-only), so every delta is positive. Read front to back with a cursor, as the leaf's FIFO drains.
struct OffsetList: Sendable {
    private var bytes: [UInt8] = []
    private(set) var count = 0
    private var last: UInt32 = 0
    /// The cursor: the byte where the next delta starts, the offset before it, and how many were taken.
    private var readPosition = 0
    private var readBase: UInt32 = 0
    private(set) var taken = 0

    init(_ first: UInt32) { append(first) }

    var remaining: Int { count - taken }

    mutating func append(_ offset: UInt32) {
        var delta = offset &- last
        last = offset
        count += 1
        while delta >= 0x80 {
            bytes.append(UInt8(delta & 0x7F) | 0x80)
            delta >>= 7
        }
        bytes.append(UInt8(delta))
    }

    /// The next offset not yet taken (nil when all are).
    var first: UInt32? {
        guard taken < count else { return nil }
        return decode().value
    }

    /// Takes the next offset.
    mutating func removeFirst() {
        guard taken < count else { return }
        let (value, length) = decode()
        readBase = value
        readPosition += length
        taken += 1
    }

    private func decode() -> (value: UInt32, length: Int) {
        var delta: UInt32 = 0
        var shift: UInt32 = 0
        var i = readPosition
        while true {
            let b = bytes[i]
            delta |= UInt32(b & 0x7F) << shift
            i += 1
            if b & 0x80 == 0 { break }
            shift += 7
        }
        return (readBase &+ delta, i - readPosition)
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
