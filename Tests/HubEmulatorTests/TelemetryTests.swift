import HubTestSupport
import FieldgateCore
import HubDeviceClient
import HubEmulator
import IoTHub
import ProtonAMQP
import Testing

@Suite("telemetry", .serialized, .timeLimit(.minutes(2)))
struct TelemetryTests {
    @Test("a device sends telemetry over plain AMQP without SASL; the hub stamps it from the link identity")
    func telemetryStamped() async throws {
        try await withHub { hub in
            try await hub.createDevice("dev1")
            let c = try await hub.connectDevice("dev1")
            var m = jsonMessage(#"{"temperature":21.5}"#, id: "m-1")
            m.applicationProperties = ["temperatureAlert": "false"]
            m.messageAnnotations = [.symbol(IoTHubAMQP.connectionDeviceID): .string("spoofed")]
            let outcome = try await c.send(m, deviceId: "dev1")
            #expect(outcome == .accepted)
            let events = try await hub.events()
            #expect(events.count == 1)
            let e = try #require(events.first)
            #expect(e.deviceId == "dev1")
            #expect(e.body == #"{"temperature":21.5}"#)
            #expect(e.annotations[IoTHubAMQP.connectionDeviceID] == "dev1")
            #expect(e.annotations[IoTHubAMQP.messageSource] == "Telemetry")
            #expect(e.systemProperties["message-id"] == "m-1")
            #expect(e.systemProperties["content-type"] == "application/json")
            #expect(e.properties["temperatureAlert"] == "false")
            c.close()
        }
    }
}

/// Encodes a message with its sections in the Azure C SDK's order: properties, application-properties,
/// message-annotations, data (not the AMQP standard order).
func cSDKOrderEncoding(_ m: AMQPMessage) -> [UInt8] {
    var props = AMQPMessage()
    props.messageID = m.messageID
    var app = AMQPMessage()
    app.applicationProperties = m.applicationProperties
    var ann = AMQPMessage()
    ann.messageAnnotations = m.messageAnnotations
    var data = AMQPMessage()
    data.body = m.body
    return [props, app, ann, data].flatMap { AMQPMessageCodec.encode($0) }
}

@Suite("telemetry rules", .serialized, .timeLimit(.minutes(2)))
struct TelemetryRuleTests {
    func rejection(_ outcome: AMQPOutcome) -> String? {
        if case .rejected(let c) = outcome { return c?.name }
        return nil
    }

    @Test("batches (data sections holding whole messages, inner sections in C SDK order) are unpacked into events")
    func batches() async throws {
        try await withHub { hub in
            try await hub.createDevice("dev1")
            let c = try await hub.connectDevice("dev1")
            var inner: [[UInt8]] = []
            for i in 0..<3 {
                var m = jsonMessage(#"{"n":\#(i)}"#, id: "b-\(i)")
                m.applicationProperties = ["i": .string(String(i))]
                m.messageAnnotations = [.symbol("iothub-interface-id"): .string("urn:test:1")]
                inner.append(cSDKOrderEncoding(m))
            }
            var batch = AMQPMessage()
            batch.body = .data(inner)
            #expect(try await c.send(batch, deviceId: "dev1") == .accepted)
            let events = try await hub.events()
            #expect(events.map(\.body) == [#"{"n":0}"#, #"{"n":1}"#, #"{"n":2}"#])
            #expect(events.map { $0.systemProperties["message-id"] } == ["b-0", "b-1", "b-2"])
            #expect(events.allSatisfy { $0.annotations["iothub-interface-id"] == "urn:test:1" && $0.annotations[IoTHubAMQP.connectionDeviceID] == "dev1" })
            c.close()
        }
    }

    @Test("oversized messages and batches, bad message-ids, undecodable batch entries and throttling are rejected; the link stays")
    func rejections() async throws {
        try await withHub { hub in
            try await hub.createDevice("dev1")
            let c = try await hub.connectDevice("dev1")
            let big = [UInt8](repeating: UInt8(ascii: "x"), count: 262_145)
            #expect(rejection(try await c.send(AMQPMessage(data: big), deviceId: "dev1")) == IoTHubAMQP.messageSizeExceeded)
            // A batch of three 100 KB messages is over 256 KB in total.
            var batch = AMQPMessage()
            batch.body = .data((0..<3).map { _ in AMQPMessageCodec.encode(AMQPMessage(data: [UInt8](repeating: 65, count: 100_000))) })
            #expect(rejection(try await c.send(batch, deviceId: "dev1")) == IoTHubAMQP.messageSizeExceeded)
            // Exactly 256 KB of body is fine.
            #expect(try await c.send(AMQPMessage(data: [UInt8](repeating: 66, count: 262_144)), deviceId: "dev1") == .accepted)
            #expect(rejection(try await c.send(jsonMessage("{}", id: "bad id with spaces"), deviceId: "dev1")) == IoTHubAMQP.argumentError)
            #expect(rejection(try await c.send(jsonMessage("{}", id: String(repeating: "a", count: 129)), deviceId: "dev1")) == IoTHubAMQP.argumentError)
            var badProp = jsonMessage("{}")
            badProp.applicationProperties = ["naïve": "x"]
            #expect(rejection(try await c.send(badProp, deviceId: "dev1")) == IoTHubAMQP.argumentError)
            var broken = AMQPMessage()
            broken.body = .data([[0x00, 0x53, 0x75, 0xA0, 0xFF]])  // looks like a section, is truncated
            #expect(rejection(try await c.send(broken, deviceId: "dev1")) == IoTHubAMQP.decodeError)
            try await hub.core.perform { try $0.throttle("dev1", forSeconds: 30) }
            #expect(rejection(try await c.send(jsonMessage("{}"), deviceId: "dev1")) == IoTHubAMQP.throttled)
            try await hub.core.perform { try $0.throttle("dev1", forSeconds: 0) }
            #expect(try await c.send(jsonMessage("{}"), deviceId: "dev1") == .accepted)
            #expect(try await hub.events().count == 2)
            c.close()
        }
    }

    @Test("the daily quota bills a unit per started 4 KB and refuses telemetry with 403002 once spent, until 00:00 UTC or a reset")
    func dailyQuota() async throws {
        try await withHub(configure: { $0.hub.dailyMessageQuota = 4 }) { hub in
            try await hub.createDevice("dev1")
            let c = try await hub.connectDevice("dev1")
            #expect(try await c.send(jsonMessage("{}"), deviceId: "dev1") == .accepted)
            // 5000 bytes: two units.
            #expect(try await c.send(AMQPMessage(data: [UInt8](repeating: UInt8(ascii: "x"), count: 5000)), deviceId: "dev1") == .accepted)
            #expect(try await c.send(jsonMessage("{}"), deviceId: "dev1") == .accepted)
            #expect(try await hub.core.perform { $0.quotaJSON } == ["used": 4, "limit": 4, "spent": true])
            let refused = try await c.send(jsonMessage("{}"), deviceId: "dev1")
            #expect(rejection(refused) == IoTHubAMQP.resourceLimitExceeded)
            if case .rejected(let condition) = refused { #expect(condition?.description.contains("403002") == true) }
            // Midnight's reset, now: accepted again; the fault spends it at once.
            try await hub.core.perform { $0.spendQuota(reset: true) }
            #expect(try await c.send(jsonMessage("{}"), deviceId: "dev1") == .accepted)
            try await hub.core.perform { $0.spendQuota(reset: false) }
            #expect(rejection(try await c.send(jsonMessage("{}"), deviceId: "dev1")) == IoTHubAMQP.resourceLimitExceeded)
            #expect(try await hub.events().count == 4)
            c.close()
        }
    }
}
