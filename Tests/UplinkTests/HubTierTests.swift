import FieldgateCore
import HubEmulator
import HubServiceClient
import HubTestSupport
import IoTHub
import Testing
@testable import Uplink

/// Issue 23.6: a Basic-tier hub refuses C2D, method and twin links (403010); telemetry goes on, each leaf is shown
/// as telemetry-only once, and the refused links are asked for again only rarely.
@Suite("Hub tier")
struct HubTierTests {
    @Test func refusalsAreLearntOnceAndRecheckedRarely() {
        var limits = HubTierLimits(recheckMilliseconds: 60_000)
        let all = LeafLink.wanted(for: .all)
        #expect(limits.links(from: all) == all && !limits.isLimited)
        #expect(HubTierLimits.isTierRefusal(condition: IoTHubAMQP.unauthorizedAccess, description: #"{"errorCode":403010,"message":"…"}"#))
        #expect(!HubTierLimits.isTierRefusal(condition: IoTHubAMQP.unauthorizedAccess, description: #"{"errorCode":401002}"#))
        let first = limits.refused(.twin, nowMs: 1000)
        let again = limits.refused(.twin, nowMs: 1500)
        #expect(first && !again, "said once")
        let methods = limits.refused(.methods, nowMs: 2000)
        let c2d = limits.refused(.cloudToDevice, nowMs: 2000)
        #expect(methods && c2d && limits.links(from: all) == [.telemetry])
        let early = limits.recheckDue(nowMs: 61_999)
        let due = limits.recheckDue(nowMs: 62_000)
        let right = limits.recheckDue(nowMs: 62_001)
        #expect(!early && due && !right, "one leaf asks; the next recheck is an interval away")
        let twinBack = limits.attached(.twin)
        let twinAgain = limits.attached(.twin)
        #expect(twinBack && !twinAgain)
        #expect(limits.links(from: all) == [.telemetry, .twinRequests, .twinResponses])
        let methodsBack = limits.attached(.methods)
        let c2dBack = limits.attached(.cloudToDevice)
        #expect(methodsBack && c2dBack && !limits.isLimited && limits.recheckAtMs == nil)
    }

    private func invoke(_ hub: TestHub, _ device: String) async throws -> (status: Int, json: JSONValue?) {
        let r = try await HubServiceClient(host: "127.0.0.1", port: hub.running.httpPort, authorization: nil)
            .request("POST", "/twins/\(device)/methods", body: ["methodName": "ping", "payload": .null, "responseTimeoutInSeconds": 10])
        return (r.json?["status"]?.intValue.map(Int.init) ?? r.status, r.json)
    }

    /// Over real AMQP/TLS against the hub in Basic tier: 30 leaves configured for C2D, methods and twin become ready
    /// telemetry-only and deliver in order; the hub refused each feature's links at most once per leaf, then one
    /// leaf per recheck interval asks again; the service side hears 403010. Then the hub moves to Standard: the next
    /// recheck (one leaf) finds the links accepted and every leaf attaches them, methods answer.
    @Test func basicTierKeepsTelemetryFlowingAndNoticesAnUpgrade() async throws {
        try await withHub(configure: { $0.hub.tier = .basic }) { hub in
            let leaves = try await createLeaves(hub, count: 30)
            let recheck = 3_000 as Int64
            let h = try UplinkHarness(hub: hub, leaves: leaves, router: PointAdapter()) { $0.tierRecheckMilliseconds = recheck }
            h.uplink.start()
            try await eventually(20, "every leaf ready") { await h.uplink.status().count(.ready) == 30 }
            var status = await h.uplink.status()
            #expect(status.connections.first?.refusedByTier == ["C2D", "methods", "twin"])
            #expect(status.leaves.values.allSatisfy { $0.tierLimitation == "telemetry-only (hub tier)" })
            #expect(status.leaves.values.allSatisfy { $0.counters.linkFailures == 0 }, "a tier refusal is not a failure of the leaf")
            // A leaf is ready at its first refusal once the tier is known; the refusals of its other links may still be
            // on their way: wait until the count holds still for a second (each refusal puts the recheck 3 s off).
            var refused = try await hub.core.perform { $0.refusedLinks }
            while true {
                try await Task.sleep(for: .milliseconds(1000))
                let now = try await hub.core.perform { $0.refusedLinks }
                if now == refused { break }
                refused = now
            }
            let refusedAt = ContinuousClock.now
            #expect(refused >= 3 && refused <= 30 * 5, "each leaf asked at most once for each refused link: \(refused)")

            for round in 0..<5 { try h.append(leaves.map { (leaf: $0.deviceID, json: #"{"r":\#(round)}"#, properties: [:]) }) }
            try await eventually(20, "delivered") { try await hub.core.perform { $0.acceptedEventCount } == 150 }
            let events = try await allEvents(hub)
            for leaf in leaves {
                #expect(events.filter { $0.deviceId == leaf.deviceID }.compactMap(\.body) == (0..<5).map { #"{"r":\#($0)}"# })
            }
            // The service side of a Basic hub: 403010.
            let call = try await invoke(hub, "leaf-0")
            #expect(call.status == 403 && call.json?["errorCode"]?.intValue == 403010, "\(call)")
            await #expect(throws: UplinkError.self) { try await h.uplink.report(["x": 1], for: "leaf-0") }

            // Rarely: one leaf per recheck interval asks again (its five links), however slow this machine is.
            // (Counted from when `refused` was read: the checks above take seconds on a loaded machine.)
            try await Task.sleep(for: .milliseconds(Int(2 * recheck)))
            let afterRecheck = try await hub.core.perform { $0.refusedLinks }
            let intervals = Int((ContinuousClock.now - refusedAt) / .milliseconds(Int(recheck)))
            #expect(afterRecheck > refused && afterRecheck - refused <= 5 * (intervals + 1),
                    "one leaf per recheck: \(refused) → \(afterRecheck) in \(intervals) intervals")
            #expect(await h.uplink.status().count(.ready) == 30)

            // The operator moves the hub to Standard: the next recheck notices, every leaf attaches the rest.
            try await hub.core.perform { $0.tier = .standard }
            try await eventually(Double(recheck) / 1000 * 2 + 10, "every leaf has every link") {
                let s = await h.uplink.status()
                return s.leaves.values.allSatisfy { $0.tierLimitation == nil } && s.connections.first?.refusedByTier == []
            }
            try await eventually(10, "methods answer") { try await invoke(hub, "leaf-29").status == 200 }
            status = await h.uplink.status()
            #expect(status.count(.ready) == 30)
            try await h.uplink.report(["x": 1], for: "leaf-0")
            await h.stop()
        }
    }
}
