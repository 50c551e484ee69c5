import HubTestSupport
import FieldgateCore
import HubDeviceClient
import HubEmulator
import HubServiceClient
import ProtonAMQP
import Testing

@Suite("fault injection", .serialized, .timeLimit(.minutes(2)))
struct FaultTests {
    @Test("drop-connections cuts every device connection at the socket; reconnecting works")
    func dropConnections() async throws {
        try await withHub { hub in
            try await hub.createDevice("dev1")
            let c = try await hub.connectDevice("dev1")
            let api = HubServiceClient(host: "127.0.0.1", port: hub.running.httpPort, authorization: nil)
            let r = try await api.request("POST", "/faults/drop-connections")
            #expect(r.json?["dropped"] == 1)
            _ = try await nextEvent(c) { if case .connectionClosed = $0 { true } else { false } }
            #expect(c.isClosed)
            let again = try await hub.connectDevice("dev1")
            #expect(try await again.send(jsonMessage("{}"), deviceId: "dev1") == .accepted)
            again.close()
        }
    }

    @Test("refuse-connections closes the AMQP listener for N seconds, then it accepts again on the same port")
    func refuseConnections() async throws {
        try await withHub { hub in
            try await hub.createDevice("dev1")
            let api = HubServiceClient(host: "127.0.0.1", port: hub.running.httpPort, authorization: nil)
            #expect(try await api.request("POST", "/faults/refuse-connections", body: ["seconds": 2]).status == 200)
            await #expect(throws: AMQPError.self) { _ = try await hub.connect() }
            try await Task.sleep(for: .seconds(3))
            let c = try await hub.connectDevice("dev1")
            #expect(try await c.send(jsonMessage("{}"), deviceId: "dev1") == .accepted)
            c.close()
        }
    }

    @Test("expire-tokens for one device detaches only that device")
    func expireTokens() async throws {
        try await withHub { hub in
            let a = try await hub.createDevice("a")
            let b = try await hub.createDevice("b")
            let c = try await hub.connectDevices([a, b])
            let api = HubServiceClient(host: "127.0.0.1", port: hub.running.httpPort, authorization: nil)
            #expect(try await api.request("POST", "/faults/expire-tokens", body: ["deviceId": "a"]).status == 200)
            let e = try await nextEvent(c) { if case .linkDetached = $0 { true } else { false } }
            guard case .linkDetached(let name, _) = e else { return }
            #expect(name == LinkSpec.telemetry("a").name)
            #expect(try await c.send(jsonMessage("{}"), deviceId: "b") == .accepted)
            c.close()
        }
    }
}
