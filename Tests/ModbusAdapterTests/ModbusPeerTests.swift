import FieldgateCore
import HubTestSupport
import ModbusIO
import Spool
import Testing
import Uplink
@testable import ModbusAdapter

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A boiler controller's register map: neighbours that coalesce into one read per table, every common type.
func boilerProfile(pollMs: Int64 = 200) -> ModbusProfile {
    var temperature = ModbusPoint(name: "temperature", table: .holdingRegisters, address: 0, type: .i16)
    temperature.scale = 0.1
    temperature.unit = "degC"
    var pressure = ModbusPoint(name: "pressure", table: .holdingRegisters, address: 1, type: .f32)
    pressure.unit = "bar"
    var setpoint = ModbusPoint(name: "setpoint", table: .holdingRegisters, address: 5, type: .i16)
    setpoint.scale = 0.1
    setpoint.writable = true
    setpoint.minimum = 5
    setpoint.maximum = 90
    let serial = ModbusPoint(name: "serial", table: .holdingRegisters, address: 8, type: .string(length: 6))
    var energy = ModbusPoint(name: "energy", table: .inputRegisters, address: 0, type: .u32)
    energy.order = RegisterOrder("CDAB")!
    var pump = ModbusPoint(name: "pump", table: .coils, address: 0, type: .bool)
    pump.writable = true
    return ModbusProfile(name: "boiler", points: [temperature, pressure, setpoint, serial, energy, pump], pollMilliseconds: pollMs)
}

let boilerRegisters: [JSONValue] = [
    // temperature 21.5 °C, pressure 1.5 bar (f32 0x3FC00000), setpoint 45.0, serial "FG-001"
    ["unit": 1, "table": "holding_registers", "address": 0, "values": [215, 0x3FC0, 0x0000, 0, 0, 450, 0, 0, 0x4647, 0x2D30, 0x3031]],
    // energy 70000 in CDAB: low word first
    ["unit": 1, "table": "input_registers", "address": 0, "values": [4464, 1]],  // 70000 = 0x0001_1170
    ["unit": 1, "table": "coils", "address": 0, "values": [1]],
]

@Suite("Modbus against a pymodbus slave", .serialized, .timeLimit(.minutes(2)))
struct ModbusPeerTests {
    func withBus(_ peer: ModbusPeer, _ configure: (inout ModbusBusConfiguration) -> Void,
                 _ body: (ModbusBus, Spool) async throws -> Void) async throws {
        var sc = SpoolConfiguration(directory: peer.dir + "/spool")
        sc.sync = .interval(milliseconds: 50)
        let spool = try Spool(configuration: sc)
        var config = ModbusBusConfiguration(name: "test", endpoint: .tcp(host: "127.0.0.1", port: peer.port),
                                            devices: [ModbusDeviceConfiguration(leaf: "boiler-1", unit: 1, profile: boilerProfile())])
        config.responseTimeoutMilliseconds = 1000  // the peer is Python on a machine running tests in parallel
        configure(&config)
        let bus = ModbusBus(configuration: config, spool: spool)
        bus.start()
        do { try await body(bus, spool) } catch { await bus.stop(); spool.close(); throw error }
        await bus.stop()
        spool.close()
    }

    func eventually(_ what: String, seconds: Int = 10, _ condition: () throws -> Bool) async throws {
        for _ in 0..<(seconds * 50) { if try condition() { return }; try await Task.sleep(for: .milliseconds(20)) }
        Issue.record("timed out: \(what)")
        throw PeerError(what)
    }

    func messages(_ spool: Spool) throws -> [(leaf: String, body: JSONValue)] {
        try spool.next(max: 10_000).compactMap { r in TelemetryEnvelope(decoding: r.payload).flatMap { JSONValue.parse($0.body) }.map { (r.leaf, $0) } }
    }

    @Test("polls every type over TCP, one request per table per cycle")
    func pollingAndCoalescing() async throws {
        let peer = try await ModbusPeer(.tcp, units: [1], initial: boilerRegisters)
        defer { peer.stop() }
        try await withBus(peer, { _ in }) { bus, spool in
            try await eventually("a first report") { (bus.statistics().readings["boiler-1"] ?? 0) >= 1 }
            // The first message is one full report of every point, sent once all three reads are in.
            let first = try #require(try messages(spool).first)
            let points = first.body["points"]?.objectValue ?? [:]
            #expect(first.leaf == "boiler-1" && first.body["time"]?.stringValue != nil && first.body["report"] == "full")
            #expect(points.count == 6)
            #expect(abs((points["temperature"]?["value"]?.number ?? 0) - 21.5) < 1e-9)
            #expect(points["temperature"]?["unit"] == "degC")
            #expect(points["pressure"]?["value"] == 1.5)
            #expect(abs((points["setpoint"]?["value"]?.number ?? 0) - 45) < 1e-9)
            #expect(points["serial"]?["value"] == "FG-001")
            #expect(points["energy"]?["value"] == 70000)
            #expect(points["pump"]?["value"] == true)
            #expect(points.values.allSatisfy { $0["quality"] == "good" })
            // Unchanged values are not sent again (report by exception) …
            let window = ContinuousClock.now
            try peer.resetLog()
            try await Task.sleep(for: .milliseconds(1100))
            #expect(try messages(spool).isEmpty)
            // … but polled: 11 holding registers in ONE request (gap 3 < 8), one input read, one coil read per cycle.
            let requests = try peer.log().requests
            // The control calls around the sleep take time of their own on a loaded machine: bound by what passed.
            let slots = Int((ContinuousClock.now - window) / .milliseconds(200))
            let holding = requests.filter { $0.function == 3 }
            let input = requests.filter { $0.function == 4 }
            let coils = requests.filter { $0.function == 1 }
            // About 5 cycles at 200 ms (a slow, loaded machine may add a retry or skip a slot: not counted exactly).
            #expect(holding.count >= 3 && holding.count <= slots + 2, "\(holding.count) holding reads in \(slots) slots of 200 ms")
            #expect(holding.allSatisfy { $0.address == 0 && $0.count == 11 })
            #expect(input.allSatisfy { $0.address == 0 && $0.count == 2 })
            #expect(abs(input.count - holding.count) <= 2 && abs(coils.count - holding.count) <= 2, "one read per table per cycle")
            #expect(requests.count == holding.count + input.count + coils.count)
            // A change comes through on the next poll.
            try peer.set(unit: 1, "holding_registers", 0, [230])
            try await eventually("the change") { try messages(spool).contains { $0.body["points"]?["temperature"] != nil } }
            let unit = try #require(bus.statistics().units[1])
            #expect(unit.online && unit.timeouts == 0 && unit.successes > 10)
        }
    }

    @Test("an exception response marks its points bad; the unit stays online and the rest keeps polling")
    func exceptionResponses() async throws {
        let peer = try await ModbusPeer(.tcp, units: [1], initial: boilerRegisters)
        defer { peer.stop() }
        var beyond = ModbusPoint(name: "missing", table: .holdingRegisters, address: 20_000, type: .u16)
        beyond.unit = "x"
        var profile = boilerProfile()
        profile.points.append(beyond)
        try await withBus(peer, { c in c.devices[0].profile = profile }) { bus, spool in
            try await eventually("exception counted") { (bus.statistics().units[1]?.exceptions[2] ?? 0) >= 2 }
            let all = try messages(spool)
            let missing = all.compactMap { $0.body["points"]?["missing"] }.first
            #expect(missing?["quality"] == "bad")
            #expect(missing?["error"]?.stringValue?.contains("exception 2") == true)
            #expect(all.contains { $0.body["points"]?["temperature"]?["quality"] == "good" })
            let unit = try #require(bus.statistics().units[1])
            #expect(unit.online && unit.timeouts == 0)
        }
    }

    @Test("writes from the cloud land in the slave's registers: method write, C2D, read; bad requests refused")
    func writes() async throws {
        let peer = try await ModbusPeer(.tcp, units: [1], initial: boilerRegisters)
        defer { peer.stop() }
        try await withBus(peer, { _ in }) { bus, _ in
            try await eventually("online") { bus.statistics().units[1]?.online == true }
            let deadline = WallClock.nowMilliseconds() + 5000
            let write = await bus.invoke(MethodCall(deviceID: "boiler-1", name: "write", payload: ["points": ["setpoint": 21.5, "pump": false], "readback": true],
                                                    deadlineMilliseconds: deadline))
            #expect(write?.status == 200)
            #expect(write?.payload["readback"]?["pump"] == false)
            #expect(abs((write?.payload["readback"]?["setpoint"]?.number ?? 0) - 21.5) < 1e-9)
            #expect(try peer.registers(unit: 1, "holding_registers", 5, count: 1) == [215])
            #expect(try peer.registers(unit: 1, "coils", 0, count: 1) == [0])
            // Single register → function 6, coil → 5.
            #expect(try peer.log().requests.contains { $0.function == 6 && $0.address == 5 })
            #expect(try peer.log().requests.contains { $0.function == 5 && $0.address == 0 })

            let c2d = await bus.cloudToDevice(C2DMessage(deviceID: "boiler-1", body: Array(#"{"setpoint": 60}"#.utf8)))
            #expect(c2d == .complete)
            #expect(try peer.registers(unit: 1, "holding_registers", 5, count: 1) == [600])

            let read = await bus.invoke(MethodCall(deviceID: "boiler-1", name: "read", payload: ["points": ["setpoint", "energy"]], deadlineMilliseconds: deadline))
            #expect(read?.status == 200)
            #expect(read?.payload["points"]?["energy"]?["value"] == 70000)
            let ping = await bus.invoke(MethodCall(deviceID: "boiler-1", name: "ping", payload: nil, deadlineMilliseconds: deadline))
            #expect(ping?.status == 200 && ping?.payload["online"] == true)

            // Refused before anything is sent.
            for (payload, why) in [(#"{"temperature": 20}"#, "not writable"), (#"{"nope": 1}"#, "no point nope"),
                                   (#"{"setpoint": 95}"#, "above its maximum"), (#"{"pump": 1}"#, "true or false"), ("not json", "not JSON")] {
                let outcome = await bus.cloudToDevice(C2DMessage(deviceID: "boiler-1", body: Array(payload.utf8)))
                guard case .reject(let message) = outcome else { Issue.record("\(payload): \(outcome)"); continue }
                #expect(message.contains(why), "\(payload): \(message)")
            }
            let bad = await bus.invoke(MethodCall(deviceID: "boiler-1", name: "write", payload: ["setpoint": "warm"], deadlineMilliseconds: deadline))
            #expect(bad?.status == 400)
            let unknown = await bus.invoke(MethodCall(deviceID: "boiler-1", name: "reboot", payload: nil, deadlineMilliseconds: deadline))
            #expect(unknown == nil)  // the uplink answers 404
            #expect(try peer.registers(unit: 1, "holding_registers", 5, count: 1) == [600])
        }
    }

    @Test("a device that stops answering: methods get 504 inside their deadline, C2D is abandoned")
    func silentDevice() async throws {
        let peer = try await ModbusPeer(.tcp, units: [1], initial: boilerRegisters)
        defer { peer.stop() }
        try await withBus(peer, { c in c.responseTimeoutMilliseconds = 400 }) { bus, _ in
            try await eventually("online") { bus.statistics().units[1]?.online == true }
            try peer.silence(unit: 1)
            let started = WallClock.nowMilliseconds()
            let answer = await bus.invoke(MethodCall(deviceID: "boiler-1", name: "write", payload: ["setpoint": 30], deadlineMilliseconds: started + 3000))
            #expect(answer?.status == 504)
            #expect(WallClock.nowMilliseconds() - started < 3000)
            let c2d = await bus.cloudToDevice(C2DMessage(deviceID: "boiler-1", body: Array(#"{"setpoint": 30}"#.utf8)))
            guard case .abandon = c2d else { Issue.record("\(c2d)"); return }
        }
    }
}
