import FieldgateCore
import HubEmulator
import HubTestSupport
import IoTHub
import Spool
import Testing
@testable import Uplink

/// Issue 23.4: per-identity heartbeats, an empty D2C message marked `heartbeat=true`.
@Suite("Heartbeats")
struct HeartbeatTests {
    @Test func theFirstIsSpreadThenOnePerInterval() {
        var h = HeartbeatSchedule(intervalMilliseconds: 1000)
        #expect(!h.isDue(nowMs: .max), "nothing before the leaf is ready")
        h.leafReady(nowMs: 10_000, random: 0.25)
        #expect(h.dueMs == 10_250)
        h.leafReady(nowMs: 10_100, random: 0.9)
        #expect(h.dueMs == 10_250, "a reconnect keeps the time")
        #expect(!h.isDue(nowMs: 10_249) && h.isDue(nowMs: 10_250))
        // Due while the leaf could not send: sent late, and the next one counts from then (none made up for).
        h.sent(nowMs: 13_000)
        #expect(h.dueMs == 14_000)
    }

    /// Over real AMQP/TLS: idle leaves send a heartbeat per interval (a leaf's own interval wins, 0 means none);
    /// a leaf with a backlog draining at a limited rate sends its heartbeats ahead of it; each is an empty message
    /// with the marker, a creation time and a fresh id; no reading is lost or reordered by them.
    @Test func cadencePerIdentityAndAheadOfABacklog() async throws {
        try await withHub { hub in
            var leaves = try await createLeaves(hub, count: 4)
            leaves[0].heartbeatIntervalMilliseconds = 0
            leaves[1].heartbeatIntervalMilliseconds = 1000
            let interval: Int64 = 500
            let h = try UplinkHarness(hub: hub, leaves: leaves) {
                $0.heartbeatIntervalMilliseconds = interval
                $0.messagesPerSecond = 40
            }
            h.uplink.start()
            try await eventually(10, "ready") { await h.uplink.status().count(.ready) == 4 }
            // leaf-2 has a backlog of 200 readings: 5 s at 40 messages a second.
            try h.append((0..<200).map { (leaf: "leaf-2", json: #"{"r":\#($0)}"#, properties: [:]) })
            try await Task.sleep(for: .seconds(4))
            let events = try await allEvents(hub)
            let beats = events.filter { $0.properties[HeartbeatSchedule.markerProperty] == "true" }
            func times(_ leaf: String) -> [Int64] {
                beats.filter { $0.deviceId == leaf }.compactMap { $0.properties[IoTHubAMQP.creationTimeProperty].flatMap(WallClock.parseISO8601) }
            }
            #expect(times("leaf-0").isEmpty, "heartbeat_seconds = 0: none")
            for (leaf, every) in [("leaf-1", 1000 as Int64), ("leaf-2", interval), ("leaf-3", interval)] {
                let t = times(leaf)
                let gaps = zip(t.dropFirst(), t).map { $0 - $1 }
                // Never more often than the interval (a 50 ms tick of leeway), and not much less often.
                #expect(t.count >= Int(3000 / every), "\(leaf): \(t.count) heartbeats")
                #expect(gaps.allSatisfy { $0 >= every - 60 && $0 <= 4 * every }, "\(leaf) every \(every) ms: gaps \(gaps)")
            }
            // leaf-2's heartbeats went out while its backlog was draining, not after it: between its first and last
            // reading's arrival at the hub.
            try await eventually(30, "the backlog delivered") { h.spool.statistics().depth == 0 }
            let drained = try await allEvents(hub)
            let readingTimes = drained.filter { $0.deviceId == "leaf-2" && $0.properties[HeartbeatSchedule.markerProperty] == nil }
                .compactMap { WallClock.parseISO8601($0.enqueuedTimeUtc) }
            let beatTimes = drained.filter { $0.deviceId == "leaf-2" && $0.properties[HeartbeatSchedule.markerProperty] == "true" }
                .compactMap { WallClock.parseISO8601($0.enqueuedTimeUtc) }
            let window = (readingTimes.min() ?? 0)...(readingTimes.max() ?? 0)
            #expect(beatTimes.filter { window.contains($0) }.count >= 2, "heartbeats \(beatTimes) within the drain \(window)")
            for beat in beats {
                #expect((beat.body ?? "").isEmpty && beat.bodyBase64 == nil, "empty body")
            }
            let ids = beats.compactMap { $0.systemProperties["message-id"] }
            #expect(ids.count == beats.count && Set(ids).count == ids.count, "each heartbeat has its own id")

            let all = try await allEvents(hub).filter { $0.deviceId == "leaf-2" && $0.properties[HeartbeatSchedule.markerProperty] == nil }
            #expect(all.compactMap(\.body) == (0..<200).map { #"{"r":\#($0)}"# }, "every reading, in order")
            let counters = await h.uplink.status().leaves["leaf-3"]?.counters
            let sent = counters?.heartbeatsSent ?? 0, accepted = counters?.heartbeatsAccepted ?? 0
            #expect(accepted >= 6 && accepted >= sent - 1, "sent \(sent), accepted \(accepted) (one may be on its way)")
            #expect(counters?.acceptedRecords == 0, "a heartbeat is not a reading")
            await h.stop()
        }
    }
}
