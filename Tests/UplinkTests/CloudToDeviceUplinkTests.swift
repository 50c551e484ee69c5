import FieldgateCore
import HubEmulator
import HubServiceClient
import HubTestSupport
import IoTHub
import Spool
import Synchronization
import Testing
import Uplink

/// A stand-in adapter: decides by the message body, and records what it saw.
final class ScriptedAdapter: LeafRouter {
    let seen = Mutex<[C2DMessage]>([])
    /// Messages whose body is "hold" wait here until the test lets them go.
    let held = Mutex<[CheckedContinuation<Void, Never>]>([])

    func cloudToDevice(_ message: C2DMessage) async -> C2DOutcome {
        seen.withLock { $0.append(message) }
        switch String(decoding: message.body, as: UTF8.self) {
        case "reject": return .reject("unknown point")
        case "abandon-once": return message.deliveryCount == 0 ? .abandon("bus busy") : .complete
        case "hold":
            await withCheckedContinuation { cont in held.withLock { $0.append(cont) } }
            return .complete
        default: return .complete
        }
    }

    func release() { for c in held.withLock({ h in defer { h = [] }; return h }) { c.resume() } }
    var count: Int { seen.withLock { $0.count } }
}

@Suite("Uplink cloud-to-device")
struct CloudToDeviceUplinkTests {
    private func service(_ hub: TestHub) -> HubServiceClient {
        HubServiceClient(host: "127.0.0.1", port: hub.running.httpPort, authorization: nil)
    }

    private func send(_ hub: TestHub, to device: String, body: String, id: String, ack: String = "full") async throws {
        let r = try await service(hub).request("POST", "/devices/\(device)/messages/deviceBound",
                                               body: ["body": .string(body), "messageId": .string(id), "ack": .string(ack)])
        #expect(r.status == 200, "send: \(r.text)")
    }

    /// Every feedback record the service side has received, waiting until `count` arrived.
    private func feedback(_ hub: TestHub, count: Int) async throws -> [String: String] {
        var records: [String: String] = [:]
        try await eventually(20, "\(count) feedback records") {
            let r = try await service(hub).request("GET", "/messages/serviceBound/feedback?wait=200")
            for f in r.json?.arrayValue ?? [] {
                if let id = f["originalMessageId"]?.stringValue { records[id] = f["statusCode"]?.stringValue }
            }
            return records.count >= count
        }
        return records
    }

    /// Issue 4 test 12: complete / reject / abandon reach the hub as Success / Rejected / redelivery.
    @Test func outcomesBecomeFeedback() async throws {
        try await withHub { hub in
            let leaves = try await createLeaves(hub, count: 2)
            let adapter = ScriptedAdapter()
            let h = try UplinkHarness(hub: hub, leaves: leaves, router: adapter)
            h.uplink.start()
            try await eventually(10, "ready") { await h.uplink.status().count(.ready) == 2 }
            try await send(hub, to: "leaf-0", body: "set 21.5", id: "m-complete")
            try await send(hub, to: "leaf-0", body: "reject", id: "m-reject")
            try await send(hub, to: "leaf-1", body: "abandon-once", id: "m-abandon")
            let records = try await feedback(hub, count: 3)
            #expect(records == ["m-complete": "Success", "m-reject": "Rejected", "m-abandon": "Success"])
            let seen = adapter.seen.withLock { $0 }
            #expect(seen.filter { $0.messageID == "m-abandon" }.map(\.deliveryCount) == [0, 1], "abandoned once, then redelivered")
            #expect(seen.first { $0.messageID == "m-complete" }?.deviceID == "leaf-0")
            let c = await h.uplink.status().leaves["leaf-0"]?.counters
            #expect(c?.cloudToDeviceCompleted == 1 && c?.cloudToDeviceRejected == 1)
            await h.stop()
        }
    }

    /// Seed 000 ("Send cloud-to-device messages"), through the gateway: the service sends a C2D message with
    /// ack=full to a leaf, the leaf's adapter completes it, and the service side receives feedback Success; the
    /// leaf keeps sending telemetry with its `temperatureAlert` property meanwhile.
    @Test func seed000CloudToDeviceWithFullAck() async throws {
        try await withHub { hub in
            let record = try await hub.core.perform { try $0.upsertDevice(id: "myFirstNodeDevice", status: nil, primaryKey: nil, secondaryKey: nil) }
            let leaf = LeafConfiguration(deviceID: "myFirstNodeDevice", credential: .symmetricKey(primary: record.authentication.symmetricKey.primaryKey, secondary: nil))
            let adapter = ScriptedAdapter()
            let h = try UplinkHarness(hub: hub, leaves: [leaf], router: adapter)
            h.uplink.start()
            try await eventually(10, "ready") { await h.uplink.status().count(.ready) == 1 }
            for _ in 0..<3 {
                let t = 20 + Double.random(in: 0..<15)
                try h.append([(leaf: "myFirstNodeDevice", json: #"{"deviceId":"myFirstNodeDevice","temperature":\#(t),"humidity":70}"#,
                               properties: ["temperatureAlert": t > 30 ? "true" : "false"])])
            }
            try await send(hub, to: "myFirstNodeDevice", body: "Cloud to device message.", id: "seed-000-1")
            let records = try await feedback(hub, count: 1)
            #expect(records["seed-000-1"] == "Success")
            #expect(adapter.seen.withLock { $0.first?.body } == Array("Cloud to device message.".utf8))
            try await eventually(10, "telemetry at the hub") { try await hub.core.perform { $0.acceptedEventCount } == 3 }
            #expect(try await allEvents(hub).allSatisfy { $0.properties["temperatureAlert"] != nil })
            await h.stop()
        }
    }

    /// A redelivery after a reconnect, while the adapter still works on the first delivery, is not run twice:
    /// it is settled with the first delivery's outcome.
    @Test func redeliveryIsDeduplicated() async throws {
        try await withHub { hub in
            let leaves = try await createLeaves(hub, count: 1)
            let adapter = ScriptedAdapter()
            let h = try UplinkHarness(hub: hub, leaves: leaves, router: adapter)
            h.uplink.start()
            try await eventually(10, "ready") { await h.uplink.status().count(.ready) == 1 }
            try await send(hub, to: "leaf-0", body: "hold", id: "m-held")
            try await eventually(10, "adapter holds the message") { adapter.held.withLock { !$0.isEmpty } }
            _ = try await hub.core.perform { $0.dropAllConnections() }
            try await eventually(10, "redelivered after the reconnect") {
                await h.uplink.status().leaves["leaf-0"]?.counters.cloudToDeviceDuplicates == 1
            }
            adapter.release()
            let records = try await feedback(hub, count: 1)
            #expect(records["m-held"] == "Success")
            #expect(adapter.count == 1, "the adapter ran the command once")
            await h.stop()
        }
    }

    /// A message that is already expired when it arrives (here: the gateway's clock is ahead) is rejected without
    /// reaching the adapter.
    @Test func expiredMessageIsRejectedWithoutDelivery() async throws {
        try await withHub { hub in
            let leaves = try await createLeaves(hub, count: 1)
            let adapter = ScriptedAdapter()
            let h = try UplinkHarness(hub: hub, leaves: leaves, router: adapter, clock: TestClock { WallClock.nowMilliseconds() + 120_000 }) {
                $0.tokenTTLSeconds = 600
            }
            h.uplink.start()
            try await eventually(10, "ready") { await h.uplink.status().count(.ready) == 1 }
            let r = try await service(hub).request("POST", "/devices/leaf-0/messages/deviceBound",
                                                   body: ["body": "stale", "messageId": "m-stale", "ack": "full", "ttlSeconds": 60])
            #expect(r.status == 200)
            let records = try await feedback(hub, count: 1)
            #expect(records["m-stale"] == "Rejected")
            #expect(adapter.count == 0)
            #expect(await h.uplink.status().leaves["leaf-0"]?.counters.cloudToDeviceExpired == 1)
            await h.stop()
        }
    }
}
