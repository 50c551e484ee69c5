import FieldgateCore
import Glibc
import HubEmulator
import HubTestSupport
import IoTHub
import Spool
import Testing
import Uplink

@Suite("Uplink telemetry over one TLS connection")
struct TelemetryUplinkTests {
    /// Issue 4 test 7: 1000 leaves on exactly one TCP connection; every message attributed to its own leaf with
    /// its properties, stable ids and acquisition time; per-leaf order held. The hub holds at most 999 tokens per
    /// connection, so the leaves authenticate through the `device` policy with one hub-scope token.
    @Test func thousandLeavesShareOneConnection() async throws {
        try await withHub { hub in
            let policy = try #require(await hub.core.perform { $0.policy("device") })
            let leaves = try await createLeaves(hub, count: 1000).map {
                LeafConfiguration(deviceID: $0.deviceID, credential: .sharedAccessPolicy(name: policy.keyName, key: policy.primaryKey, scope: .hub))
            }
            let h = try UplinkHarness(hub: hub, leaves: leaves)
            h.uplink.start()
            try await eventually(60, "1000 leaves ready") { await h.uplink.status().count(.ready) == 1000 }
            #expect(try await hub.core.perform { $0.connectionCount } == 1)

            let perLeaf = 5
            var readings: [(leaf: String, json: String, properties: [String: String])] = []
            for n in 0..<perLeaf {
                for leaf in leaves {
                    readings.append((leaf.deviceID, #"{"n":\#(n),"leaf":"\#(leaf.deviceID)"}"#, ["leaf": leaf.deviceID, "n": String(n)]))
                }
            }
            let ids = try h.append(readings)
            try await eventually(60, "all 5000 messages at the hub") { try await hub.core.perform { $0.acceptedEventCount } >= Int64(ids.count) }

            let events = try await allEvents(hub)
            #expect(events.count == ids.count)
            #expect(Set(events.compactMap { $0.systemProperties["message-id"] }) == Set(ids))
            var lastN: [String: Int] = [:]
            for e in events {
                #expect(e.annotations[IoTHubAMQP.connectionDeviceID] == e.deviceId)
                #expect(e.properties["leaf"] == e.deviceId, "message attributed to the wrong leaf")
                #expect(e.systemProperties["content-type"] == "application/json")
                #expect(e.systemProperties["content-encoding"] == "utf-8")
                #expect(e.properties[IoTHubAMQP.creationTimeProperty].flatMap(WallClock.parseISO8601) != nil)
                let n = Int(e.properties["n"] ?? "") ?? -1
                #expect(n > lastN[e.deviceId, default: -1], "per-leaf order broken for \(e.deviceId)")
                lastN[e.deviceId] = n
            }
            try await eventually(10, "spool drained") { h.spool.statistics().depth == 0 }
            let status = await h.uplink.status()
            #expect(status.connections.count == 1)
            #expect(status.connections.first?.opens == 1)
            #expect(try await hub.core.perform { $0.connectionCount } == 1)
            await h.stop()
        }
    }

    /// Issue 4 test 9: the connection dropped and the hub restarted mid-stream: nothing acknowledged is lost, and a
    /// duplicate always carries the same message id.
    @Test func survivesDroppedConnectionAndHubRestart() async throws {
        let hub = try await TestHub.start()
        let leaves = try await createLeaves(hub, count: 20)
        let h = try UplinkHarness(hub: hub, leaves: leaves)
        h.uplink.start()
        try await eventually(20, "leaves ready") { await h.uplink.status().count(.ready) == 20 }

        var ids: [String] = []
        var bodies: [String: String] = [:]
        func produce(_ round: Int) throws {
            let batch = leaves.map { (leaf: $0.deviceID, json: #"{"round":\#(round),"leaf":"\#($0.deviceID)"}"#, properties: ["round": String(round)]) }
            let newIDs = try h.append(batch)
            for (id, r) in zip(newIDs, batch) { bodies[id] = r.json }
            ids += newIDs
        }
        var seen: [ReceivedEvent] = []
        for round in 0..<30 {
            try produce(round)
            if round == 10 { _ = try await hub.core.perform { $0.dropAllConnections() } }
            try await Task.sleep(for: .milliseconds(20))
        }
        // The reconnect after the drop completes before the hub goes away (else both outages share one reconnect).
        try await eventually(20, "reconnected after the drop") { await h.uplink.status().connections[0].opens >= 2 }
        // The emulator's event log does not survive its restart, so the old hub's view is read once it has
        // accepted everything so far (an acceptance after the read would be acknowledged yet never seen).
        try await eventually(20, "the backlog of the drop delivered") { h.spool.statistics().depth == 0 }
        seen += try await allEvents(hub)
        let restarted = try await hub.restart()
        for round in 30..<60 { try produce(round); try await Task.sleep(for: .milliseconds(10)) }
        try await eventually(30, "spool drained after the restart") { h.spool.statistics().depth == 0 }
        seen += try await allEvents(restarted)

        let received = Set(seen.compactMap { $0.systemProperties["message-id"] })
        #expect(received == Set(ids), "missing: \(Set(ids).subtracting(received).count)")
        for e in seen {
            let id = e.systemProperties["message-id"] ?? ""
            #expect(e.body == bodies[id], "a message id carried another body")
        }
        let status = await h.uplink.status()
        #expect(status.connections[0].opens >= 3, "a drop and a restart mean at least two reconnects")
        await h.stop()
        await restarted.stop()
    }

    /// The harness itself: a test that throws half-way leaves no uplink running behind it (under emulation one kept
    /// retrying a closed port and slowed every test after it). Its stop runs with the hub's.
    @Test func aThrowingTestStillStopsItsUplink() async throws {
        struct HalfWay: Error {}
        var harness: UplinkHarness?
        await #expect(throws: HalfWay.self) {
            try await withHub { hub in
                let leaves = try await createLeaves(hub, count: 1)
                let h = try UplinkHarness(hub: hub, leaves: leaves)
                harness = h
                h.uplink.start()
                try await eventually(20, "the leaf ready") { await h.uplink.status().count(.ready) == 1 }
                throw HalfWay()
            }
        }
        let h = try #require(harness)
        #expect(throws: SpoolError.self, "the harness's spool was closed, so its uplink was stopped before it") {
            try h.spool.append([Spool.Entry(leaf: "leaf-0", acquiredAtMs: 0, payload: [1])])
        }
        #expect(access(h.spoolDirectory, F_OK) != 0, "its directory removed")
    }
}
