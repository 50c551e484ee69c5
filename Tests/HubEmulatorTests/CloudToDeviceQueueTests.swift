import HubEmulator
import Testing

/// The C2D queue state machine in virtual time (no sockets).
@Suite("C2D queue state machine")
struct CloudToDeviceQueueTests {
    let token = [UInt8](repeating: 1, count: 16)
    func message(_ id: String, ack: FeedbackRequest = .full) -> CloudToDeviceMessage { CloudToDeviceMessage(messageId: id, body: [], ack: ack) }

    @Test("lock → complete removes; abandon re-enqueues with the count up; unknown locks are lost")
    func lifecycle() throws {
        var q = CloudToDeviceQueue()
        _ = try q.enqueue(message("a"), ttlMilliseconds: nil, now: 0)
        let (delivered, ended) = q.lockNext(lockToken: token, now: 10)
        #expect(delivered?.messageId == "a" && delivered?.deliveryCount == 0 && ended.isEmpty)
        #expect(q.lockNext(lockToken: [2], now: 11).message == nil)  // locked: invisible
        #expect(q.settle(lockToken: token, as: .abandon, now: 12)?.1 == nil)
        #expect(q.lockNext(lockToken: [3], now: 13).message?.deliveryCount == 1)
        #expect(q.settle(lockToken: token, as: .complete, now: 14) == nil)  // old lock: lost
        #expect(q.settle(lockToken: [3], as: .complete, now: 15)?.1 == .completed)
        #expect(q.count == 0)
    }

    @Test("lock expiry after 60 s re-enqueues; TTL expiry and max deliveries dead-letter")
    func expiries() throws {
        var q = CloudToDeviceQueue()
        _ = try q.enqueue(message("a"), ttlMilliseconds: nil, now: 0)
        _ = q.lockNext(lockToken: token, now: 0)
        #expect(q.expire(now: 59_999).isEmpty)
        #expect(q.expire(now: 60_000).isEmpty)
        #expect(q.lockNext(lockToken: [9], now: 60_001).message?.deliveryCount == 1)
        let ended = q.expire(now: 3_600_000 + 120_001)
        #expect(ended.map(\.1) == [.expired])

        var r = CloudToDeviceQueue()
        _ = try r.enqueue(message("b"), ttlMilliseconds: nil, now: 0)
        for i in 0..<9 {
            _ = r.lockNext(lockToken: [UInt8(i)], now: 0)
            #expect(r.settle(lockToken: [UInt8(i)], as: .abandon, now: 0)?.1 == nil)
        }
        _ = r.lockNext(lockToken: [99], now: 0)
        #expect(r.settle(lockToken: [99], as: .abandon, now: 0)?.1 == .deliveryCountExceeded)
    }

    @Test("50 pending at most")
    func cap() throws {
        var q = CloudToDeviceQueue()
        for i in 0..<50 { _ = try q.enqueue(message("m\(i)"), ttlMilliseconds: nil, now: 0) }
        #expect(throws: HubError.self) { _ = try q.enqueue(message("m50"), ttlMilliseconds: nil, now: 0) }
    }
}
