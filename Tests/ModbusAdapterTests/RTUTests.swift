import FieldgateCore
import HubTestSupport
import ModbusIO
import Spool
import Testing
import Uplink
@testable import ModbusAdapter

/// Modbus RTU on one "RS-485 bus": a socat pty pair with a pymodbus serial slave holding three unit ids.
@Suite("Modbus RTU over a pty pair", .serialized, .timeLimit(.minutes(2)))
struct RTUTests {
    static func meter(_ unit: Int) -> ModbusDeviceConfiguration {
        var power = ModbusPoint(name: "power", table: .inputRegisters, address: 0, type: .f32)
        power.unit = "W"
        let voltage = ModbusPoint(name: "voltage", table: .inputRegisters, address: 2, type: .u16)
        return ModbusDeviceConfiguration(leaf: "meter-\(unit)", unit: unit, profile: ModbusProfile(name: "meter", points: [power, voltage], pollMilliseconds: 250))
    }

    @Test("three units polled without interleaving; a silent one backs off and the others keep their schedule")
    func threeUnitsOneSilent() async throws {
        let peer = try await ModbusPeer(.rtu(baud: 19200), units: [1, 2, 3],
                                        initial: [1, 2, 3].map { ["unit": .int($0), "table": "input_registers", "address": 0, "values": [0x4348, 0, 230]] })
        defer { peer.stop() }
        var line = RTULine(path: peer.device)
        line.baud = 19200
        var config = ModbusBusConfiguration(name: "rs485", endpoint: .rtu(line), devices: [1, 2, 3].map(Self.meter))
        config.responseTimeoutMilliseconds = 200
        config.backoffMilliseconds = 2000...4000
        let spool = try Spool(configuration: SpoolConfiguration(directory: peer.dir + "/spool"))
        let bus = ModbusBus(configuration: config, spool: spool)
        let started = ContinuousClock.now
        bus.start()
        defer { spool.close() }

        // Phase 1: everybody answers.
        try await Task.sleep(for: .seconds(3))
        var (requests, frames) = try peer.log()
        // The control call takes time of its own on a loaded machine: the upper bound is what really passed.
        let slots = Int((ContinuousClock.now - started) / .milliseconds(250))
        for unit in [1, 2, 3] {
            let n = requests.filter { $0.unit == unit }.count
            #expect(n >= 9 && n <= slots + 2, "unit \(unit): \(n) polls in \(slots) slots of 250 ms")
        }
        #expect(requests.allSatisfy { $0.function == 4 && $0.address == 0 && $0.count == 3 }, "one coalesced read per poll")
        // No interleaving: on the line, every request is answered before the next one starts.
        var awaiting: Int?
        var interleaved = 0
        for f in frames {
            if f.received { if awaiting != nil { interleaved += 1 }; awaiting = f.unit } else if f.unit == awaiting { awaiting = nil }
        }
        #expect(interleaved == 0)
        #expect(bus.statistics().units.values.allSatisfy { $0.online && $0.timeouts == 0 && $0.crcErrors == 0 })

        // Phase 2: unit 2 goes silent for 8 s.
        try peer.silence(unit: 2)
        try peer.resetLog()
        try await Task.sleep(for: .seconds(8))
        (requests, frames) = try peer.log()
        let toSilent = requests.filter { $0.unit == 2 }
        // Retries once, then probes after 2 s and 4 s back-offs: a handful of timeouts in 8 s, not 32.
        #expect(toSilent.count <= 5, "\(toSilent.count) requests to the silent unit in 8 s")
        let silent = try #require(bus.statistics().units[2])
        #expect(!silent.online && silent.timeouts >= 2)
        for unit in [1, 3] {
            let times = requests.filter { $0.unit == unit }.map(\.time)
            #expect(times.count >= 28, "unit \(unit): \(times.count) polls in 8 s at 250 ms")
            // A poll can wait behind the silent unit's first timeout and its one retry (2 × 200 ms), never more.
            let worst = zip(times, times.dropFirst()).map { $1 - $0 }.max() ?? 0
            #expect(worst < 0.25 + 2 * 0.2 + 0.1, "unit \(unit): worst gap \(worst) s")
        }
        let telemetry = try spool.next(max: 10_000).compactMap { r in TelemetryEnvelope(decoding: r.payload).flatMap { JSONValue.parse($0.body) }.map { (r.leaf, $0) } }
        #expect(telemetry.contains { $0.0 == "meter-2" && $0.1["points"]?["power"]?["quality"] == "bad" })
        #expect(telemetry.contains { $0.0 == "meter-1" && $0.1["points"]?["power"]?["value"]?.number == 200 })

        // Phase 3: it answers again and is back on its grid after the next probe.
        try peer.silence(unit: 2, false)
        try await Task.sleep(for: .seconds(5))
        #expect(bus.statistics().units[2]?.online == true)
        await bus.stop()
    }
}
