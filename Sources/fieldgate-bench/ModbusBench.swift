import ArgumentParser
import FieldgateCore
import ModbusAdapter
import ModbusIO
import Spool

#if canImport(Glibc)
import Glibc
#endif

/// Modbus polling (issue 6): fieldgate's bus — schedule, coalesced reads, decoding, report by exception, spool —
/// against libmodbus's bare read loop, same server, same run, alternating rounds. Then RTU over a pty pair: the
/// schedule's overhead per transaction against the frame time a real line would take at the configured baud.
struct ModbusBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "modbus", abstract: "Modbus polls/s vs raw libmodbus; RTU schedule efficiency.")

    @Option(help: "Seconds per measurement.") var seconds = 3.0
    @Option(help: "Rounds (raw and fieldgate alternate).") var rounds = 3
    @Option(help: "Registers per read.") var registers = 10
    @Option(help: "Read blocks the device's profile yields (each polled every millisecond, so the bus is never idle).") var blocks = 50
    @Option(help: "RTU baud rate the efficiency is computed for.") var baud = 19200

    func run() async throws {
        print("Modbus benchmark: \(registers) registers per read, \(seconds) s per measurement, \(rounds) rounds, \(sysconf(Int32(_SC_NPROCESSORS_ONLN))) cores")
        print("server: libmodbus on its own thread (the same for both clients)\n")
        try await tcp()
        print("")
        try await rtu()
    }

    /// A profile of `blocks` blocks of `registers` u16 points, far enough apart that none coalesce.
    func profile(blocks: Int) -> ModbusProfile {
        var points: [ModbusPoint] = []
        for b in 0..<blocks {
            for r in 0..<registers {
                points.append(ModbusPoint(name: "b\(b)r\(r)", table: .holdingRegisters, address: b * (registers + 10) + r, type: .u16))
            }
        }
        return ModbusProfile(name: "bench", points: points, pollMilliseconds: 1)
    }

    func measureBus(_ endpoint: ModbusEndpoint, blocks: Int, spoolDirectory: String) async throws -> Double {
        _ = system("mkdir -p '\(spoolDirectory)'")
        var sc = SpoolConfiguration(directory: spoolDirectory)
        sc.sync = .interval(milliseconds: 100)
        let spool = try Spool(configuration: sc)
        defer { spool.close() }
        var config = ModbusBusConfiguration(name: "bench", endpoint: endpoint,
                                            devices: [ModbusDeviceConfiguration(leaf: "bench-1", unit: 1, profile: profile(blocks: blocks))])
        config.responseTimeoutMilliseconds = 1000
        let bus = ModbusBus(configuration: config, spool: spool)
        bus.start()
        // Warm up (connect, first full report), then count successful polls over the window.
        for _ in 0..<200 where (bus.statistics().units[1]?.successes ?? 0) < 10 { try? await Task.sleep(for: .milliseconds(10)) }
        let before = bus.statistics().units[1]?.successes ?? 0
        let start = MonotonicClock.milliseconds()
        try? await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
        let after = bus.statistics().units[1]?.successes ?? 0
        let elapsed = Double(MonotonicClock.milliseconds() - start) / 1000
        await bus.stop()
        return Double(after - before) / elapsed
    }

    func tcp() async throws {
        let port = 20000 + Int.random(in: 0..<20000)
        let endpoint = ModbusEndpoint.tcp(host: "127.0.0.1", port: port)
        let server = ModbusServer(endpoint, registers: blocks * (registers + 10) + 10)
        server.start()
        defer { server.stop() }
        usleep(100_000)
        let dir = "/tmp/fieldgate-bench-modbus-\(getpid())"
        defer { _ = system("rm -rf '\(dir)'") }
        print("Modbus TCP (loopback), fieldgate polling \(blocks) blocks due every ms:")
        print("round   raw libmodbus reads/s   fieldgate polls/s   ratio   added µs/poll")
        var ratios: [Double] = []
        var added: [Double] = []
        for round in 1...rounds {
            let raw = Double(RawModbusLoop.run(endpoint, unit: 1, address: 0, count: registers, seconds: seconds)) / seconds
            let ours = try await measureBus(endpoint, blocks: blocks, spoolDirectory: "\(dir)/\(round)")
            ratios.append(ours / raw)
            added.append((1 / ours - 1 / raw) * 1e6)
            print(pad(String(round), 5) + "   " + pad(fixed(raw, 0), 21) + "   " + pad(fixed(ours, 0), 17) + "   " + pad(fixed(ours / raw, 3), 5)
                  + "   " + pad(fixed(added.last!, 1), 13))
        }
        let median = ratios.sorted()[ratios.count / 2]
        print("median ratio \(fixed(median, 3)) (target ≥ 0.9); median added time per poll \(fixed(added.sorted()[added.count / 2], 1)) µs")
    }

    func rtu() async throws {
        let dir = "/tmp/fieldgate-bench-rtu-\(getpid())"
        _ = system("mkdir -p '\(dir)'")
        defer { _ = system("rm -rf '\(dir)'") }
        let socat = try ChildProcess.spawn("/usr/bin/socat", ["pty,raw,echo=0,link=\(dir)/gw", "pty,raw,echo=0,link=\(dir)/slave"])
        defer { socat.terminate() }
        for _ in 0..<100 where access("\(dir)/slave", F_OK) != 0 || access("\(dir)/gw", F_OK) != 0 { usleep(20_000) }
        var slaveLine = RTULine(path: "\(dir)/slave")
        slaveLine.baud = baud
        var gwLine = RTULine(path: "\(dir)/gw")
        gwLine.baud = baud
        let server = ModbusServer(.rtu(slaveLine), registers: registers + 10)
        server.start()
        defer { server.stop() }
        usleep(100_000)

        // One block back to back: the interval between requests at the server is the whole transaction as the
        // schedule runs it on a pty, where frames take no time.
        _ = server.requestTimes(reset: true)
        let raw = Double(RawModbusLoop.run(.rtu(gwLine), unit: 1, address: 0, count: registers, seconds: seconds)) / seconds
        _ = server.requestTimes(reset: true)
        let ours = try await measureBus(.rtu(gwLine), blocks: 1, spoolDirectory: "\(dir)/spool")
        let times = server.requestTimes()
        let gaps = zip(times, times.dropFirst()).map { Double($1 - $0) / 1e6 }.sorted()
        let medianGap = gaps.isEmpty ? 0 : gaps[gaps.count / 2]
        let turnaround = ModbusBusConfiguration(name: "x", endpoint: .rtu(gwLine), devices: []).turnaroundMilliseconds
        // On the wire: request 8 bytes, answer 5 + 2n bytes, each 11 bits (8E1), a 3.5-character gap after each frame.
        let charMs = gwLine.characterMicroseconds / 1000
        let frames = Double(8 + 5 + 2 * registers) * charMs
        let silence = 2 * 3.5 * charMs
        let wire = frames + silence
        let software = max(0, medianGap - turnaround)
        print("Modbus RTU over a pty pair at \(baud) baud (8E1), one unit, \(registers) registers per read:")
        print("  raw libmodbus on the pty: \(fixed(raw, 0)) reads/s; fieldgate: \(fixed(ours, 0)) polls/s (\(fixed(ours / max(raw, 1), 3)) of raw)")
        print("  median time between requests at the slave: \(fixed(medianGap, 2)) ms (of which \(fixed(turnaround, 2)) ms is the configured turnaround)")
        print("  a real line at \(baud) baud: frames \(fixed(frames, 2)) ms + 2 × 3.5 characters \(fixed(silence, 2)) ms = \(fixed(wire, 2)) ms per transaction")
        print("  schedule efficiency there: \(fixed(wire / (wire + software), 3)) (frames and mandatory gaps / everything, software overhead \(fixed(software, 2)) ms per poll)")
    }
}
