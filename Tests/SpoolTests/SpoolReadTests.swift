import Testing
@testable import Spool

@Suite("spool batch reads", .serialized)
struct SpoolReadTests {
    /// Locations become runs one pread each covers: per segment, in offset order, at most `maxSpan` bytes apart.
    @Test func readPlanGroupsNearbyRecords() {
        let locations = [
            RecordLocation(slot: 0, segment: 2, offset: 100), RecordLocation(slot: 1, segment: 1, offset: 500),
            RecordLocation(slot: 0, segment: 1, offset: 0), RecordLocation(slot: 1, segment: 2, offset: 50),
            RecordLocation(slot: 0, segment: 1, offset: UInt32(ReadPlan.maxSpan)),
        ]
        // A run's members come in any order (`read` takes them so): compared sorted.
        func sortedMembers(_ plan: ReadPlan) -> [ReadPlan.Run] {
            plan.runs.map { var r = $0; r.members.sort(); return r }
        }
        let plan = ReadPlan(locations)
        #expect(sortedMembers(plan) == [
            ReadPlan.Run(segment: 1, firstOffset: 0, lastOffset: 500, members: [1, 2]),
            ReadPlan.Run(segment: 1, firstOffset: ReadPlan.maxSpan, lastOffset: ReadPlan.maxSpan, members: [4]),
            ReadPlan.Run(segment: 2, firstOffset: 50, lastOffset: 100, members: [0, 3]),
        ])
        let oneSegment = ReadPlan([RecordLocation(slot: 0, segment: 3, offset: 900), RecordLocation(slot: 1, segment: 3, offset: 100)])
        #expect(oneSegment.runs == [ReadPlan.Run(segment: 3, firstOffset: 100, lastOffset: 900, members: [0, 1])])
        // Sparse picks (more than `maxGap` a record on average): past `maxGap` between two of them a read ends, and
        // the gap is not read.
        let gap = UInt32(ReadPlan.maxGap)
        let sparse = ReadPlan([RecordLocation(slot: 0, segment: 1, offset: 0), RecordLocation(slot: 0, segment: 1, offset: gap),
                               RecordLocation(slot: 0, segment: 1, offset: 3 * gap + 1)])
        #expect(sparse.runs == [ReadPlan.Run(segment: 1, firstOffset: 0, lastOffset: Int(gap), members: [0, 1]),
                                ReadPlan.Run(segment: 1, firstOffset: 3 * Int(gap) + 1, lastOffset: 3 * Int(gap) + 1, members: [2])])
    }

    /// A backlog fetched for many leaves at once: dense picks over several reads' span and two segments, each leaf's
    /// records ascending and interleaved with the others'. Every record is in exactly one run, every run within
    /// one read's span and in file order; a stretch read sparsely goes the general way (the same runs as sorting).
    @Test func densePicksOverManyReads() {
        var locations: [RecordLocation] = []
        for turn in 0..<40 {
            for leaf in 0..<100 {
                // 1 kB records of 100 leaves in file order (2.5 MB in one segment, 1.5 MB in the next): leaf
                // `leaf`'s `turn`th record.
                let index = turn * 100 + leaf
                let segment: UInt32 = index < 2500 ? 4 : 5
                let offset = UInt32((segment == 4 ? index : index - 2500) * 1000)
                locations.append(RecordLocation(slot: Int32(leaf), segment: segment, offset: offset))
            }
        }
        // Picked leaf by leaf, as a fetch takes them.
        let picked = (0..<100).flatMap { leaf in locations.filter { $0.slot == Int32(leaf) } }
        let tail = 512
        let runs = ReadPlan(picked, tail: tail).runs
        #expect(runs.count > 2)
        #expect(runs.flatMap(\.members).sorted() == Array(picked.indices))
        for run in runs {
            #expect(run.lastOffset - run.firstOffset + tail <= ReadPlan.maxSpan)
            for m in run.members {
                #expect(picked[m].segment == run.segment)
                #expect((run.firstOffset...run.lastOffset).contains(Int(picked[m].offset)))
            }
        }
        #expect(zip(runs, runs.dropFirst()).allSatisfy { ($0.segment, $0.lastOffset) < ($1.segment, $1.firstOffset) })
        // A record far beyond the others is a run of its own.
        let far = picked + [RecordLocation(slot: 0, segment: 5, offset: 40_000_000)]
        #expect(ReadPlan(far, tail: tail).runs.contains { $0.members == [far.count - 1] })
        // Four records over 900 kB: one window, not read whole; the general way reads each on its own.
        let sparse = Array(picked.prefix(3)) + [RecordLocation(slot: 0, segment: 4, offset: 900_000)]
        #expect(ReadPlan.windows(sparse, tail: tail).map { $0.dense.isEmpty && $0.sparse.sorted() == [0, 1, 2, 3] } == true)
        #expect(ReadPlan(sparse, tail: tail).runs.count == 4)
        // Dense and sparse windows in one plan: each record once, the sparse ones in runs of their own.
        let mixed = picked + [RecordLocation(slot: 0, segment: 5, offset: 3_000_000), RecordLocation(slot: 1, segment: 5, offset: 3_600_000)]
        let mixedRuns = ReadPlan(mixed, tail: tail).runs
        #expect(mixedRuns.flatMap(\.members).sorted() == Array(mixed.indices))
        #expect(mixedRuns.filter { $0.members == [mixed.count - 2] || $0.members == [mixed.count - 1] }.count == 2)
    }

    /// The radix sort of `fileOrder` orders as `sort()` does: by segment rank and offset, ties in their order —
    /// over interleaved ascending runs (a fetch's shape), shared high bytes, and random places.
    @Test func placeSortMatchesComparisonSort() {
        var generator = SystemRandomNumberGenerator()
        for round in 0..<60 {
            let count = [0, 1, 2, 17, 300, 5000][round % 6]
            var keys: [UInt64] = []
            for i in 0..<count {
                let rank = UInt64(round % 3 == 0 ? 0 : Int.random(in: 0..<3, using: &generator))
                let offset: UInt64 = switch round % 4 {
                case 0: UInt64(i % 40) * 9000 + UInt64(i / 40) * 250  // 40 leaves' runs, interleaved
                case 1: 0x1234_0000 + UInt64.random(in: 0..<256, using: &generator)  // only the low byte differs
                case 2: UInt64.random(in: 0..<8, using: &generator)  // many equal places
                default: UInt64(UInt32.random(in: 0...UInt32.max, using: &generator))
                }
                keys.append(rank << 56 | offset << 24 | UInt64(i))
            }
            var sorted = keys
            ReadPlan.sortByPlace(&sorted)
            #expect(sorted == keys.sorted(), "round \(round), \(count) keys")
        }
        // Through `fileOrder`: records of two segments and many offsets come back in file order.
        var locations: [RecordLocation] = []
        for i in 0..<1000 {
            let segment: UInt32 = i % 2 == 0 ? 7 : 6
            let offset = UInt32((i * 7919) % 100_000)
            locations.append(RecordLocation(slot: Int32(i % 10), segment: segment, offset: offset))
        }
        let order = ReadPlan.fileOrder(locations).map { (locations[$0].segment, locations[$0].offset) }
        #expect(zip(order, order.dropFirst()).allSatisfy { $0 <= $1 })
    }

    /// Leaf names are told apart by their bytes: two spellings Swift finds equal are two leaves to the spool, and
    /// its statistics add them up under the one name rather than trap.
    @Test func leafNamesByBytes() throws {
        let dir = temporarySpoolDirectory()
        defer { removeTree(dir) }
        let composed = "caf\u{E9}", decomposed = "cafe\u{301}"
        var config = SpoolConfiguration(directory: dir)
        config.segmentBytes = 1000  // sealed segments too: their indexes keep the two apart across a reopen
        do {
            let first = try Spool(configuration: config)
            for i in 0..<40 { try first.append([entry("leaf-\(i)", "x"), entry(composed, "c"), entry(decomposed, "d")]) }
            first.close()
        }
        let spool = try Spool(configuration: config)
        defer { spool.close() }
        let stats = spool.statistics()
        #expect(stats.depth == 120 && spool.depth == 120)
        #expect(stats.depthByLeaf[composed] == 80 && stats.depthByLeaf["leaf-7"] == 1)
        let taken = try spool.next(max: 1000)
        #expect(taken.filter { $0.leaf.utf8.elementsEqual(decomposed.utf8) }.map { String(decoding: $0.payload, as: UTF8.self) }
                == Array(repeating: "d", count: 40))
        try spool.acknowledge(taken.map(\.sequence))
        #expect(spool.depth == 0)
    }

    /// Records far apart (a leaf whose next readings sit between other leaves' backlog) are read without the bytes
    /// between them, and the batch keeps about what it delivers, not the reads' tails and gaps.
    @Test func sparseFetchesKeepLittle() throws {
        let dir = temporarySpoolDirectory()
        defer { removeTree(dir) }
        let spool = try Spool(configuration: SpoolConfiguration(directory: dir))
        defer { spool.close() }
        var wanted: [String] = []
        for i in 0..<400 {
            if i % 40 == 0 {
                wanted.append("far-\(i)")
                try spool.append([entry("far", "far-\(i)")])
            } else {
                try spool.append([entry("filler", String(repeating: "x", count: 1500))])
            }
        }
        let batch = try spool.fetch(max: 100) { _, leaf, wanted in leaf == "far" ? wanted : 0 }
        #expect(batch.records.indices.map(batch.leaf) == Array(repeating: "far", count: 10))
        #expect(batch.records.indices.map { String(decoding: batch.payload($0), as: UTF8.self) } == wanted)
        let payloadBytes = batch.records.indices.reduce(0) { $0 + batch.payload($1).count }
        #expect(batch.bufferBytes <= 2 * payloadBytes, "\(batch.bufferBytes) bytes held for \(payloadBytes)")
    }

    /// A quantum takes that many records of a leaf per turn, still in turn and per leaf in order.
    @Test func quantumTakesRunsPerLeaf() throws {
        let dir = temporarySpoolDirectory()
        defer { removeTree(dir) }
        let spool = try Spool(configuration: SpoolConfiguration(directory: dir))
        defer { spool.close() }
        for i in 0..<10 { try spool.append([entry("a", "a\(i)"), entry("b", "b\(i)")]) }
        let batch = try spool.next(max: 8, quantum: 3) { _ in true }
        #expect(batch.map { String(decoding: $0.payload, as: UTF8.self) } == ["a0", "a1", "a2", "b0", "b1", "b2", "a3", "a4"])
        var budget = ["a": 1, "b": 5]
        let limited = try spool.next(max: 100, quantum: 4) { leaf in
            guard budget[leaf, default: 0] > 0 else { return false }
            budget[leaf]! -= 1
            return true
        }
        #expect(limited.map { String(decoding: $0.payload, as: UTF8.self) } == ["b3", "b4", "b5", "b6", "a5", "b7"])
    }

    /// What `take` removed and `putBack` returns leaves each leaf exactly as it was: retried records first (with
    /// their sequences), then its queue, across segments.
    @Test func putBackRestoresTheOrder() {
        var q = LeafQueues()
        let a = q.slot(of: "a")
        for offset: UInt32 in [10, 20, 30] { q.enqueue(a, segment: 1, offset: offset) }
        q.enqueue(a, segment: 2, offset: 5)
        let retried = q.take(a)!
        q.giveBack([(sequence: 7, location: retried.location)])
        func drain(_ q: LeafQueues) -> [RecordLocation] {
            var copy = q
            var out: [RecordLocation] = []
            while let l = copy.popFront(a) { out.append(l) }
            return out
        }
        let before = drain(q)
        let taken = (0..<3).compactMap { _ in q.take(a) }
        #expect(taken.map(\.retrySequence) == [7, nil, nil])
        q.putBack(taken)
        #expect(drain(q) == before)
        #expect(before.map(\.offset) == [10, 20, 30, 5])
    }

    /// Expired records are settled and given back to the leaf's grant: a leaf behind a long expired backlog still
    /// gets its fresh records in the same fetch, within its budget.
    @Test func expiredRecordsDoNotUseUpTheBudget() throws {
        let dir = temporarySpoolDirectory()
        defer { removeTree(dir) }
        var config = SpoolConfiguration(directory: dir)
        config.ttlMilliseconds = 1000
        let spool = try Spool(configuration: config)
        defer { spool.close() }
        try spool.append((0..<500).map { entry("a", "old\($0)", at: 1) })
        try spool.append((0..<3).map { entry("a", "new\($0)", at: 1_000_000) })
        var budget = 4
        let batch = try spool.next(max: 100, quantum: 2, nowMs: 1_000_500) { _, _, wanted in
            guard wanted > 0 else { budget -= wanted; return 0 }
            let granted = min(wanted, budget)
            budget -= granted
            return granted
        }
        #expect(batch.map { String(decoding: $0.payload, as: UTF8.self) } == ["new0", "new1", "new2"])
        #expect(spool.statistics().dropped[.ttl]?["a"] == 500)
    }

    /// Interleaved leaves, records from a few bytes to far past the read-ahead guess, spread over many segments and
    /// gaps wider than one read: every record comes back whole, per leaf in order, once.
    @Test func batchReadsReturnEveryRecordWhole() throws {
        let dir = temporarySpoolDirectory()
        defer { removeTree(dir) }
        var config = SpoolConfiguration(directory: dir)
        config.segmentBytes = 2 * ReadPlan.maxSpan
        let spool = try Spool(configuration: config)
        defer { spool.close() }
        var written: [String: [String]] = [:]
        for i in 0..<600 {
            let leaf = "leaf-\(i % 7)"
            let size = [3, 200, ReadPlan.tailGuess - 20, ReadPlan.tailGuess + 1, 20_000, 300_000][i % 6]
            let payload = "\(i):" + String(repeating: Character(UnicodeScalar(UInt8(97 + i % 26))), count: size)
            written[leaf, default: []].append(payload)
            try spool.append([entry(leaf, payload)])
        }
        var read: [String: [String]] = [:]
        while true {
            let batch = try spool.next(max: 37)
            if batch.isEmpty { break }
            for r in batch { read[r.leaf, default: []].append(String(decoding: r.payload, as: UTF8.self)) }
            try spool.acknowledge(batch.map(\.sequence))
        }
        #expect(read == written)
        #expect(spool.statistics().corruptRegions == 0)
    }

    /// A read takes as many bytes past a run's last record as the largest frame seen: after a reopen (nothing seen
    /// yet, 256 bytes) records of 3 kB still come back whole, read again on their own, and the next reads take enough.
    @Test func readTailFollowsTheLargestFrame() throws {
        let dir = temporarySpoolDirectory()
        defer { removeTree(dir) }
        let config = SpoolConfiguration(directory: dir)
        var written: [String] = []
        do {
            let spool = try Spool(configuration: config)
            for i in 0..<40 {
                let payload = "\(i):" + String(repeating: "x", count: i % 2 == 0 ? 3000 : 100)
                written.append(payload)
                try spool.append([entry("a", payload)])
            }
            #expect(spool.withState { $0.readTail } > 3000, "appends tell it")
            spool.close()
        }
        let spool = try Spool(configuration: config)
        defer { spool.close() }
        #expect(spool.withState { $0.readTail } == 256)
        var read: [String] = []
        while true {
            let batch = try spool.next(max: 7)
            if batch.isEmpty { break }
            read += batch.map { String(decoding: $0.payload, as: UTF8.self) }
            try spool.acknowledge(batch.map(\.sequence))
        }
        #expect(read == written)
        #expect(spool.withState { $0.readTail } > 3000, "reads tell it")
    }
}
