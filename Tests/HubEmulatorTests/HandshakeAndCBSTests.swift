import HubTestSupport
import FieldgateCore
import HubDeviceClient
import HubEmulator
import IoTHub
import ProtonAMQP
import Testing

@Suite("handshakes and CBS", .serialized, .timeLimit(.minutes(3)))
struct HandshakeAndCBSTests {
    @Test("TLS with no SASL, SASL ANONYMOUS and SASL MSSBCBS all reach a working device; the Open carries the hub's values",
          arguments: [AMQPClientSASL.none, .anonymous, .mssbcbs])
    func handshakes(sasl: AMQPClientSASL) async throws {
        try await withHub { hub in
            let device = try await hub.createDevice("dev1")
            let c = try await hub.connect(tls: true, sasl: sasl)
            let (status, _) = try await c.authenticate(deviceId: "dev1", key: device.authentication.symmetricKey.primaryKey)
            #expect(status == 200)
            try await c.attachTelemetry(deviceId: "dev1")
            #expect(try await c.send(jsonMessage("{}"), deviceId: "dev1") == .accepted)
            let peer = c.observedPeer
            #expect(peer.containerID?.hasPrefix("DeviceGateway_") == true)
            #expect(peer.containerID?.count == "DeviceGateway_".count + 32)
            #expect(peer.idleTimeoutMilliseconds == 240_000)
            #expect(peer.maxMessageSize[LinkSpec.telemetry("dev1").name] == 1_048_576)
            c.close()
        }
    }

    @Test("a certificate from an untrusted CA and a wrong host name are refused")
    func tlsRefusals() async throws {
        try await withHub { hub in
            let other = try LocalCertificates.create(in: hub.directory + "/other-ca", dnsNames: ["localhost"])
            await #expect(throws: AMQPError.self) {
                _ = try await DeviceConnection.connect(
                    reactor: hub.reactor, host: "127.0.0.1", port: hub.running.amqpsPort!, hostName: "localhost",
                    tls: AMQPClientTLS(trustedCAFile: other.caCertificate, peerHostname: "localhost"))
            }
            await #expect(throws: AMQPError.self) {
                _ = try await DeviceConnection.connect(
                    reactor: hub.reactor, host: "127.0.0.1", port: hub.running.amqpsPort!, hostName: "localhost",
                    tls: AMQPClientTLS(trustedCAFile: hub.certificates.caCertificate, peerHostname: "not-the-hub.example"))
            }
            // A plain AMQP client on the TLS port is refused too.
            await #expect(throws: AMQPError.self) {
                _ = try await DeviceConnection.connect(reactor: hub.reactor, host: "127.0.0.1", port: hub.running.amqpsPort!, hostName: "localhost", tls: nil)
            }
        }
    }

    @Test("put-token: every way a token can be wrong gets the hub's status")
    func putTokenChecks() async throws {
        try await withHub { hub in
            let device = try await hub.createDevice("dev1")
            try await hub.createDevice("off", status: "disabled")
            let off = try await hub.core.perform { try $0.device("off") }
            let key = device.authentication.symmetricKey.primaryKey
            let host = hub.hostName
            let now = WallClock.nowMilliseconds() / 1000
            let c = try await hub.connect()
            func put(_ token: String, audience: String = "\(host)/devices/dev1", type: String = IoTHubAMQP.tokenTypeServiceBus) async throws -> Int {
                try await c.putToken(token, audience: audience, type: type).status
            }
            func token(_ resource: String, key: String, expiry: Int64 = now + 3600, skn: String? = nil) throws -> String {
                try SASToken.generate(resourceURI: resource, key: key, expiry: expiry, keyName: skn)
            }
            let wrongKey = generateSymmetricKey()
            #expect(try await put(token("\(host)/devices/dev1", key: wrongKey)) == 401)                 // bad signature
            #expect(try await put(token("\(host)/devices/dev1", key: key, expiry: now - 10)) == 401)   // expired
            #expect(try await put(token("\(host)/devices/ghost", key: key), audience: "\(host)/devices/ghost") == 404)
            #expect(try await put(token("\(host)/devices/off", key: off.authentication.symmetricKey.primaryKey), audience: "\(host)/devices/off") == 401)
            #expect(try await put("SharedAccessSignature sr=x") == 401)                                    // malformed
            #expect(try await put("Bearer abc") == 401)
            #expect(try await put(token("\(host)/devices/dev1", key: key), type: "jwt") == 400)            // unknown type
            #expect(try await put(token("otherhub/devices/dev1", key: key), audience: "otherhub/devices/dev1") == 401)  // host
            #expect(try await put(token("\(host)/devices/dev1", key: key), audience: "\(host)/devices/dev2") == 401)    // audience not covered
            let service = try #require(try await hub.core.perform { $0.policy("service") })
            #expect(try await put(token("\(host)/devices", key: service.primaryKey, skn: "service"), audience: "\(host)/devices") == 401)  // no DeviceConnect
            // Secondary key, and the escape-case variants of sr: the hub signs sr as sent.
            #expect(try await put(token("\(host)/devices/dev1", key: device.authentication.symmetricKey.secondaryKey)) == 200)
            let rawSR = "\(host)/devices/dev1"
            let rawSig = try SASToken.sign(resource: rawSR, expiry: now + 3600, key: key)
            #expect(try await put("SharedAccessSignature sr=\(rawSR)&sig=\(PercentEncoding.encode(rawSig))&se=\(now + 3600)") == 200)
            let lowerSR = "\(host)%2fdevices%2fdev1"
            let lowerSig = try SASToken.sign(resource: lowerSR, expiry: now + 3600, key: key)
            #expect(try await put("SharedAccessSignature sig=\(PercentEncoding.encode(lowerSig))&se=\(now + 3600)&sr=\(lowerSR)") == 200)
            c.close()
        }
    }

    @Test("a DeviceConnect policy token for {host}/devices authenticates many devices; 999 tokens per connection at most")
    func policyTokensAndTokenCap() async throws {
        try await withHub { hub in
            try await hub.createDevice("a")
            try await hub.createDevice("b")
            let policy = try #require(try await hub.core.perform { $0.policy("device") })
            let host = hub.hostName
            let c = try await hub.connect()
            let token = try SASToken.generate(resourceURI: "\(host)/devices", key: policy.primaryKey,
                                              expiry: WallClock.nowMilliseconds() / 1000 + 3600, keyName: "device")
            #expect(try await c.putToken(token, audience: "\(host)/devices").status == 200)
            for d in ["a", "b"] {
                try await c.attachTelemetry(deviceId: d)
                #expect(try await c.send(jsonMessage("{}"), deviceId: d) == .accepted)
            }
            let events = try await hub.events()
            #expect(events.map(\.annotations[IoTHubAMQP.connectionAuthMethod]).allSatisfy { $0?.contains("\"scope\":\"hub\"") == true })
            // Fill the connection up to 999 tokens (distinct audiences), then one more is refused.
            for i in 1..<999 { #expect(try await c.putToken(token, audience: "\(host)/devices/leaf\(i)").status == 200) }
            #expect(try await c.putToken(token, audience: "\(host)/devices/leaf-one-too-many").status == 403)
            c.close()
        }
    }
}

extension AMQPClientSASL: CustomTestStringConvertible {
    public var testDescription: String {
        switch self {
        case .none: "no SASL"
        case .anonymous: "ANONYMOUS"
        case .mssbcbs: "MSSBCBS"
        case .plain: "PLAIN"
        }
    }
}
