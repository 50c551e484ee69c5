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
        case "abandon-once":
            return seen.withLock { s in s.filter { $0.messageID == message.messageID }.count } == 1 ? .abandon("bus busy") : .complete
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

    /// Issue 4 test 12: complete / reject / abandon reach the hub as Success / Rejected / a retry. The retry of an
    /// abandoned message happens here, on the same delivery (no delivery count spent at the hub).
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
            #expect(seen.filter { $0.messageID == "m-abandon" }.map(\.deliveryCount) == [0, 0], "abandoned once, then retried on the same delivery")
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

    /// Issue 18.3: C2D reaches a leaf in hub order. 1,000 messages in bursts of 50 (the hub's queue limit) to two
    /// leaves, with an adapter whose answers take a random 0–3 ms, arrive in the order they were sent.
    @Test func cloudToDeviceKeepsHubOrder() async throws {
        try await withHub { hub in
            let leaves = try await createLeaves(hub, count: 2)
            let adapter = JitteryAdapter()
            let h = try UplinkHarness(hub: hub, leaves: leaves, router: adapter)
            h.uplink.start()
            try await eventually(10, "ready") { await h.uplink.status().count(.ready) == 2 }
            let perLeaf = 500
            for burst in 0..<(perLeaf / 50) {
                try await hub.core.perform { core in
                    for i in (burst * 50)..<((burst + 1) * 50) {
                        for leaf in ["leaf-0", "leaf-1"] {
                            _ = try core.sendCloudToDevice(leaf, message: CloudToDeviceMessage(messageId: "\(leaf)-\(i)", body: Array("\(i)".utf8)), ttlMilliseconds: nil)
                        }
                    }
                }
                // Settled at the hub too (the adapter sees a message before its disposition goes out): the next
                // burst must find the queues empty, they hold at most 50.
                try await eventually(30, "burst \(burst) delivered and settled") {
                    let queued = try await hub.core.perform { core in core.cloudToDeviceQueueCount("leaf-0") + core.cloudToDeviceQueueCount("leaf-1") }
                    return adapter.count >= (burst + 1) * 100 && queued == 0
                }
            }
            for leaf in ["leaf-0", "leaf-1"] {
                let order = adapter.order(of: leaf)
                #expect(order == (0..<perLeaf).map { "\(leaf)-\($0)" }, "\(leaf): \(zip(order, 0...).first { $0.0 != "\(leaf)-\($0.1)" }.map { "first out of order at \($0.1): \($0.0)" } ?? "count \(order.count)")")
            }
            await h.stop()
        }
    }

    /// Issue 18.1 at the uplink: a leaf that cannot be reached keeps its message (held, not settled); the moment
    /// the adapter says it is reachable the message is retried and completes, with feedback Success and no
    /// delivery count spent.
    @Test func unreachableLeafKeepsItsMessage() async throws {
        try await withHub { hub in
            let leaves = try await createLeaves(hub, count: 1)
            let adapter = ReachabilityAdapter()
            let h = try UplinkHarness(hub: hub, leaves: leaves, router: adapter)
            h.uplink.start()
            try await eventually(10, "ready") { await h.uplink.status().count(.ready) == 1 }
            try await send(hub, to: "leaf-0", body: "set 1", id: "m-1")
            try await send(hub, to: "leaf-0", body: "set 2", id: "m-2")
            try await eventually(10, "tried once") { adapter.attempts >= 1 }
            try await Task.sleep(for: .seconds(3))
            #expect(adapter.delivered.isEmpty)
            let c = await h.uplink.status().leaves["leaf-0"]?.counters
            #expect(c?.cloudToDeviceAbandoned == 0, "nothing given back to the hub while held")
            #expect((c?.cloudToDeviceUnreachable ?? 0) >= 1)
            adapter.reachable.store(true, ordering: .relaxed)
            h.uplink.leafReachable("leaf-0")
            let records = try await feedback(hub, count: 2)
            #expect(records == ["m-1": "Success", "m-2": "Success"])
            #expect(adapter.delivered.map(\.0) == ["m-1", "m-2"])
            #expect(adapter.delivered.allSatisfy { $0.1 == 0 }, "no delivery count spent")
            await h.stop()
        }
    }
}

/// Completes every message after a random 0–3 ms, recording the order per leaf.
final class JitteryAdapter: LeafRouter {
    private let seen = Mutex<[String: [String]]>([:])
    private let total = Atomic<Int>(0)
    func cloudToDevice(_ message: C2DMessage) async -> C2DOutcome {
        try? await Task.sleep(for: .microseconds(Int.random(in: 0...3000)))
        seen.withLock { $0[message.deviceID, default: []].append(message.messageID ?? "") }
        total.add(1, ordering: .relaxed)
        return .complete
    }
    var count: Int { total.load(ordering: .relaxed) }
    func order(of leaf: String) -> [String] { seen.withLock { $0[leaf] ?? [] } }
}

/// Unreachable until the test says otherwise.
final class ReachabilityAdapter: LeafRouter {
    let reachable = Atomic<Bool>(false)
    private let tries = Atomic<Int>(0)
    private let log = Mutex<[(String, Int)]>([])
    func cloudToDevice(_ message: C2DMessage) async -> C2DOutcome {
        tries.add(1, ordering: .relaxed)
        guard reachable.load(ordering: .relaxed) else { return .unreachable("not seen yet") }
        log.withLock { $0.append((message.messageID ?? "", message.deliveryCount)) }
        return .complete
    }
    var attempts: Int { tries.load(ordering: .relaxed) }
    var delivered: [(String, Int)] { log.withLock { $0 } }
}
