import FieldgateCore
import HubEmulator
import HubServiceClient
import HubTestSupport
import Testing

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// fieldgated with a Modbus leaf on a pymodbus slave, against fieldgate-hub: telemetry up; C2D, methods and the
/// twin down, each landing in the slave's registers (issues 5, 6, 8).
@Suite("fieldgated with a Modbus leaf", .serialized, .timeLimit(.minutes(2)))
struct ModbusDaemonTests {
    static let profile = """
        poll_ms = 300
        [[point]]
        name = "temperature"
        address = "40001"
        type = "i16"
        scale = 0.1
        unit = "degC"
        [[point]]
        name = "setpoint"
        address = "40006"
        type = "i16"
        scale = 0.1
        writable = true
        min = 5
        max = 90
        [[point]]
        name = "pump"
        table = "coil"
        address = 0
        writable = true
        """

    @Test("telemetry, a C2D write landing in the register, write/read methods, adapter state and desired settings in the twin")
    func endToEnd() async throws {
        let hub = try await TestHub.start()
        let peer = try await ModbusPeer(.tcp, units: [1], initial: [["unit": 1, "table": "holding_registers", "address": 0, "values": [215, 0, 0, 0, 0, 450]]])
        defer { peer.stop() }
        let devices = """
            [[modbus_bus]]
            name = "plant"
            tcp = "127.0.0.1:\(peer.port)"
            response_timeout_ms = 300
            [[leaf]]
            device_id = "boiler-d"
            adapter = "modbus"
            bus = "plant"
            unit_id = 1
            profile = "boiler"
            """
        let daemon = try await DaemonUnderTest.start(hub: hub, leaves: [], otherDevices: ["boiler-d"],
                                                     files: ["devices.d/modbus.toml": devices, "profiles.d/boiler.toml": Self.profile])
        defer { daemon.cleanUp() }
        #expect(await daemon.notify.wait(for: "READY=1"), "\(daemon.stderr)")
        let service = HubServiceClient(host: "127.0.0.1", port: hub.running.httpPort, authorization: nil)

        // Telemetry: the first message is a full report.
        #expect(await daemon.eventually { ((try? await hub.events()) ?? []).contains { $0.deviceId == "boiler-d" } }, "\(daemon.stderr.suffix(2000))")
        let first = try #require(try await hub.events().first { $0.deviceId == "boiler-d" })
        let body = try #require(first.body.flatMap { JSONValue.parse($0) })
        #expect(body["report"] == "full")
        #expect(body["points"]?["temperature"]?["value"] == 21.5 && body["points"]?["temperature"]?["unit"] == "degC")
        #expect(body["points"]?["pump"]?["value"] == false)

        // C2D with ack=full: written to holding register 5, feedback Success.
        let sent = try await service.request("POST", "/devices/boiler-d/messages/deviceBound",
                                             body: ["body": #"{"setpoint": 60}"#, "messageId": "modbus-c2d-1", "ack": "full"])
        #expect(sent.status == 200)
        #expect(await daemon.eventually { (try? peer.registers(unit: 1, "holding_registers", 5, count: 1)) == [600] })
        var feedback: [JSONValue] = []
        #expect(await daemon.eventually {
            feedback += (try? await service.request("GET", "/messages/serviceBound/feedback?wait=200").json?.arrayValue) ?? []
            return feedback.contains { $0["originalMessageId"] == "modbus-c2d-1" }
        })
        #expect(feedback.first { $0["originalMessageId"] == "modbus-c2d-1" }?["statusCode"] == "Success")
        // A C2D for a point that cannot be written is rejected: feedback Rejected, the register untouched.
        _ = try await service.request("POST", "/devices/boiler-d/messages/deviceBound",
                                      body: ["body": #"{"temperature": 30}"#, "messageId": "modbus-c2d-2", "ack": "full"])
        #expect(await daemon.eventually {
            feedback += (try? await service.request("GET", "/messages/serviceBound/feedback?wait=200").json?.arrayValue) ?? []
            return feedback.contains { $0["originalMessageId"] == "modbus-c2d-2" }
        })
        #expect(feedback.first { $0["originalMessageId"] == "modbus-c2d-2" }?["statusCode"] == "Rejected")

        // Methods.
        func invoke(_ name: String, _ payload: JSONValue) async throws -> JSONValue? {
            try await service.request("POST", "/twins/boiler-d/methods", body: ["methodName": .string(name), "payload": payload, "responseTimeoutInSeconds": 10]).json
        }
        let write = try await invoke("write", ["points": ["pump": true, "setpoint": 21.5], "readback": true])
        #expect(write?["status"] == 200 && write?["payload"]?["readback"]?["pump"] == true, "\(String(describing: write))")
        #expect(try peer.registers(unit: 1, "coils", 0, count: 1) == [1])
        #expect(try peer.registers(unit: 1, "holding_registers", 5, count: 1) == [215])
        let read = try await invoke("read", ["points": ["temperature", "setpoint"]])
        #expect(read?["status"] == 200 && read?["payload"]?["points"]?["setpoint"]?["value"] == 21.5, "\(String(describing: read))")
        #expect(try await invoke("write", ["setpoint": 500])?["status"] == 400)
        #expect(try await invoke("calibrate", nil)?["status"] == 404)

        // The twin: the adapter's state, and desired settings applied and reported.
        #expect(await daemon.eventually {
            (try? await service.request("GET", "/twins/boiler-d").json?["properties"]?["reported"]?["modbus"]?["state"]?["online"]) == true
        })
        _ = try await service.request("PATCH", "/twins/boiler-d", body: ["properties": ["desired": ["poll_ms": 1000, "points": ["temperature": ["deadband": 0.5]]]]])
        #expect(await daemon.eventually {
            let reported = try? await service.request("GET", "/twins/boiler-d").json?["properties"]?["reported"]?["modbus"]
            return reported?["status"] == "applied" && reported?["applied"]?["poll_ms"] == 1000
        })

        // A device that stops answering: 504 from the adapter, well inside the local deadline.
        try peer.silence(unit: 1)
        let started = MonotonicClock.milliseconds()
        #expect(try await invoke("write", ["setpoint": 30])?["status"] == 504)
        #expect(MonotonicClock.milliseconds() - started < 5000)
        try peer.silence(unit: 1, false)

        // fieldgatectl status shows the bus and its unit.
        let status = try daemon.control(["command": "status"])
        #expect(status["adapters"]?["modbus:plant"]?["units"]?["1"]?["online"] == true, "\(status)")
    }
}
