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
        let plan = ReadPlan(locations)
        #expect(plan.runs == [
            ReadPlan.Run(segment: 1, firstOffset: 0, lastOffset: 500, members: [2, 1]),
            ReadPlan.Run(segment: 1, firstOffset: ReadPlan.maxSpan, lastOffset: ReadPlan.maxSpan, members: [4]),
            ReadPlan.Run(segment: 2, firstOffset: 50, lastOffset: 100, members: [3, 0]),
        ])
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
}
