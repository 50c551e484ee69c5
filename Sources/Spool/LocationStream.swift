/// A leaf's queued records — where each lives (segment, offset) — in order, across segments, in about a byte a
/// record: the spool's memory per buffered record (issue 21: ≤ 2 MB a million, 1000 leaves interleaved).
///
/// One byte buffer per leaf, not one per segment: with a thousand leaves a segment holds a few dozen records of
/// each, and a buffer of its own per leaf and segment cost more than the records in it. Leaves that report
/// periodically interleave regularly, so the gap between a leaf's consecutive records barely changes, also from
/// one segment to the next: a record is the change of the gap (zigzag LEB128, plus one), usually one byte. A record
/// that starts a run in another segment is a 0 byte, the segment and the offset. Taken from the front with a
/// cursor; the taken prefix is dropped once it is the larger part.
struct LocationStream: Sendable {
    private var bytes: [UInt8] = []
    /// Records not yet taken.
    private(set) var count = 0
    // The writer: the last record appended (the gap carries over from one segment to the next).
    private var lastSegment: UInt32 = 0
    private var lastOffset: UInt32 = 0
    private var lastGap: UInt32 = 0
    /// Segments never go down along the stream (records are appended in file order, and given back to the front
    /// in order): forgetting a segment's records then only looks at the front.
    private var segmentsAscend = true
    // The reader: where the next record starts, and the record before it.
    private var readPosition = 0
    private var readSegment: UInt32 = 0
    private var readOffset: UInt32 = 0
    private var readGap: UInt32 = 0

    var isEmpty: Bool { count == 0 }
    /// The bytes held for the records not yet taken.
    var byteCount: Int { bytes.count - readPosition }

    mutating func append(segment: UInt32, offset: UInt32) {
        // Room first, checked here rather than by a call per record.
        if bytes.capacity - bytes.count < 21 { reserveForAppend() }
        if count == 0 || segment != lastSegment || offset < lastOffset {
            if count > 0 && segment < lastSegment { segmentsAscend = false }
            bytes.append(0)
            Varint.put(UInt64(segment), &bytes)
            Varint.put(UInt64(offset), &bytes)
            lastSegment = segment
        } else {
            let gap = offset &- lastOffset
            let change = Varint.zigzag(Int64(gap) - Int64(lastGap)) + 1
            // Mostly one byte: appended here rather than through `Varint.put`.
            if change < 0x80 { bytes.append(UInt8(truncatingIfNeeded: change)) } else { Varint.put(change, &bytes) }
            lastGap = gap
        }
        lastOffset = offset
        count += 1
    }

    /// The next record, without taking it.
    var first: (segment: UInt32, offset: UInt32)? {
        guard count > 0 else { return nil }
        let next = decode()
        return (next.segment, next.offset)
    }

    /// Takes the next record.
    mutating func removeFirst() -> (segment: UInt32, offset: UInt32)? {
        guard count > 0 else { return nil }
        let next = decode()
        readPosition = next.end
        readSegment = next.segment
        readOffset = next.offset
        readGap = next.gap
        count -= 1
        if count == 0 {
            segmentsAscend = true
            // Drained: a small buffer stays for the next records, a large one goes.
            bytes.removeAll(keepingCapacity: bytes.capacity <= 256)
            readPosition = 0
        } else if readPosition >= 4096, readPosition * 2 >= bytes.count {
            bytes.removeSubrange(0..<readPosition)
            readPosition = 0
        }
        return (next.segment, next.offset)
    }

    /// Every record not yet taken, in order.
    var all: [(segment: UInt32, offset: UInt32)] {
        var copy = self
        var out: [(segment: UInt32, offset: UInt32)] = []
        out.reserveCapacity(count)
        while let r = copy.removeFirst() { out.append(r) }
        return out
    }

    /// Records put in front of the ones not yet taken (a failed read gives them back).
    mutating func prepend(_ records: [(segment: UInt32, offset: UInt32)]) {
        guard !records.isEmpty else { return }
        rebuild(records + all)
    }

    /// Forgets the records in `segment`; returns how many there were.
    mutating func remove(segment: UInt32) -> Int {
        if segmentsAscend, let front = first?.segment, front >= segment {
            var removed = 0
            while first?.segment == segment {
                _ = removeFirst()
                removed += 1
            }
            return removed
        }
        let kept = all.filter { $0.segment != segment }
        let removed = count - kept.count
        if removed > 0 { rebuild(kept) }
        return removed
    }

    /// Gives back growth room beyond an eighth (a segment was sealed: the leaf's queue may not grow for a while).
    mutating func trim() {
        let live = bytes.count - readPosition
        guard bytes.capacity - live > max(64, live / 8) else { return }
        var exact = [UInt8]()
        exact.reserveCapacity(live)
        exact.append(contentsOf: bytes[readPosition...])
        bytes = exact
        readPosition = 0
    }

    private mutating func rebuild(_ records: [(segment: UInt32, offset: UInt32)]) {
        self = LocationStream()
        for r in records { append(segment: r.segment, offset: r.offset) }
    }

    /// Growth by an eighth, not Array's doubling: a buffer of a million records would carry half as much again in
    /// room. Appends stay amortized O(1).
    private mutating func reserveForAppend() {
        let needed = bytes.count + 21  // a run header at most: 1 + 10 + 10
        guard needed > bytes.capacity else { return }
        bytes.reserveCapacity(max(needed, bytes.count + max(32, bytes.count / 8)))
    }

    private func decode() -> (segment: UInt32, offset: UInt32, gap: UInt32, end: Int) {
        bytes.withUnsafeBytes { b in
            var at = readPosition
            // Written by `append`: whole, so the reads cannot fail.
            let head = Varint.read(b, &at, end: b.count) ?? 0
            if head == 0 {
                let segment = UInt32(truncatingIfNeeded: Varint.read(b, &at, end: b.count) ?? 0)
                let offset = UInt32(truncatingIfNeeded: Varint.read(b, &at, end: b.count) ?? 0)
                return (segment, offset, readGap, at)
            }
            let gap = UInt32(truncatingIfNeeded: Int64(readGap) + Varint.unzigzag(head - 1))
            return (readSegment, readOffset &+ gap, gap, at)
        }
    }
}
