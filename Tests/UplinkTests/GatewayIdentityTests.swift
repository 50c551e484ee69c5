import FieldgateCore
import Gateway
import HubEmulator
import HubServiceClient
import HubTestSupport
import IoTHub
import Spool
import Synchronization
import Testing
import Uplink

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

@Suite("The gateway's own identity")
struct GatewayIdentityTests {
    /// Seed 004 replayed through the gateway: `method invoke <gateway> reboot` → 200 "Reboot started"; then the
    /// twin has `iothubDM.reboot.lastReboot` with its `$metadata`, and the reboot command ran after that.
    @Test func seed004RebootThroughTheGateway() async throws {
        try await withHub { hub in
            let gatewayDevice = try await hub.core.perform { try $0.upsertDevice(id: "gateway-1", status: nil, primaryKey: nil, secondaryKey: nil) }
            let leaves = try await createLeaves(hub, count: 2)
            let gatewayLeaf = LeafConfiguration(deviceID: "gateway-1", credential: .symmetricKey(
                primary: gatewayDevice.authentication.symmetricKey.primaryKey, secondary: nil), capabilities: [.methods, .twin])
            let marker = hub.directory + "/rebooted"
            // The identity needs the spool the harness opens; build the harness around a router that is filled in after.
            let router = LateRouter()
            let h = try UplinkHarness(hub: hub, leaves: [gatewayLeaf] + leaves, router: router)
            var config = GatewayIdentity.Configuration(deviceID: "gateway-1", version: "0.1-test")
            config.rebootCommand = ["/bin/sh", "-c", "touch '\(marker)'"]
            let identity = GatewayIdentity(configuration: config, spool: h.spool)
            identity.attach(h.uplink)
            router.set(GatewayRouter(gateway: identity, fallback: PointAdapter()))
            h.uplink.start()
            try await eventually(10, "ready") { await h.uplink.status().count(.ready) == 3 }

            let service = HubServiceClient(host: "127.0.0.1", port: hub.running.httpPort, authorization: nil)
            let requestedAt = WallClock.nowMilliseconds()
            let r = try await service.request("POST", "/twins/gateway-1/methods", body: ["methodName": "reboot", "payload": .null, "responseTimeoutInSeconds": 10])
            #expect(r.json?["status"]?.intValue == 200)
            #expect(r.json?["payload"] == "Reboot started")
            try await eventually(10, "lastReboot in the twin") {
                let twin = try await service.request("GET", "/twins/gateway-1").json
                return twin?["properties"]?["reported"]?["iothubDM"]?["reboot"]?["lastReboot"]?.stringValue != nil
            }
            let twin = try await service.request("GET", "/twins/gateway-1").json
            let lastReboot = try #require(twin?["properties"]?["reported"]?["iothubDM"]?["reboot"]?["lastReboot"]?.stringValue)
            // Between the request and now (a second's leeway for the text's precision), however slow the machine.
            let rebootAt = try #require(WallClock.parseISO8601(lastReboot))
            #expect(rebootAt >= requestedAt - 1000 && rebootAt <= WallClock.nowMilliseconds() + 1000, "lastReboot \(lastReboot)")
            #expect(twin?["properties"]?["reported"]?["$metadata"]?["iothubDM"]?["reboot"]?["lastReboot"]?["$lastUpdated"] != nil)
            try await eventually(20, "the reboot command ran") { FileManager.default.fileExists(atPath: marker) }

            // `status` answers with the gateway's health; the health report lands in the twin.
            let status = try await service.request("POST", "/twins/gateway-1/methods", body: ["methodName": "status", "payload": .null])
            #expect(status.json?["payload"]?["leaves"]?["ready"]?.intValue == 3)
            #expect(status.json?["payload"]?["version"] == "0.1-test")
            await identity.reportHealthIfDue()
            try await eventually(20, "health in the twin") {
                try await service.request("GET", "/twins/gateway-1").json?["properties"]?["reported"]?["gateway"]?["spool"]?["depth"] != nil
            }
            // A leaf's method still reaches the adapter.
            let ping = try await service.request("POST", "/twins/leaf-0/methods", body: ["methodName": "ping", "payload": .null])
            #expect(ping.json?["status"]?.intValue == 200)
            await h.stop()
        }
    }
}

/// A router whose target is set after the uplink exists (the gateway identity needs the uplink).
final class LateRouter: LeafRouter {
    private let target = Mutex<(any LeafRouter)?>(nil)
    func set(_ r: any LeafRouter) { target.withLock { $0 = r } }
    private var current: (any LeafRouter)? { target.withLock { $0 } }
    func cloudToDevice(_ message: C2DMessage) async -> C2DOutcome { await current?.cloudToDevice(message) ?? .abandon("not ready") }
    func invoke(_ call: MethodCall) async -> MethodResponse? { await current?.invoke(call) }
    func desiredProperties(_ desired: JSONValue, version: Int64, deviceID: String) async -> JSONValue? {
        await current?.desiredProperties(desired, version: version, deviceID: deviceID)
    }
}
