import FieldgateCore
import HubTestSupport
import Testing
@testable import Uplink

@Suite("Unsettled telemetry, found by delivery tag (no sockets)")
struct UnsettledTelemetryTests {
    private func leaf(_ name: String) -> LeafRuntime {
        LeafRuntime(configuration: LeafConfiguration(deviceID: name, credential: .symmetricKey(primary: "a2V5", secondary: nil)),
                    machine: LeafMachine(hasSecondaryKey: false, timing: MachineTests.timing), dedupeCapacity: 8, capabilities: [],
                    reportedIntervalMilliseconds: 1000, cloudToDevicePolicy: CloudToDevicePolicy())
    }

    /// Outcomes come back in any order; each tag finds its own entry once, and never another's.
    @Test func eachTagFindsItsEntryOnce() {
        var table = UnsettledTelemetry()
        let a = leaf("a"), b = leaf("b")
        var sent: [(tag: UInt64, leaf: LeafRuntime, sequences: [UInt64])] = []
        for i in 0..<300 {
            let owner = i % 3 == 0 ? b : a
            let sequences: [UInt64] = i % 7 == 0 ? [] : [UInt64(2 * i), UInt64(2 * i + 1)]
            sent.append((table.insert(.init(leaf: owner, sequences: sequences, quotaGeneration: i)), owner, sequences))
        }
        #expect(Set(sent.map(\.tag)).count == sent.count)
        #expect(table.count == 300)
        var order = Array(sent.indices)
        var generator = SplitMix(seed: 7)
        order.shuffle(using: &generator)
        for (done, i) in order.enumerated() {
            let entry = table.remove(tag: sent[i].tag)
            #expect(entry?.leaf === sent[i].leaf && entry?.sequences == sent[i].sequences && entry?.quotaGeneration == i)
            #expect(table.remove(tag: sent[i].tag) == nil, "a second outcome for the same delivery finds nothing")
            #expect(table.count == 300 - done - 1)
        }
        #expect(table.isEmpty)
    }

    /// A slot freed and taken again gets a new tag: a late outcome for the old delivery (its leaf's links went and
    /// its records went back to the spool) must not settle the message now in that slot — nor after the table
    /// emptied and dropped its slots.
    @Test func aStaleTagNeverMatchesTheSlotsNextEntry() {
        var table = UnsettledTelemetry()
        let a = leaf("a"), b = leaf("b")
        let old = table.insert(.init(leaf: a, sequences: [1], quotaGeneration: 0))
        _ = table.insert(.init(leaf: b, sequences: [2], quotaGeneration: 0))
        #expect(table.removeAll(of: a) == [1])
        let reused = table.insert(.init(leaf: b, sequences: [3], quotaGeneration: 0))
        #expect(reused != old)
        #expect(table.remove(tag: old) == nil)
        #expect(table.remove(tag: reused)?.sequences == [3])

        var many: [UInt64] = []
        for i in 0..<100 { many.append(table.insert(.init(leaf: a, sequences: [UInt64(10 + i)], quotaGeneration: 0))) }
        #expect(table.removeAll().sorted() == [2] + (10..<110).map(UInt64.init))
        #expect(table.isEmpty)
        let fresh = table.insert(.init(leaf: a, sequences: [500], quotaGeneration: 0))
        #expect(!many.contains(fresh) && fresh != old && fresh != reused)
        for tag in many { #expect(table.remove(tag: tag) == nil) }
        #expect(table.remove(tag: fresh)?.sequences == [500])
        #expect(table.remove(tag: 0) == nil && table.remove(tag: .max) == nil)
    }

    /// The last entries going with their leaf, a freed slot above them: the table empties mid-walk and must not
    /// shrink under it (it did, and trapped on the next slot).
    @Test func theLastLeafsEntriesGoWithAFreedSlotAbove() {
        var table = UnsettledTelemetry()
        let a = leaf("a"), b = leaf("b")
        _ = table.insert(.init(leaf: a, sequences: [1], quotaGeneration: 0))
        let ofB = table.insert(.init(leaf: b, sequences: [2], quotaGeneration: 0))
        #expect(table.remove(tag: ofB)?.sequences == [2])
        #expect(table.removeAll(of: a) == [1])
        #expect(table.isEmpty)
        let next = table.insert(.init(leaf: b, sequences: [3], quotaGeneration: 0))
        #expect(table.remove(tag: next)?.sequences == [3])
    }

    /// A leaf's links going take exactly its entries; the others' outcomes still find theirs.
    @Test func removingALeafTakesOnlyItsEntries() {
        var table = UnsettledTelemetry()
        let a = leaf("a"), b = leaf("b")
        var tagsOfB: [UInt64] = []
        for i in 0..<50 {
            if i % 2 == 0 {
                _ = table.insert(.init(leaf: a, sequences: [UInt64(i)], quotaGeneration: 0))
            } else {
                tagsOfB.append(table.insert(.init(leaf: b, sequences: [UInt64(i)], quotaGeneration: 0)))
            }
        }
        #expect(table.removeAll(of: a) == stride(from: 0, to: 50, by: 2).map(UInt64.init))
        #expect(table.count == 25)
        #expect(table.removeAll(of: a).isEmpty)
        for (k, tag) in tagsOfB.enumerated() { #expect(table.remove(tag: tag)?.sequences == [UInt64(2 * k + 1)]) }
        #expect(table.isEmpty)
    }
}
