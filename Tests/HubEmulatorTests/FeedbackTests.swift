import HubTestSupport
import FieldgateCore
import HubDeviceClient
@testable import HubEmulator
import IoTHub
import ProtonAMQP
import Testing

@Suite("feedback queue")
struct FeedbackQueueTests {
    func record(_ id: String) -> FeedbackRecord {
        FeedbackRecord(originalMessageId: id, deviceId: "d", deviceGenerationId: "1", statusCode: "Success",
                       description: "Success", enqueuedTimeUtc: "2026-01-01T00:00:00Z")
    }

    @Test("a waiter that stopped waiting is gone: the next records go to the next waiter, all of them, in order")
    func removedWaiterGetsNothing() {
        var queue = FeedbackQueue()
        let stale = queue.addWaiter { _ in Issue.record("a timed-out waiter was handed records") }
        #expect(queue.removeWaiter(stale) != nil)
        #expect(queue.removeWaiter(stale) == nil)  // removed once
        #expect(queue.nextHandOff() == nil)
        queue.append(record("a"))
        queue.append(record("b"))
        #expect(queue.nextHandOff() == nil)  // records, but nobody waiting
        var got: [String] = []
        _ = queue.addWaiter { got += $0.map(\.originalMessageId) }
        if let (deliver, records) = queue.nextHandOff() { deliver(records) }
        #expect(got == ["a", "b"])
        #expect(queue.records.isEmpty && !queue.hasWaiter)
    }

    @Test("records given back return in front of newer ones, in their order")
    func giveBack() {
        var queue = FeedbackQueue()
        queue.append(record("c"))
        queue.giveBack([record("a"), record("b")])
        #expect(queue.takeAll().map(\.originalMessageId) == ["a", "b", "c"])
    }
}

@Suite("feedback delivery", .serialized, .timeLimit(.minutes(2)))
struct FeedbackDeliveryTests {
    @Test("a wait that timed out does not swallow the next records: the following wait gets them, exactly once")
    func timedOutWaitThenSuccess() async throws {
        try await withHub { hub in
            try await hub.createDevice("fb-dev")
            let c = try await hub.connectDevice("fb-dev")
            try await c.attachCloudToDevice(deviceId: "fb-dev")
            #expect(try await feedback(hub, waitMilliseconds: 300).isEmpty)  // times out, leaves no waiter behind
            for i in 0..<3 {
                _ = try await hub.core.perform { core in
                    try core.sendCloudToDevice("fb-dev", message: CloudToDeviceMessage(
                        messageId: "m\(i)", body: Array("x".utf8), ack: .full), ttlMilliseconds: nil)
                }
                c.settle(try await c2dEvent(c), .accepted)
            }
            var seen: [String] = []
            while seen.count < 3 {
                let records = try await feedback(hub, waitMilliseconds: 5000)
                if records.isEmpty { break }
                seen += records.map(\.originalMessageId)
            }
            #expect(seen == ["m0", "m1", "m2"])
            #expect(try await feedback(hub, waitMilliseconds: 0).isEmpty)  // nothing delivered twice
            c.close()
        }
    }
}
