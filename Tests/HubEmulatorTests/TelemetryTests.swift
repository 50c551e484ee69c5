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
