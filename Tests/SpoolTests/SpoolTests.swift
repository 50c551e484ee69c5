@testable import Spool
import Testing

#if canImport(Glibc)
import Glibc
#endif

func temporarySpoolDirectory() -> String {
    let dir = "/tmp/fieldgate-spool-test-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
    return dir
}

func removeTree(_ path: String) { _ = system("rm -rf '\(path)'") }

func entry(_ leaf: String, _ text: String, at ms: Int64 = 1) -> Spool.Entry {
    Spool.Entry(leaf: leaf, acquiredAtMs: ms, payload: Array(text.utf8))
}

/// The kernel's auxiliary vector (type → value) from /proc/self/auxv, read apart from the C code under test.
func auxiliaryVector() -> [UInt64: UInt64] {
    guard let f = fopen("/proc/self/auxv", "r") else { return [:] }
    defer { fclose(f) }
    var pair = [UInt64](repeating: 0, count: 2)
    var vector: [UInt64: UInt64] = [:]
    while fread(&pair, 8, 2, f) == 2, pair[0] != 0 { vector[pair[0]] = pair[1] }
    return vector
}

@Suite("record codec")
struct RecordCodecTests {
    @Test("CRC32C matches the standard check value")
    func crc() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum(Array(repeating: 0, count: 32)) == 0x8A91_36AA)
        // The hardware path (when present) and the tables agree on every length and alignment.
        var g = SystemRandomNumberGenerator()
        // Past 3 × 256 bytes the hardware path runs three interleaved chains and combines them.
        let data = (0..<2600).map { _ in UInt8.random(in: 0...255, using: &g) }
        data.withUnsafeBytes { all in
            for start in 0..<9 {
                for end in stride(from: start, through: 2600, by: 7) {
                    let slice = UnsafeRawBufferPointer(rebasing: all[start..<end])
                    #expect(CRC32C.checksum(slice) == CRC32C.software(slice))
                }
            }
        }
        print("CRC32C hardware path: \(CRC32C.hardware)")
    }

    @Test("the CPU's CRC32C instructions run wherever the CPU has them: SSE4.2 on x86_64, the ARMv8 CRC extension on aarch64")
    func crcInstructionPath() {
        #if arch(arm64)
        let advertised = (auxiliaryVector()[16] ?? 0) & (1 << 7) != 0  // AT_HWCAP, HWCAP_CRC32
        print("CRC32C path on aarch64: \(CRC32C.hardware ? "ARMv8 CRC32C instructions" : "tables"); HWCAP_CRC32 \(advertised)")
        #expect(CRC32C.hardware == advertised)
        #elseif arch(x86_64)
        print("CRC32C path on x86_64: \(CRC32C.hardware ? "SSE4.2 crc32 instructions" : "tables")")
        #expect(CRC32C.hardware)  // every x86_64 since 2008 has SSE4.2
        #endif
    }

    @Test("a record round-trips; every truncation is 'truncated' and every single bit flip is 'corrupt'")
    func codec() {
        let r = SpoolRecord(leaf: "leaf-ü", sequence: 42, acquiredAtMs: 1_700_000_000_123, flags: 3, payload: Array("{\"t\":21.5}".utf8))
        var frame: [UInt8] = []
        RecordCodec.encode(r, into: &frame)
        #expect(RecordCodec.decode(frame) == .record(r, frameSize: frame.count))
        for cut in 0..<frame.count { #expect(RecordCodec.decode(Array(frame[..<cut])) == .truncated) }
        for bit in 0..<(frame.count * 8) {
            var flipped = frame
            flipped[bit / 8] ^= UInt8(1 << (bit % 8))
            let d = RecordCodec.decode(flipped)
            #expect(d == .corrupt || d == .truncated, "bit \(bit)")
        }
        // Varints at their longest, a negative time, an empty leaf and payload: the frame is exact (no slack).
        for edge in [SpoolRecord(leaf: "", sequence: .max, acquiredAtMs: .min, payload: []),
                     SpoolRecord(leaf: String(repeating: "l", count: 300), sequence: 0, acquiredAtMs: -1, flags: 255, payload: [0])] {
            var out: [UInt8] = [7]
            RecordCodec.encode(edge, into: &out)
            #expect(RecordCodec.decode(out, at: 1) == .record(edge, frameSize: out.count - 1))
        }
    }

    @Test("varints of every length read back, with eight bytes at hand or fewer; a value running past its end is nil")
    func varints() {
        var values: [UInt64] = [0, 1, 0x7F, 0x80, .max, .max >> 1]
        for bits in 1...64 { values += [UInt64.max >> (64 - bits), 1 << (bits - 1)] }
        for v in values {
            var bytes: [UInt8] = []
            Varint.put(v, &bytes)
            #expect(bytes.count == Varint.size(v))
            // Exactly the value's bytes, then with bytes after it (the eight-byte path reads past the value).
            for tail in [[], [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80], [0, 0, 0, 0, 0, 0, 0, 0]] as [[UInt8]] {
                let all = [0x55] + bytes + tail
                all.withUnsafeBytes { b in
                    var at = 1
                    #expect(Varint.read(b, &at, end: b.count) == v, "\(v) followed by \(tail)")
                    #expect(at == 1 + bytes.count)
                    var header = 1
                    #expect(Varint.readHeaderValue(b, &header, end: b.count) == v, "\(v) followed by \(tail)")
                    #expect(header == 1 + bytes.count)
                    // Cut short: nil, never a value made of what follows.
                    var cut = 1
                    #expect(Varint.read(b, &cut, end: bytes.count) == nil)
                    var headerCut = 1
                    #expect(Varint.readHeaderValue(b, &headerCut, end: bytes.count) == nil)
                }
            }
        }
    }

    @Test("version 1 records (spools written before version 2) still decode; version 2 is smaller")
    func version1() {
        let r = SpoolRecord(leaf: "meter-7", sequence: 1_234_567, acquiredAtMs: 1_700_000_000_123, flags: 1, payload: Array("{}".utf8))
        // Version 1 as it was written: u8 1, u8 flags, u16 leaf length, u64 sequence, i64 time, leaf, payload.
        var body: [UInt8] = [1, r.flags, UInt8(r.leaf.utf8.count), 0]
        RecordCodec.append64(r.sequence, to: &body)
        RecordCodec.append64(UInt64(bitPattern: r.acquiredAtMs), to: &body)
        body += Array(r.leaf.utf8) + r.payload
        var v1: [UInt8] = []
        RecordCodec.append32(UInt32(body.count), to: &v1)
        RecordCodec.append32(CRC32C.checksum(body), to: &v1)
        v1 += body
        #expect(RecordCodec.decode(v1) == .record(r, frameSize: v1.count))
        var v2: [UInt8] = []
        RecordCodec.encode(r, into: &v2)
        #expect(RecordCodec.decode(v2) == .record(r, frameSize: v2.count))
        #expect(v1.count - v2.count == 8, "u16+u64+i64 (18 B) became 1+3+6 B of varints")
        // Extremes of the varint fields round-trip.
        for (sequence, time) in [(UInt64.max, Int64.min), (0, Int64.max), (1, -1)] as [(UInt64, Int64)] {
            let x = SpoolRecord(leaf: "", sequence: sequence, acquiredAtMs: time, payload: [])
            var f: [UInt8] = []
            RecordCodec.encode(x, into: &f)
            #expect(RecordCodec.decode(f) == .record(x, frameSize: f.count))
            #expect(f.count <= RecordCodec.frameSize(leafBytes: 0, payloadBytes: 0))
        }
    }

    @Test("the ack set merges ranges and answers membership")
    func ackSet() {
        var a = AckSet()
        for r: ClosedRange<UInt64> in [5...5, 7...9, 6...6, 1...2, 20...30, 11...11] { a.insert(r) }
        #expect(a.ranges == [1...2, 5...9, 11...11, 20...30])
        #expect(a.contains(8) && !a.contains(10) && a.contains(25) && !a.contains(31))
        a.drop(below: 6)
        #expect(a.ranges == [6...9, 11...11, 20...30])
        // An older acknowledgement after newer ones, far below the first word.
        var b = AckSet()
        b.insert(1000...1000)
        b.insert(3...3)
        b.insert(63...64)
        #expect(b.ranges == [3...3, 63...64, 1000...1000])
        #expect(b.rangeCount(upTo: 2) == 2)
        b.drop(below: 64)
        #expect(b.ranges == [64...64, 1000...1000])
        #expect(!b.contains(63) && b.contains(64))
    }

    /// Issue 18.7: a million sequences acknowledged one by one in an interleaved order (1000 leaves draining a
    /// backlog) cost a bit each, not a range each.
    @Test("the ack set stays small however its sequences interleave")
    func ackSetMemory() {
        var a = AckSet()
        for k in stride(from: UInt64(0), to: 1_000_000, by: 2) { a.insert(k...k) }
        #expect(a.storageBytes <= 160_000, "\(a.storageBytes) bytes")
        #expect(a.rangeCount(upTo: 1024) == 1024)
        for k in stride(from: UInt64(1), to: 1_000_000, by: 2) { a.insert(k...k) }
        #expect(a.ranges == [0...999_999])
    }

    @Test("the ack set's ranges, whole and clipped to a window, match the sequences inserted; the ledger round-trips them")
    func ackSetRanges() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<50 {
            var a = AckSet()
            var inserted = Set<UInt64>()
            let origin = UInt64.random(in: 0...10_000, using: &rng)
            for _ in 0..<Int.random(in: 0...400, using: &rng) {
                let s = origin + UInt64.random(in: 0...2_000, using: &rng)
                let n = UInt64.random(in: 0...3, using: &rng)
                // Single sequences go in by the bit-setting path (a range, when below the base or past the words).
                if n == 0 && Bool.random(using: &rng) {
                    let kept = a.insert(s)
                    #expect(kept)
                } else {
                    a.insert(s...(s + n))
                }
                for k in s...(s + n) { inserted.insert(k) }
            }
            func naive(_ keys: [UInt64]) -> [ClosedRange<UInt64>] {
                var out: [ClosedRange<UInt64>] = []
                for k in keys.sorted() {
                    if let last = out.last, last.upperBound + 1 == k { out[out.count - 1] = last.lowerBound...k } else { out.append(k...k) }
                }
                return out
            }
            #expect(a.ranges == naive(Array(inserted)))
            let low = origin + UInt64.random(in: 0...2_100, using: &rng), high = low + UInt64.random(in: 0...700, using: &rng)
            #expect(a.ranges(from: low, through: high) == naive(inserted.filter { (low...high).contains($0) }))
            let (decoded, corrupt) = LedgerFile.decode(LedgerFile.encode(a.ranges))
            #expect(corrupt == 0 && decoded == a.ranges)
        }
        // Ranges in any order, and one longer than an entry's count can say.
        let long: ClosedRange<UInt64> = 10...(10 + UInt64(UInt32.max) + 5)
        let (decoded, _) = LedgerFile.decode(LedgerFile.encode([7...8, long, 3...3]))
        #expect(decoded == [7...8, 10...(9 + UInt64(UInt32.max)), (10 + UInt64(UInt32.max))...(10 + UInt64(UInt32.max) + 5), 3...3])
        #expect(AckSet.runs([5, 6, 7, 2, 9, 10]) == [5...7, 2...2, 9...10])
        // One sequence past the span the set keeps is not kept, and says so.
        var far = AckSet()
        let near = far.insert(UInt64(70)), beyond = far.insert(64 + AckSet.maxSpan)
        #expect(near && !beyond && far.ranges == [70...70])
        // …nor one so far below the base that the set would span more than that.
        var high = AckSet()
        let top = high.insert(AckSet.maxSpan + 100), below = high.insert(UInt64(5)), inside = high.insert(AckSet.maxSpan + 99)
        #expect(top && !below && inside && high.ranges == [(AckSet.maxSpan + 99)...(AckSet.maxSpan + 100)])
    }

    @Test("the in-flight table agrees with a dictionary through inserts, removals, reservations, growth and shrinking")
    func inFlightTable() {
        var table = InFlightTable()
        var reference: [UInt64: RecordLocation] = [:]
        var rng = SystemRandomNumberGenerator()
        var next: UInt64 = 1
        // Bursts of increasing sequences (as handed out) settled in random order, with some far-apart keys.
        for round in 0..<40 {
            let burst = round % 7 == 6 ? 5000 : Int.random(in: 1...300, using: &rng)
            if round % 3 == 0 { table.reserve(table.count + burst) }  // as a fetch does: one growth, not doublings
            for _ in 0..<burst {
                let seq = round % 5 == 4 ? UInt64.random(in: 0...UInt64.max / 2, using: &rng) : next
                next += UInt64.random(in: 1...3, using: &rng)
                let loc = RecordLocation(slot: Int32.random(in: 0...999, using: &rng), segment: UInt32(round), offset: UInt32(truncatingIfNeeded: seq))
                table.insert(seq, loc)
                reference[seq] = loc
            }
            for seq in reference.keys.shuffled(using: &rng).prefix(reference.count * 3 / 4) {
                let removed = table.removeValue(forKey: seq)
                #expect(removed == reference.removeValue(forKey: seq))
            }
            #expect(table.removeValue(forKey: next + 1) == nil)
            if round % 9 == 8 {
                let gone = table.removeAll { $0.segment == UInt32(round - 1) }
                for (seq, loc) in gone { #expect(reference.removeValue(forKey: seq) == loc) }
                #expect(!reference.values.contains { $0.segment == UInt32(round - 1) })
            }
            #expect(table.count == reference.count)
            for (seq, loc) in reference { #expect(table[seq] == loc) }
        }
        for seq in Array(reference.keys) { table[seq] = nil }
        #expect(table.isEmpty)
    }

    @Test("a ledger entry with a valid CRC but a range past UInt64.max is corruption, not a crash (found by spool-fuzz)")
    func ledgerRangeOverflow() {
        var entry: [UInt8] = []
        RecordCodec.append64(UInt64.max - 1, to: &entry)
        RecordCodec.append32(5, to: &entry)
        entry.withUnsafeBytes { RecordCodec.append32(CRC32C.checksum($0), to: &entry) }
        let good = LedgerFile.encode([3...4])
        let (ranges, corrupt) = LedgerFile.decode(good + entry)
        #expect(ranges == [3...4] && corrupt == 1)
    }
}

@Suite("spool", .serialized)
struct SpoolTests {
    @Test("per-leaf FIFO, round-robin across leaves, release puts records back in order, ids are stable across reopen")
    func ordering() throws {
        let dir = temporarySpoolDirectory()
        defer { removeTree(dir) }
        var config = SpoolConfiguration(directory: dir)
        config.segmentBytes = 256
        var epoch = ""
        do {
            let spool = try Spool(configuration: config)
            epoch = spool.epoch
            try spool.append((0..<6).map { entry("a", "a\($0)") })
            try spool.append((0..<2).map { entry("b", "b\($0)") })
            let first = try spool.next(max: 4)
            #expect(first.map { String(decoding: $0.payload, as: UTF8.self) } == ["a0", "b0", "a1", "b1"])
            spool.release([first[0].sequence, first[2].sequence])
            let again = try spool.next(max: 3)
            #expect(again.map { String(decoding: $0.payload, as: UTF8.self) } == ["a0", "a1", "a2"])
            try spool.acknowledge([first[1].sequence, first[3].sequence, again[0].sequence])
            #expect(spool.statistics().depth == 5)
            spool.close()
        }
        let reopened = try Spool(configuration: config)
        #expect(reopened.epoch == epoch)
        let rest = try reopened.next(max: 100)
        #expect(rest.map { String(decoding: $0.payload, as: UTF8.self) } == ["a1", "a2", "a3", "a4", "a5"])
        #expect(reopened.messageID(for: rest[0].sequence) == "\(epoch)-\(rest[0].sequence)")
    }

    @Test("a producer's batch (leaves numbered once, payloads side by side) appends as entries do: per-leaf order, names by bytes, times, empty payloads; an oversized record refuses the whole batch")
    func appendBatch() throws {
        let dir = temporarySpoolDirectory()
        defer { removeTree(dir) }
        var config = SpoolConfiguration(directory: dir)
        config.segmentBytes = 600  // records of one batch across segments once sealed and reopened
        let composed = "caf\u{E9}", decomposed = "cafe\u{301}"
        // Keyed by the leaf's place in `names`: Swift's String keys would make the two spellings one.
        let names = ["m-1", composed, "m-2", decomposed]
        var expected: [Int: [(payload: String, ms: Int64)]] = [:]
        do {
            let spool = try Spool(configuration: config)
            for round in 0..<5 {
                var batch = Spool.AppendBatch()
                let leaves = names.map { batch.leaf($0) }
                #expect(batch.leaf(composed) == leaves[1] && batch.leaf(decomposed) == leaves[3] && leaves[1] != leaves[3])
                for i in 0..<12 {
                    let k = (i * 3 + round) % 4
                    let text = i % 5 == 0 ? "" : "\(names[k])/\(round)/\(i)"
                    batch.append(leaves[k], acquiredAtMs: Int64(1_700_000_000_000 + round * 100 + i), payload: Array(text.utf8))
                    expected[k, default: []].append((text, Int64(1_700_000_000_000 + round * 100 + i)))
                }
                #expect(batch.count == 12)
                let sequences = try spool.append(batch)
                #expect(sequences.count == 12 && sequences == Array(sequences[0] ... sequences[11]))
            }
            var tooLarge = Spool.AppendBatch()
            let leaf = tooLarge.leaf("m-1")
            tooLarge.append(leaf, acquiredAtMs: 1, payload: Array("fits".utf8))
            tooLarge.append(leaf, acquiredAtMs: 1, payload: [UInt8](repeating: 1, count: RecordCodec.maxRecordSize))
            #expect(throws: SpoolError.self) { try spool.append(tooLarge) }
            #expect(try spool.append(Spool.AppendBatch()).isEmpty)
            #expect(spool.depth == 60)
            spool.close()
        }
        let spool = try Spool(configuration: config)
        defer { spool.close() }
        let taken = try spool.next(max: 1000)
        #expect(taken.count == 60)
        var got: [Int: [(payload: String, ms: Int64)]] = [:]
        for r in taken {
            let k = names.firstIndex { $0.utf8.elementsEqual(r.leaf.utf8) } ?? -1
            got[k, default: []].append((String(decoding: r.payload, as: UTF8.self), r.acquiredAtMs))
        }
        #expect(got.keys.sorted() == [0, 1, 2, 3])
        for k in expected.keys {
            #expect(got[k]?.map(\.payload) == expected[k]?.map(\.payload), "\(names[k])")
            #expect(got[k]?.map(\.ms) == expected[k]?.map(\.ms), "\(names[k])")
        }
    }

    @Test("batches join in order: copies of one template as they are, others by their leaves' names")
    func appendBatchesJoined() throws {
        let dir = temporarySpoolDirectory()
        defer { removeTree(dir) }
        var template = Spool.AppendBatch()
        let a = template.leaf("a"), b = template.leaf("b")
        var first = template, second = template, third = template
        first.append(a, acquiredAtMs: 1, payload: Array("a1".utf8))
        second.append(b, acquiredAtMs: 2, payload: Array("b1".utf8))
        second.append(a, acquiredAtMs: 3, payload: Array("a2".utf8))
        // A leaf the template lacks: this copy numbers it, and numbers differ from the others' from then on.
        third.append(third.leaf("c"), acquiredAtMs: 4, payload: Array("c1".utf8))
        third.append(b, acquiredAtMs: 5, payload: [])
        var other = Spool.AppendBatch()
        other.append(other.leaf("b"), acquiredAtMs: 6, payload: Array("b3".utf8))
        other.append(other.leaf("c"), acquiredAtMs: 7, payload: Array("c2".utf8))
        var joined = Spool.AppendBatch()
        for part in [first, second, third, other] { joined.append(contentsOf: part) }
        #expect(joined.count == 7)
        let spool = try Spool(configuration: SpoolConfiguration(directory: dir))
        defer { spool.close() }
        try spool.append(joined)
        let taken = try spool.next(max: 100)
        let byLeaf = Dictionary(grouping: taken, by: \.leaf).mapValues { $0.map { "\(String(decoding: $0.payload, as: UTF8.self))@\($0.acquiredAtMs)" } }
        #expect(byLeaf == ["a": ["a1@1", "a2@3"], "b": ["b1@2", "@5", "b3@6"], "c": ["c1@4", "c2@7"]])
    }

    @Test("numbering: on after a clean close; from the durable floor after an unclean stop (a power cut may have taken sequences already delivered)")
    func numberingAcrossStops() throws {
        let dir = temporarySpoolDirectory()
        defer { removeTree(dir) }
        let config = SpoolConfiguration(directory: dir)
        let first = try Spool(configuration: config)
        #expect(try first.append([entry("a", "1"), entry("a", "2")]) == [1, 2])
        first.close()
        let second = try Spool(configuration: config)
        #expect(try second.append([entry("a", "3")]) == [3], "a clean close: numbering goes on")
        second.close()
        // An unclean stop leaves no `clean` marker (as if the process died before close).
        unlink(dir + "/clean")
        let third = try Spool(configuration: config)
        let resumed = try third.append([entry("a", "4")])
        #expect(resumed[0] > 3 + Spool.sequenceReservation - 1, "numbering resumes above every reserved sequence: \(resumed)")
        #expect(try third.next(max: 10).map(\.sequence) == [1, 2, 3] + resumed)
        third.close()
    }

    @Test("fully acknowledged segments are deleted; drop-oldest keeps disk ≤ cap + one segment and counts drops per leaf")
    func capsAndDeletion() throws {
        let dir = temporarySpoolDirectory()
        defer { removeTree(dir) }
        var config = SpoolConfiguration(directory: dir)
        config.segmentBytes = 1024
        config.capBytes = 4096
        let spool = try Spool(configuration: config)
        let payload = String(repeating: "x", count: 100)
        for i in 0..<200 { try spool.append([entry("leaf\(i % 3)", payload)]) }
        let stats = spool.statistics()
        #expect(stats.bytes <= config.capBytes + config.segmentBytes)
        let dropped = stats.dropped[.overflow]?.values.reduce(0, +) ?? 0
        #expect(dropped + stats.depth == 200)
        #expect(dropped > 150)
        // Deliver everything: every sealed segment goes away.
        while true {
            let batch = try spool.next(max: 50)
            if batch.isEmpty { break }
            try spool.acknowledge(batch.map(\.sequence))
        }
        let segments = try listDirectory(dir + "/segments")
        #expect(segments.count == 1)
        #expect(spool.statistics().depth == 0)
    }

    @Test("reject-new refuses appends with a retriable .full; TTL drops old records; rejects go to the dead-letter file")
    func policies() throws {
        let dir = temporarySpoolDirectory()
        defer { removeTree(dir) }
        var config = SpoolConfiguration(directory: dir)
        config.segmentBytes = 512
        config.capBytes = 1024
        config.fullPolicy = .rejectNew
        config.ttlMilliseconds = 1000
        let spool = try Spool(configuration: config)
        var refused: SpoolError?
        for i in 0..<100 {
            do { try spool.append([entry("a", String(repeating: "y", count: 60), at: Int64(i))]) } catch {
                refused = error
                break
            }
        }
        #expect(refused?.code == .full)
        #expect(refused?.isRetriable == true)
        // Records acquired at t ≤ 99 are older than 1 s at t = 2000: dropped as ttl, never delivered.
        #expect(try spool.next(max: 100, nowMs: 2000).isEmpty)
        #expect((spool.statistics().dropped[.ttl]?["a"] ?? 0) > 0)
        try spool.append([entry("b", "poison", at: 5000)])
        let poison = try spool.next(max: 1, nowMs: 5000)
        try spool.deadLetter(poison.map(\.sequence))
        #expect(spool.statistics().dropped[.rejected]?["b"] == 1)
        let dl = try readFile(dir + "/dead-letter")
        guard case .record(let r, _) = RecordCodec.decode(dl) else { Issue.record("dead-letter unreadable"); return }
        #expect(String(decoding: r.payload, as: UTF8.self) == "poison")
    }

    @Test("a per-leaf cap drops that leaf's oldest records (counted) and leaves the other leaves alone")
    func perLeafCap() throws {
        let dir = temporarySpoolDirectory()
        defer { removeTree(dir) }
        var config = SpoolConfiguration(directory: dir)
        config.perLeafCapRecords = 3
        let spool = try Spool(configuration: config)
        for i in 0..<10 { try spool.append([entry("noisy", "n\(i)")]) }
        try spool.append([entry("quiet", "q0"), entry("quiet", "q1")])
        let stats = spool.statistics()
        #expect(stats.depthByLeaf == ["noisy": 3, "quiet": 2])
        #expect(stats.dropped[.overflow]?["noisy"] == 7)
        let all = try spool.next(max: 10)
        #expect(all.map { String(decoding: $0.payload, as: UTF8.self) }.sorted() == ["n7", "n8", "n9", "q0", "q1"])
    }

    @Test("interval sync: the flusher fdatasyncs within the interval even when no more appends come; the durable mark follows")
    func intervalFlusher() async throws {
        let dir = temporarySpoolDirectory()
        defer { removeTree(dir) }
        var config = SpoolConfiguration(directory: dir)
        config.sync = .interval(milliseconds: 200)
        let spool = try Spool(configuration: config)
        try spool.append([entry("a", "1")])  // within the first interval: the append itself does not sync
        #expect(spool.hasUnsyncedData)
        #expect(spool.durableSequence == 0, "not on disk yet")
        // The flusher's round comes one interval later; a loaded machine (CI building beside the tests) can delay
        // it well past that, so wait for it with a bound rather than a fixed sleep.
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(15)
        // The round clears `hasUnsyncedData` when it starts and moves the durable mark when its fdatasync returns.
        while spool.durableSequence == 0 && clock.now < deadline { try await Task.sleep(for: .milliseconds(50)) }
        #expect(!spool.hasUnsyncedData, "no flusher round within 15 s")
        #expect(spool.durableSequence == 1, "the flusher's round covered it")
        let more = try spool.append([entry("a", "2"), entry("b", "3")])
        try spool.sync()
        #expect(spool.durableSequence == more.last, "an explicit sync covers every append before it")
        spool.close()
        // What a reopened spool finds is on disk (under `interval` it syncs it at open: the process before may have
        // left it in the page cache only).
        let reopened = try Spool(configuration: config)
        #expect(reopened.durableSequence == 3)
        reopened.close()
        // After an unclean stop (no `clean` marker) the open syncs the file system first, and says so in its mark.
        unlink(dir + "/clean")
        let afterCrash = try Spool(configuration: config)
        #expect(afterCrash.durableSequence == 3)
        #expect(try afterCrash.next(max: 10).map(\.sequence).sorted() == [1, 2, 3])
        afterCrash.close()
        config.sync = .always
        let always = try Spool(configuration: config)
        let appended = try always.append([entry("a", "4")])
        #expect(always.durableSequence == appended[0], "under always, durable when append returns")
        always.close()
    }

    @Test("one writer at a time; a read-only open can inspect a live spool")
    func locking() throws {
        let dir = temporarySpoolDirectory()
        defer { removeTree(dir) }
        let config = SpoolConfiguration(directory: dir)
        let writer = try Spool(configuration: config)
        try writer.append([entry("a", "1")])
        #expect(throws: SpoolError.self) { _ = try Spool(configuration: config) }
        let reader = try Spool(configuration: config, readOnly: true)
        #expect(reader.statistics().depth == 1)
        #expect(throws: SpoolError.self) { try reader.append([entry("a", "2")]) }
    }
}

func listDirectory(_ path: String) throws -> [String] {
    guard let d = opendir(path) else { return [] }
    defer { closedir(d) }
    var out: [String] = []
    while let e = readdir(d) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if name != "." && name != ".." { out.append(name) }
    }
    return out
}

func readFile(_ path: String) throws -> [UInt8] {
    guard let f = fopen(path, "r") else { return [] }
    defer { fclose(f) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&buf, 1, buf.count, f)
        if n <= 0 { break }
        out += buf[0..<n]
    }
    return out
}

func writeFile(_ path: String, _ bytes: [UInt8]) {
    guard let f = fopen(path, "w") else { return }
    _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, bytes.count, f) }
    fclose(f)
}

@Suite("Spool location streams")
struct LocationStreamTests {
    @Test("gaps of every size, across segments, round-trip in order; trimming and dropping the taken part keep the rest")
    func roundTrip() {
        let offsets: [UInt32] = [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455, 268_435_456, UInt32.max]
        var expected: [(segment: UInt32, offset: UInt32)] = offsets.map { (7, $0) } + offsets.prefix(5).map { (9, $0) }
        // Irregular gaps, up and down, long enough for the taken prefix to be dropped.
        var o: UInt32 = 5
        for i in 1..<20_000 { o += UInt32(1 + (i * 7919) % 30_000); expected.append((12, o)) }
        var stream = LocationStream()
        for r in expected { stream.append(segment: r.segment, offset: r.offset) }
        #expect(stream.count == expected.count)
        var out: [(segment: UInt32, offset: UInt32)] = []
        for i in 0..<expected.count {
            if i == 4 || i == 15_000 { stream.trim() }
            #expect(stream.first.map { [$0.segment, $0.offset] } == [expected[i].segment, expected[i].offset])
            out.append(stream.removeFirst()!)
        }
        #expect(out.map(\.segment) == expected.map(\.segment) && out.map(\.offset) == expected.map(\.offset))
        #expect(stream.first == nil && stream.isEmpty)
    }

    @Test("regular gaps cost a byte a record; new records after a drain, prepending and removing a segment keep the order")
    func compactAndEditable() {
        var stream = LocationStream()
        // 1000 leaves interleaved: a leaf's records are 260 kB apart, 32 in each 8 MB segment.
        for segment: UInt32 in 1...31 {
            for k: UInt32 in 0..<32 { stream.append(segment: segment, offset: 100 + k * 260_000) }
        }
        stream.trim()
        #expect(stream.count == 992)
        #expect(stream.byteCount < 992 * 5 / 4, "\(stream.byteCount) bytes for 992 records")
        let head = [stream.removeFirst()!, stream.removeFirst()!]
        stream.prepend(head)
        #expect(stream.all.prefix(3).map(\.offset) == [100, 260_100, 520_100])
        #expect(stream.remove(segment: 1) == 32 && stream.count == 960 && stream.first?.segment == 2)
        // A segment in the middle, and one that is not there.
        #expect(stream.remove(segment: 5) == 32 && stream.remove(segment: 99) == 0 && stream.count == 928)
        #expect(!stream.all.contains { $0.segment == 5 } && stream.all.first?.segment == 2)
        // Segments out of order (never appended so, but possible): the whole stream is searched.
        var mixed = LocationStream()
        for (segment, offset) in [(3, 0), (2, 0), (3, 8)] as [(UInt32, UInt32)] { mixed.append(segment: segment, offset: offset) }
        #expect(mixed.remove(segment: 3) == 2 && mixed.all.map(\.segment) == [2])
        while stream.removeFirst() != nil {}
        stream.append(segment: 40, offset: 8)
        stream.append(segment: 40, offset: 16)
        #expect(stream.all.map(\.offset) == [8, 16] && stream.all.map(\.segment) == [40, 40])
    }
}

@Suite("Spool leaf queues")
struct LeafQueuesTests {
    /// A slot is found by the caller's string's words first; equal names in other strings (recovered ones, another
    /// caller's) find the same slot, and names that differ never share one, however often strings come and go.
    @Test("a leaf's slot by its string's identity: same name in new strings, the same slot; other names, other slots")
    func slotsByIdentity() {
        var q = LeafQueues()
        func name(_ i: Int) -> String { "gateway-leaf-device-number-\(i)" }  // large strings: a storage each
        let kept = (0..<300).map(name)
        let slots = kept.map { q.slot(of: $0) }
        #expect(slots == (0..<300).map(Int32.init))
        // The same names in strings of their own (each a new storage): found by their bytes and kept by the leaf
        // from then on, then found again (by their words: the path every later record of theirs takes).
        let fresh = (0..<300).map(name)
        var again: [Int32] = [], twice: [Int32] = [], adopted = 0
        for i in 0..<300 {
            again.append(q.slot(of: fresh[i]))
            if LeafQueues.identity(q[slots[i]].name) == LeafQueues.identity(fresh[i]) { adopted += 1 }
            twice.append(q.slot(of: fresh[i]))
        }
        #expect(again == slots && twice == slots && adopted == 300)
        // Strings made and freed by the thousand, names old and new: storage addresses come back, slots do not mix.
        for round in 0..<20 {
            for i in stride(from: round, to: 600, by: 7) {
                let s = q.slot(of: name(i))
                let named = q[s].name
                #expect(i < 300 ? s == slots[i] : named == name(i))
            }
        }
        #expect(q.count == 300 + (300..<600).filter { i in (0..<20).contains { round in i >= round && (i - round) % 7 == 0 } }.count)
        var keptAgain: [Int32] = []
        for k in kept { keptAgain.append(q.slot(of: k)) }
        #expect(keptAgain == slots && kept.indices.allSatisfy { q[slots[$0]].name == kept[$0] })
        // Small strings (their words are their bytes) and the empty name.
        let a = q.slot(of: "a"), a2 = q.slot(of: String("xa".dropFirst())), empty = q.slot(of: "")
        #expect(a == a2 && empty != a)
    }

    @Test("slots in order of first appearance; per-leaf FIFO across segments; retried records first, in sequence order")
    func order() {
        var q = LeafQueues()
        let a = q.slot(of: "a"), b = q.slot(of: "b")
        #expect((a, b, q.slot(of: "a"), q.count) == (0, 1, 0, 2))
        #expect(q[a].name == "a" && q[b].name == "b")
        for (slot, segment, offset) in [(a, 0, 0), (b, 0, 10), (a, 0, 20), (a, 1, 0), (b, 1, 30)] as [(Int32, UInt32, UInt32)] {
            q.enqueue(slot, segment: segment, offset: offset)
        }
        #expect(q.depth == 5 && q.depthByLeaf == ["a": 3, "b": 2])
        let first = q.popFront(a)!, second = q.popFront(a)!
        #expect([first, second] == [RecordLocation(slot: a, segment: 0, offset: 0), RecordLocation(slot: a, segment: 0, offset: 20)])
        q.giveBack([(9, second), (7, first)])
        #expect(q.popFront(a) == first && q.popFront(a) == second)
        #expect(q.popFront(a) == RecordLocation(slot: a, segment: 1, offset: 0))
        #expect(q.popFront(a) == nil && !q[a].hasQueued && q[b].hasQueued)
        // Popping leaves the depth alone: those records are in flight until settled.
        #expect(q.depth == 5)
        q.adjustDepth(a, by: -3)
        #expect(q.depthByLeaf == ["b": 2])
    }

    @Test("removing a segment's records counts what each leaf lost, retried ones included, and lowers its depth")
    func removeSegment() {
        var q = LeafQueues()
        let a = q.slot(of: "a"), b = q.slot(of: "b")
        for offset in [0, 10, 20] as [UInt32] { q.enqueue(a, segment: 3, offset: offset) }
        q.enqueue(b, segment: 3, offset: 5)
        q.enqueue(b, segment: 4, offset: 0)
        let taken = q.popFront(a)!
        q.giveBack([(1, taken)])
        q.trimQueues()
        let lost = q.removeRecords(of: 3)
        #expect(lost.map(\.slot) == [a, b] && lost.map(\.count) == [3, 1])
        #expect(q.depthByLeaf == ["b": 1])
        #expect(q.popFront(b) == RecordLocation(slot: b, segment: 4, offset: 0) && q.popFront(a) == nil)
    }
}

@Suite("Spool segment indexes")
struct SegmentIndexTests {
    func config(_ dir: String) -> SpoolConfiguration {
        var c = SpoolConfiguration(directory: dir)
        c.segmentBytes = 4096
        return c
    }

    func fill(_ dir: String) throws -> [String] {
        let spool = try Spool(configuration: config(dir))
        var texts: [String] = []
        for i in 0..<200 {
            let t = "{\"n\":\(i),\"pad\":\"\(String(repeating: "x", count: 40))\"}"
            texts.append(t)
            _ = try spool.append([entry(i % 3 == 0 ? "a" : "b", t)])
        }
        spool.close()
        return texts
    }

    func drain(_ spool: Spool) throws -> [String] {
        var out: [String] = []
        while true {
            let batch = try spool.next(max: 50)
            if batch.isEmpty { return out }
            out += batch.map { String(decoding: $0.payload, as: UTF8.self) }
            try spool.acknowledge(batch.map(\.sequence))
        }
    }

    func indexes(_ dir: String) -> [String] {
        ((try? listDirectory(dir + "/segments")) ?? []).filter { $0.hasSuffix(".idx") }
    }

    @Test("sealed segments get an index; reopening from the indexes restores every record, in order per leaf")
    func reopenFromIndexes() throws {
        let dir = temporarySpoolDirectory()
        defer { removeTree(dir) }
        let texts = try fill(dir)
        let segments = try listDirectory(dir + "/segments").filter { $0.hasSuffix(".seg") }.count
        #expect(segments > 3)
        #expect(indexes(dir).count == segments - 1, "every sealed segment has one")
        let spool = try Spool(configuration: config(dir))
        let out = try drain(spool)
        #expect(out.sorted() == texts.sorted())
        #expect(out.filter { $0.contains("\"n\":3,") || $0.contains("\"n\":6,") }.count == 2)
        #expect(spool.statistics().corruptRegions == 0)
        spool.close()
    }

    @Test("a torn or stale index is ignored (the segment is scanned); bit rot under an index is counted when read")
    func badIndexes() throws {
        let dir = temporarySpoolDirectory()
        defer { removeTree(dir) }
        let texts = try fill(dir)
        let idx = indexes(dir).sorted()
        // Torn: cut the first index in half. Stale: the second describes another size (append a byte to its segment
        // would change the data; instead rewrite the index's size field).
        truncate(dir + "/segments/" + idx[0], 10)
        let stale = dir + "/segments/" + idx[1]
        var bytes = try readFile(stale)
        bytes[5] ^= 0xFF
        writeFile(stale, bytes)
        // Bit rot in the third sealed segment, whose index stays valid: flip a payload byte of its first record.
        let rotten = dir + "/segments/" + String(idx[2].dropLast(4)) + ".seg"
        var seg = try readFile(rotten)
        seg[40] ^= 0x01
        writeFile(rotten, seg)

        let spool = try Spool(configuration: config(dir))
        #expect(spool.statistics().corruptRegions == 0, "the index hides the rot until the record is read")
        let out = try drain(spool)
        #expect(out.count == texts.count - 1)
        #expect(spool.statistics().corruptRegions == 1)
        spool.close()
        let left = try listDirectory(dir + "/segments")
        #expect(!left.contains(idx[2]), "the rotten segment's index is gone")
    }
}

extension SegmentIndexTests {
    static let interleaved: [(SpoolRecord, Int)] = (0..<40).map { (i: Int) -> (SpoolRecord, Int) in
        let leaf: String = i % 3 == 0 ? "a" : i % 7 == 0 ? "ç" : "b"
        let acquired: Int64 = 1_700_000_000_000 + Int64(i % 5) * 1000 - Int64(i)
        return (SpoolRecord(leaf: leaf, sequence: 1000 + UInt64(i) * 3, acquiredAtMs: acquired, payload: []), 17 + i * 60)
    }

    @Test("an index holds each leaf's records in a section of its own; decoding gives them back in file order")
    func sectionsByLeaf() throws {
        let bytes = SegmentIndex(records: Self.interleaved).encoded(segmentSize: 4000)
        let back = try #require(SegmentIndex.decode(bytes, segmentSize: 4000))
        #expect(back.map(\.1) == Self.interleaved.map(\.1))
        #expect(back.map(\.0) == Self.interleaved.map(\.0))
        let sections = try #require(SegmentIndex.LeafSections(bytes, segmentSize: 4000))
        #expect(sections.names == ["a", "b", "ç"])
        for (name, range) in zip(sections.names, sections.sections) {
            var got: [(UInt64, Int, Int64)] = []
            #expect(SegmentIndex.forEach(section: Array(bytes[range]), segmentSize: 4000) { got.append(($0, $1, $2)) })
            let expected = Self.interleaved.filter { $0.0.leaf == name }
            #expect(got.map(\.0) == expected.map(\.0.sequence) && got.map(\.1) == expected.map(\.1)
                    && got.map(\.2) == expected.map(\.0.acquiredAtMs), "\(name)")
        }
        // A flipped byte in a section fails that section, and the whole file.
        var damaged = bytes
        damaged[sections.sections[1].lowerBound + 2] ^= 0x04
        #expect(!SegmentIndex.forEach(section: Array(damaged[sections.sections[1]]), segmentSize: 4000) { _, _, _ in })
        #expect(SegmentIndex.decode(damaged, segmentSize: 4000) == nil)
        #expect(SegmentIndex.LeafSections(bytes, segmentSize: 4001) == nil, "another segment size: stale")
    }

    /// An index as version 1 wrote it: records in file order, each naming its leaf.
    static func version1Bytes(_ records: [(SpoolRecord, Int)], segmentSize: Int) -> [UInt8] {
        var v1 = Array("FGIX".utf8) + [1]
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { v1 += $0 } }
        put(UInt64(segmentSize))
        var names: [String] = []
        for (r, _) in records where !names.contains(r.leaf) { names.append(r.leaf) }
        put(UInt32(names.count))
        for n in names { put(UInt16(n.utf8.count)); v1 += Array(n.utf8) }
        put(UInt32(records.count))
        var sequence: UInt64 = 0, offset: UInt64 = 0, acquired: Int64 = 0
        for (r, at) in records {
            for v in [UInt64(names.firstIndex(of: r.leaf)!), r.sequence &- sequence, UInt64(at) - offset, Varint.zigzag(r.acquiredAtMs &- acquired)] {
                Varint.put(v, &v1)
            }
            (sequence, offset, acquired) = (r.sequence, UInt64(at), r.acquiredAtMs)
        }
        put(CRC32C.checksum(v1))
        return v1
    }

    /// Indexes written before December 2026 (version 1: records in file order, each naming its leaf) are still read.
    @Test("a version 1 index is still read")
    func version1() throws {
        let v1 = Self.version1Bytes(Self.interleaved, segmentSize: 4000)
        let back = try #require(SegmentIndex.decode(v1, segmentSize: 4000))
        #expect(back.map(\.0) == Self.interleaved.map(\.0) && back.map(\.1) == Self.interleaved.map(\.1))
        #expect(SegmentIndex.LeafSections(v1, segmentSize: 4000) == nil, "no sections: listings walk it")
    }

    /// spool-fuzz found it: a segment whose records repeat earlier sequences (out of order, as after a salvage)
    /// made the index refuse itself on decode; the fuzz invariant is that every scanned segment round-trips.
    @Test("an index round-trips records whose sequences go backwards")
    func sequencesOutOfOrder() {
        var segment: [UInt8] = []
        for (i, seq) in ([7, 3, 3, UInt64.max, 0, 5] as [UInt64]).enumerated() {
            RecordCodec.encode(SpoolRecord(leaf: "leaf-\(i % 2)", sequence: seq, acquiredAtMs: i % 2 == 0 ? Int64.min : Int64.max, payload: [1, 2, 3]), into: &segment)
        }
        segment.withUnsafeBytes { SpoolFuzzing.check($0) }  // traps on a violation
        let scan = segment.withUnsafeBytes { SegmentScan(scanning: $0) }
        let back = SegmentIndex.decode(SegmentIndex(records: scan.records).encoded(segmentSize: segment.count), segmentSize: segment.count)
        #expect(back?.map(\.0.sequence) == [7, 3, 3, UInt64.max, 0, 5])
    }
}
