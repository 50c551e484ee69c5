import HubTestSupport
import FieldgateCore
import HubDeviceClient
@testable import HubEmulator
import HubServiceClient
import IoTHub
import ProtonAMQP
import Testing

/// Invokes a method through the real service API (HTTP), as `fieldgate-hub method invoke` does.
func invoke(_ hub: TestHub, _ device: String, _ method: String, payload: JSONValue = .null, timeout: Int = 30) async throws -> HubServiceClient.Response {
    let client = HubServiceClient(host: "127.0.0.1", port: hub.running.httpPort, authorization: nil)
    return try await client.request("POST", "/twins/\(device)/methods",
                                    body: ["methodName": .string(method), "payload": payload, "responseTimeoutInSeconds": .int(Int64(timeout))])
}

func methodRequest(_ c: DeviceConnection) async throws -> MethodRequest {
    let e = try await nextEvent(c) { if case .methodRequest = $0 { true } else { false } }
    guard case .methodRequest(let r) = e else { throw HubError(.internalError, "not a method request") }
    return r
}

@Suite("methods and twin", .serialized, .timeLimit(.minutes(2)))
struct MethodTwinTests {
    @Test("seed 004: reboot → 200 'Reboot started', then the twin has iothubDM.reboot.lastReboot with $metadata")
    func seed004() async throws {
        try await withHub { hub in
            try await hub.createDevice("myDeviceId")
            let c = try await hub.connectDevice("myDeviceId", tls: true)
            try await c.attachMethods(deviceId: "myDeviceId")
            try await c.attachTwin(deviceId: "myDeviceId")
            async let response = invoke(hub, "myDeviceId", "reboot")
            let request = try await methodRequest(c)
            #expect(request.name == "reboot")
            try await c.respond(to: request, status: 200, payload: "Reboot started")
            let r = try await response
            #expect(r.status == 200)
            #expect(r.json == ["status": 200, "payload": "Reboot started"])
            let lastReboot = WallClock.iso8601Now()
            let patched = try await c.patchReported(deviceId: "myDeviceId", ["iothubDM": ["reboot": ["lastReboot": .string(lastReboot)]]])
            #expect(patched.status == 204)
            #expect(patched.version == 2)
            let twin = try await HubServiceClient(host: "127.0.0.1", port: hub.running.httpPort, authorization: nil).request("GET", "/twins/myDeviceId").json
            let reported = twin?["properties"]?["reported"]
            #expect(reported?["iothubDM"]?["reboot"]?["lastReboot"] == .string(lastReboot))
            #expect(reported?["$metadata"]?["iothubDM"]?["reboot"]?["lastReboot"]?["$lastUpdated"]?.stringValue?.hasSuffix("Z") == true)
            #expect(reported?["$version"] == 2)
            c.close()
        }
    }

    @Test("methods: 404 without method links, 504 on timeout, responses with an unknown correlation-id are dropped")
    func methodErrors() async throws {
        try await withHub { hub in
            try await hub.createDevice("dev1")
            let c = try await hub.connectDevice("dev1")
            #expect(try await invoke(hub, "dev1", "ping").status == 404)
            #expect(try await invoke(hub, "ghost", "ping").status == 404)
            try await c.attachMethods(deviceId: "dev1")
            #expect(try await invoke(hub, "dev1", "bad/name").status == 400)
            // Unknown correlation-id and a non-int status are dropped; the real answer still lands.
            async let slow = invoke(hub, "dev1", "echo", payload: ["x": 1])
            let request = try await methodRequest(c)
            #expect(request.payload == ["x": 1])
            var stray = AMQPMessage(data: Array("{}".utf8))
            stray.correlationID = .uuid(AMQPUUID.random())
            stray.applicationProperties = [IoTHubAMQP.methodStatusProperty: .int(200)]
            try await c.sendMethodResponse(stray, deviceId: "dev1")
            var wrongType = AMQPMessage(data: Array("{}".utf8))
            wrongType.correlationID = .string(request.requestID.description)
            wrongType.applicationProperties = [IoTHubAMQP.methodStatusProperty: .int(200)]
            try await c.sendMethodResponse(wrongType, deviceId: "dev1")
            try await c.respond(to: request, status: 201, payload: ["echo": 1])
            let answered = try await slow
            #expect(answered.json == ["status": 201, "payload": ["echo": 1]])
            // No answer at all → 504 after the timeout (5 s is the minimum).
            async let silent = invoke(hub, "dev1", "sleep", timeout: 5)
            _ = try await methodRequest(c)
            #expect(try await silent.status == 504)
            c.close()
        }
    }

    @Test("twin: GET, reported patches with $version, rules enforced (arrays, depth 6), desired pushed only when subscribed")
    func twinRules() async throws {
        try await withHub { hub in
            try await hub.createDevice("dev1")
            let c = try await hub.connectDevice("dev1")
            try await c.attachTwin(deviceId: "dev1")
            let get = try await c.getTwin(deviceId: "dev1")
            #expect(get.status == 200)
            #expect(get.body?["desired"]?["$version"] == 1)
            #expect(try await c.patchReported(deviceId: "dev1", ["a": ["b": 1]]).status == 204)
            #expect(try await c.patchReported(deviceId: "dev1", ["list": .array([1, 2])]).status == 400)
            #expect(try await c.patchReported(deviceId: "dev1", ["a": ["b": ["c": ["d": ["e": ["f": 1]]]]]]).status == 400)
            #expect(try await c.patchReported(deviceId: "dev1", ["bad.key": 1]).status == 400)
            #expect(try await c.patchReported(deviceId: "dev1", ["big": .string(String(repeating: "x", count: 513))]).status == 400)
            #expect(try await c.twinRequest(deviceId: "dev1", operation: "FROB").status == 400)
            #expect(try await c.patchReported(deviceId: "dev1", ["a": ["b": .null], "c": true]).status == 204)
            #expect(try await c.getTwin(deviceId: "dev1").body?["reported"] == ["a": .object([:]), "c": true, "$version": 3])

            // Not subscribed: a desired change is not pushed.
            _ = try await hub.core.perform { try $0.patchTwin("dev1", patch: ["properties": ["desired": ["interval": 5]]]) }
            await #expect(throws: AMQPError.self) {
                _ = try await nextEvent(c, seconds: 0.5) { if case .desiredUpdate = $0 { true } else { false } }
            }
            #expect(try await c.subscribeDesired(deviceId: "dev1").status == 200)
            _ = try await hub.core.perform { try $0.patchTwin("dev1", patch: ["properties": ["desired": ["interval": 10]]]) }
            let pushed = try await nextEvent(c) { if case .desiredUpdate = $0 { true } else { false } }
            guard case .desiredUpdate(_, let patch, let version) = pushed else { return }
            #expect(patch == ["interval": 10, "$version": 3])
            #expect(version == 3)
            c.close()
        }
    }

    @Test("the C SDK's twin GET with a one-byte ' ' body is accepted")
    func twinGetWithSpaceBody() async throws {
        try await withHub { hub in
            try await hub.createDevice("dev1")
            let c = try await hub.connectDevice("dev1")
            try await c.attachTwin(deviceId: "dev1", channel: "twin:\(AMQPUUID.random())")
            let r = try await c.twinRequest(deviceId: "dev1", operation: "GET", body: .string(" "))
            #expect(r.status == 200)
            c.close()
        }
    }
}

@Suite("hub state and service API", .serialized, .timeLimit(.minutes(2)))
struct HubStateTests {
    @Test("a restart keeps devices, twins and pending C2D messages")
    func persistence() async throws {
        let hub = try await TestHub.start()
        let stateDir = hub.core.configuration.stateDirectory!
        let device = try await hub.createDevice("dev1")
        _ = try await hub.core.perform { try $0.patchTwin("dev1", patch: ["properties": ["desired": ["interval": 7]], "tags": ["site": "a"]]) }
        _ = try await hub.core.perform { try $0.sendCloudToDevice("dev1", message: CloudToDeviceMessage(messageId: "kept", body: [1, 2, 3], ack: .full), ttlMilliseconds: nil) }
        await hub.running.stop()

        var config = HubServerConfiguration()
        config.hub.stateDirectory = stateDir
        config.amqpsPort = nil
        config.amqpPort = 0
        config.httpPort = 0
        config.openServiceAPI = true
        let restarted = try await HubServer(configuration: config).start()
        let again = try await restarted.core.perform { try $0.device("dev1") }
        #expect(again.authentication == device.authentication)
        #expect(try await restarted.core.perform { try $0.twinView("dev1") }["properties"]?["desired"]?["interval"] == 7)
        let reactor = AMQPReactor()
        let c = try await DeviceConnection.connect(reactor: reactor, host: "127.0.0.1", port: restarted.amqpPort!, hostName: "localhost", tls: nil)
        #expect(try await c.authenticate(deviceId: "dev1", key: device.authentication.symmetricKey.primaryKey).status == 200)
        try await c.attachCloudToDevice(deviceId: "dev1")
        let m = try await c2dEvent(c)
        #expect(m.message.messageID == .string("kept"))
        c.close()
        await reactor.shutdown()
        await restarted.stop()
        await hub.stop()
    }

    @Test("the service API wants a service-policy SAS token unless it runs open")
    func serviceAuthorization() async throws {
        try await withHub(configure: { $0.openServiceAPI = false }) { hub in
            let port = hub.running.httpPort
            #expect(try await HubServiceClient(host: "127.0.0.1", port: port, authorization: nil).request("GET", "/devices").status == 401)
            let owner = try #require(try await hub.core.perform { $0.policy("iothubowner") })
            let service = try #require(try await hub.core.perform { $0.policy("service") })
            let expiry = WallClock.nowMilliseconds() / 1000 + 600
            func client(_ p: PolicyRecord, key: String? = nil) throws -> HubServiceClient {
                let token = try SASToken.generate(resourceURI: hub.hostName, key: key ?? p.primaryKey, expiry: expiry, keyName: p.keyName)
                return HubServiceClient(host: "127.0.0.1", port: port, authorization: token)
            }
            #expect(try await client(owner).request("PUT", "/devices/dev1", body: [:]).status == 200)
            #expect(try await client(owner, key: generateSymmetricKey()).request("GET", "/devices").status == 401)
            #expect(try await client(service).request("PUT", "/devices/dev2", body: [:]).status == 401)  // no RegistryWrite
            #expect(try await client(service).request("GET", "/devices").status == 401)  // no RegistryRead
            #expect(try await client(service).request("GET", "/twins/dev1").status == 200)  // twins: ServiceConnect
            let reader = try #require(try await hub.core.perform { $0.policy("registryRead") })
            #expect(try await client(reader).request("GET", "/devices").status == 200)
            #expect(try await client(reader).request("POST", "/devices/dev1/messages/deviceBound", body: ["body": "x"]).status == 401)
            let c2d = try await client(service).request("POST", "/devices/dev1/messages/deviceBound", body: ["body": "hi", "ack": "full"])
            #expect(c2d.status == 200)
            #expect(try await client(owner).request("GET", "/devices/ghost").status == 404)
            #expect(try await client(owner).request("POST", "/devices/dev1/messages/deviceBound", body: ["body": "x", "ack": "sometimes"]).status == 400)
        }
    }
}

@Suite("twin replacement")
struct TwinReplacementTests {
    @Test("the patch a replacement becomes removes what the new twin leaves out, nested too, and ignores $-keys")
    func replacementPatch() {
        let current: JSONValue = ["a": 1, "b": ["x": 1, "y": 2], "c": "gone"]
        let target: JSONValue = ["a": 2, "b": ["x": 1], "d": true, "$version": 7]
        let patch = TwinDocument.replacementPatch(from: current, to: target)
        #expect(patch == ["a": 2, "b": ["x": 1, "y": JSONValue.null], "c": JSONValue.null, "d": true])
        #expect(TwinRules.merge(patch, into: current) == ["a": 2, "b": ["x": 1], "d": true])
    }
}
