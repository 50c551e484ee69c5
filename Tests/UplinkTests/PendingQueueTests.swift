import Testing
@testable import Uplink

@Suite("A leaf's pending queue")
struct PendingQueueTests {
    private func message(_ sequence: UInt64, bytes: Int = 500) -> OutgoingMessage {
        OutgoingMessage(leaf: "leaf-1", sequences: [sequence], bytes: [UInt8](repeating: 7, count: bytes), acquiredAtMs: Int64(sequence))
    }

    /// A leaf under a steady backlog: each fetch tops its queue up before it runs dry. Messages come out in order,
    /// the storage holds the bytes of the queued messages only (not of those already sent), and the array stays
    /// near the queue's depth however long it runs.
    @Test func steadyBacklogFreesSentMessages() {
        var queue = PendingQueue()
        var next: UInt64 = 0, expected: UInt64 = 0
        for round in 0..<5_000 {
            for _ in 0..<(round % 7 + 3) { queue.append(message(next)); next += 1 }
            for _ in 0..<(round % 5 + 2) {
                guard let m = queue.popFirst() else { break }
                #expect(m.sequences == [expected])
                expected += 1
            }
            #expect(queue.count == Int(next - expected))
            // Spent slots never outnumber the queued ones by more than the compaction threshold.
            #expect(queue.storedSlots <= 2 * queue.count + PendingQueue.compactAfter)
            if round % 97 == 0 { #expect(queue.heldBytes == queue.count * 500) }
        }
        #expect(queue.removeAll() == Array(expected..<next))
        #expect(queue.isEmpty && queue.capacity == 0)
    }

    /// A queue that ran dry frees a backlog-sized array, keeps a small one, and gives back what it held in order.
    @Test func runningDryKeepsOnlyASmallArray() {
        var queue = PendingQueue()
        for s in 0..<64 { queue.append(message(UInt64(s))) }
        while queue.popFirst() != nil {}
        #expect(queue.capacity == 0 && queue.heldBytes == 0)
        for s in 0..<3 { queue.append(message(UInt64(s))) }
        _ = queue.popFirst()
        _ = queue.popFirst()
        #expect(queue.heldBytes == 500)
        _ = queue.popFirst()
        #expect(queue.capacity > 0 && queue.capacity <= PendingQueue.keptCapacity)
        for s in 10..<20 { queue.append(message(UInt64(s))) }
        for _ in 0..<4 { _ = queue.popFirst() }
        #expect(queue.removeAll() == Array(14..<20))
        #expect(queue.popFirst() == nil && queue.count == 0)
    }
}
