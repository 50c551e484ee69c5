import HubTestSupport
import FieldgateCore
import HubDeviceClient
import HubEmulator
import IoTHub
import ProtonAMQP
import Testing

@Suite("link rules", .serialized, .timeLimit(.minutes(2)))
struct LinkRuleTests {
    /// The condition a refused attach carries.
    func refusal(_ body: () async throws -> Void) async -> String? {
        do {
            try await body()
            return nil
        } catch let e as AMQPError {
            return e.condition
        } catch {
            return "unexpected \(error)"
        }
    }

    @Test("links are refused without a token, for unknown addresses, wrong roles, empty addresses and missing properties")
    func attachRefusals() async throws {
        try await withHub { hub in
            let device = try await hub.createDevice("dev1")
            try await hub.createDevice("dev2")
            let c = try await hub.connect()
            // No token yet.
            #expect(await refusal { try await c.attachTelemetry(deviceId: "dev1") } == IoTHubAMQP.unauthorizedAccess)
            #expect(try await c.authenticate(deviceId: "dev1", key: device.authentication.symmetricKey.primaryKey).status == 200)
            // A token for dev1 does not cover dev2.
            #expect(await refusal { try await c.attachTelemetry(deviceId: "dev2") } == IoTHubAMQP.unauthorizedAccess)
            // Unknown address, wrong role, empty address.
            #expect(await refusal { try await c.attach(.custom(name: "x1", sender: true, address: "/devices/dev1/nowhere", properties: [:], credit: 0)) } == IoTHubAMQP.notFound)
            #expect(await refusal { try await c.attach(.custom(name: "x2", sender: false, address: "/devices/dev1/messages/events", properties: [:], credit: 1)) } == IoTHubAMQP.notAllowed)
            #expect(await refusal { try await c.attach(.custom(name: "x3", sender: true, address: "/devices/dev1/messages/devicebound", properties: [:], credit: 0)) } == IoTHubAMQP.notAllowed)
            #expect(await refusal { try await c.attach(.custom(name: "x4", sender: true, address: "", properties: [:], credit: 0)) } == "amqp:invalid-field")
            // Methods and twin links need api-version and channel-correlation-id.
            #expect(await refusal { try await c.attachMethods(deviceId: "dev1", apiVersion: nil) } == "amqp:invalid-field")
            #expect(await refusal { try await c.attach(.custom(name: "x5", sender: true, address: "/devices/dev1/twin", properties: [.symbol(IoTHubAMQP.apiVersionProperty): "2020-09-30"], credit: 0)) } == "amqp:invalid-field")
            // Every SDK address form works: amqps://host:port/…, any case.
            try await c.attach(.custom(name: "telemetry-cs", sender: true, address: "amqps://localhost:5671/devices/dev1/messages/events", properties: [:], credit: 0))
            try await c.attach(.custom(name: "c2d-cs", sender: false, address: "amqps://localhost/devices/dev1/messages/deviceBound", properties: [:], credit: 5))
            // The same channel-correlation-id twice for one role conflicts.
            try await c.attachMethods(deviceId: "dev1", channel: "dev1")  // C SDK style: bare device id
            #expect(await refusal { try await c.attach(.custom(name: "dup", sender: false, address: "/devices/dev1/methods/devicebound", properties: [.symbol(IoTHubAMQP.channelCorrelationIDProperty): "dev1", .symbol(IoTHubAMQP.apiVersionProperty): "2020-09-30"], credit: 1)) } == IoTHubAMQP.linkCreationConflict)
            // The connection survived every refusal.
            try await c.attachTelemetry(deviceId: "dev1")
            #expect(try await c.send(jsonMessage("{}"), deviceId: "dev1") == .accepted)
            c.close()
        }
    }

    @Test("token expiry detaches that device's links with 'Token Invalid.' and keeps the connection and the other devices")
    func tokenExpiryDetaches() async throws {
        try await withHub { hub in
            let a = try await hub.createDevice("a")
            let b = try await hub.createDevice("b")
            let c = try await hub.connect()
            let host = hub.hostName
            let now = WallClock.nowMilliseconds() / 1000
            let shortToken = try SASToken.generate(resourceURI: "\(host)/devices/a", key: a.authentication.symmetricKey.primaryKey, expiry: now + 2)
            #expect(try await c.putToken(shortToken, audience: "\(host)/devices/a").status == 200)
            #expect(try await c.authenticate(deviceId: "b", key: b.authentication.symmetricKey.primaryKey).status == 200)
            try await c.attachTelemetry(deviceId: "a")
            try await c.attachTelemetry(deviceId: "b")
            #expect(try await c.send(jsonMessage("{}"), deviceId: "a") == .accepted)
            let detached = try await nextEvent(c, seconds: 8) { if case .linkDetached = $0 { true } else { false } }
            guard case .linkDetached(let name, let condition) = detached else { Issue.record("no detach"); return }
            #expect(name == LinkSpec.telemetry("a").name)
            #expect(condition?.name == IoTHubAMQP.unauthorizedAccess)
            #expect(condition?.description == "Token Invalid.")
            #expect(!c.isClosed)
            #expect(try await c.send(jsonMessage("{}"), deviceId: "b") == .accepted)
            c.close()
        }
    }

    @Test("a second connection opening links for the same device detaches the first one's (link-creation-conflict)")
    func secondConnectionTakesOver() async throws {
        try await withHub { hub in
            try await hub.createDevice("dev1")
            let first = try await hub.connectDevice("dev1")
            let second = try await hub.connectDevice("dev1")
            let detached = try await nextEvent(first) { if case .linkDetached = $0 { true } else { false } }
            guard case .linkDetached(_, let condition) = detached else { return }
            #expect(condition?.name == IoTHubAMQP.linkCreationConflict)
            #expect(try await second.send(jsonMessage("{}"), deviceId: "dev1") == .accepted)
            first.close()
            second.close()
        }
    }

    @Test("disabling a device detaches its links at once; the connection stays for the others")
    func disableDetaches() async throws {
        try await withHub { hub in
            let a = try await hub.createDevice("a")
            let b = try await hub.createDevice("b")
            let c = try await hub.connectDevices([a, b])
            try await hub.core.perform { try $0.upsertDevice(id: "a", status: "disabled", primaryKey: nil, secondaryKey: nil) }
            let detached = try await nextEvent(c) { if case .linkDetached = $0 { true } else { false } }
            guard case .linkDetached(let name, let condition) = detached else { return }
            #expect(name == LinkSpec.telemetry("a").name)
            #expect(condition?.name == IoTHubAMQP.unauthorizedAccess)
            #expect(try await c.send(jsonMessage("{}"), deviceId: "b") == .accepted)
            #expect(try await c.authenticate(deviceId: "a", key: a.authentication.symmetricKey.primaryKey).status == 401)
            c.close()
        }
    }
}
