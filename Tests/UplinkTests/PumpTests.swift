import FieldgateCore
import HubEmulator
import HubTestSupport
import IoTHub
import Spool
import Synchronization
import Testing
import Uplink
import HubServiceClient

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

@Suite("Uplink telemetry pump")
struct PumpTests {
    /// A message the hub refuses for good goes to the dead-letter file and is counted; a reading too large for the
    /// hub never leaves; the leaf keeps delivering what follows, in order. A property the hub would refuse (`°C`)
    /// is escaped on the way instead (issue 18.2).
    @Test func permanentRejectionsAreDeadLettered() async throws {
        try await withHub { hub in
            let leaves = try await createLeaves(hub, count: 1)
            let h = try UplinkHarness(hub: hub, leaves: leaves)
            h.uplink.start()
            try await eventually(10, "ready") { await h.uplink.status().count(.ready) == 1 }
            try h.append([(leaf: "leaf-0", json: #"{"n":1}"#, properties: ["unit": "°C"])])
            try await eventually(10, "the first reading at the hub") { try await allEvents(hub).count == 1 }
            // The hub refuses the next message for good (fault injection: as it refuses a malformed one).
            try await hub.core.perform { core in try core.rejectTelemetry("leaf-0", count: 1) }
            try h.append([
                (leaf: "leaf-0", json: #"{"n":2}"#, properties: [:]),
                (leaf: "leaf-0", json: "\"" + String(repeating: "x", count: 300 * 1024) + "\"", properties: [:]),
                (leaf: "leaf-0", json: #"{"n":4}"#, properties: [:]),
            ])
            try await eventually(10, "spool settled") { h.spool.statistics().depth == 0 }
            let events = try await allEvents(hub)
            #expect(events.map(\.body) == [#"{"n":1}"#, #"{"n":4}"#])
            #expect(events.first?.properties["unit"] == "%C2%B0C", "escaped, not refused")
            let stats = h.spool.statistics()
            #expect(stats.dropped[.rejected]?["leaf-0"] == 2)
            #expect(await h.uplink.status().leaves["leaf-0"]?.counters.rejectedRecords == 1, "one refused by the hub, one never sent")
            let deadLetter = try #require(FileManager.default.contents(atPath: h.spoolDirectory + "/dead-letter"))
            #expect(deadLetter.count > 300 * 1024, "both records are in the dead-letter file")
            await h.stop()
        }
    }

    /// The global D2C rate (the hub tier's quota) holds across leaves.
    @Test func d2cRateLimitHolds() async throws {
        try await withHub { hub in
            let leaves = try await createLeaves(hub, count: 4)
            let h = try UplinkHarness(hub: hub, leaves: leaves) { $0.messagesPerSecond = 40 }
            h.uplink.start()
            try await eventually(10, "ready") { await h.uplink.status().count(.ready) == 4 }
            let start = ContinuousClock.now
            try h.append((0..<100).map { i in (leaf: "leaf-\(i % 4)", json: "{}", properties: [:]) })
            try await eventually(20, "delivered") { h.spool.statistics().depth == 0 }
            let elapsed = ContinuousClock.now - start
            // 40 at once (the burst), then 40/s: 100 messages need at least 1.5 s.
            #expect(elapsed >= .milliseconds(1400), "100 messages at 40/s took \(elapsed)")
            #expect(elapsed < .seconds(10), "generous: the suites run in parallel on as few as 2 cores")
            await h.stop()
        }
    }

    /// Coalescing: a leaf's backlog of JSON readings leaves as JSON arrays under the size target, in order.
    @Test func backlogIsCoalescedIntoJSONArrays() async throws {
        try await withHub { hub in
            let leaves = try await createLeaves(hub, count: 1)
            let h = try UplinkHarness(hub: hub, leaves: leaves) { $0.coalesceTargetBytes = 4000 }
            try h.append((0..<200).map { i in (leaf: "leaf-0", json: #"{"n":\#(i),"pad":"\#(String(repeating: "p", count: 60))"}"#, properties: ["kind": "reading"]) })
            h.uplink.start()
            try await eventually(10, "drained") { h.spool.statistics().depth == 0 }
            let events = try await allEvents(hub)
            #expect(events.count < 10, "200 readings of ~80 B in about 4 messages, got \(events.count)")
            var numbers: [Int64] = []
            for e in events {
                #expect(e.body?.utf8.count ?? 0 <= 4000)
                #expect(e.properties["kind"] == "reading")
                let array = try #require(JSONValue.parse(Array((e.body ?? "").utf8))?.arrayValue)
                numbers += array.compactMap { $0["n"]?.intValue }
            }
            #expect(numbers == (0..<200).map(Int64.init))
            await h.stop()
        }
    }

    /// An adapter that never answers does not hold the hub's lock: the message is abandoned at the local deadline
    /// and comes back.
    @Test func c2dDeadlineAbandons() async throws {
        try await withHub { hub in
            let leaves = try await createLeaves(hub, count: 1)
            let adapter = ScriptedAdapter()
            let h = try UplinkHarness(hub: hub, leaves: leaves, router: adapter) { $0.cloudToDevice.holdMilliseconds = 300; $0.cloudToDevice.pauseAfterAbandonMilliseconds = 200 }
            h.uplink.start()
            try await eventually(10, "ready") { await h.uplink.status().count(.ready) == 1 }
            _ = try await HubServiceClient(host: "127.0.0.1", port: hub.running.httpPort, authorization: nil)
                .request("POST", "/devices/leaf-0/messages/deviceBound", body: ["body": "hold", "messageId": "m-slow"])
            try await eventually(10, "abandoned and redelivered") { adapter.count >= 2 }
            #expect(await h.uplink.status().leaves["leaf-0"]?.counters.cloudToDeviceAbandoned ?? 0 >= 1)
            #expect(adapter.seen.withLock { $0.map(\.deliveryCount).prefix(2) } == [0, 1])
            adapter.release()
            await h.stop()
        }
    }
}
