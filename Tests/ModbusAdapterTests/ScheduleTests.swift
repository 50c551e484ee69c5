import FieldgateCore
import Spool
import ModbusIO
import Testing
@testable import ModbusAdapter

#if canImport(Glibc)
import Glibc
#endif

func point(_ name: String, _ table: ModbusTable, _ address: Int, _ type: PointType = .u16, poll: Int64? = nil) -> ModbusPoint {
    var p = ModbusPoint(name: name, table: table, address: address, type: type)
    p.pollMilliseconds = poll
    return p
}

@Suite("Read coalescing")
struct ReadPlanTests {
    @Test("neighbours within the gap share one request; a wide gap, another table or interval splits")
    func coalescing() {
        let points = [
            point("a", .holdingRegisters, 0), point("b", .holdingRegisters, 1, .f32), point("c", .holdingRegisters, 10),
            point("d", .holdingRegisters, 40), point("e", .inputRegisters, 2), point("f", .holdingRegisters, 3, poll: 5000),
        ]
        let blocks = ReadPlanner.plan(points, defaultIntervalMilliseconds: 1000, maxGap: 8)
        #expect(blocks.count == 4)
        #expect(blocks.contains(ReadBlock(table: .holdingRegisters, start: 0, count: 11, points: [0, 1, 2], intervalMilliseconds: 1000)))
        #expect(blocks.contains(ReadBlock(table: .holdingRegisters, start: 40, count: 1, points: [3], intervalMilliseconds: 1000)))
        #expect(blocks.contains(ReadBlock(table: .inputRegisters, start: 2, count: 1, points: [4], intervalMilliseconds: 1000)))
        #expect(blocks.contains(ReadBlock(table: .holdingRegisters, start: 3, count: 1, points: [5], intervalMilliseconds: 5000)))
    }

    @Test("never more than 125 registers or 2000 bits in one request")
    func limits() {
        let regs = (0..<200).map { point("r\($0)", .inputRegisters, $0) }
        let blocks = ReadPlanner.plan(regs, defaultIntervalMilliseconds: 1000, maxGap: 8)
        #expect(blocks.map(\.count) == [125, 75])
        let bits = (0..<2500).map { point("c\($0)", .coils, $0, .bool) }
        #expect(ReadPlanner.plan(bits, defaultIntervalMilliseconds: 1000, maxGap: 0).map(\.count) == [2000, 500])
        let wide = [point("x", .holdingRegisters, 0), point("y", .holdingRegisters, 124, .u32)]  // would need 126
        #expect(ReadPlanner.plan(wide, defaultIntervalMilliseconds: 1000, maxGap: 200).count == 2)
    }
}

@Suite("Bus schedule in virtual time")
struct ScheduleTests {
    static func block(_ start: Int, every ms: Int64) -> ReadBlock {
        ReadBlock(table: .holdingRegisters, start: start, count: 1, points: [0], intervalMilliseconds: ms)
    }

    /// Runs the schedule from 0 to `until`: each poll takes `cost(unit)` ms and succeeds unless the unit is dead.
    /// Returns (time, unit) of every poll.
    static func simulate(_ schedule: inout BusSchedule, until: Int64, dead: Set<Int>, timeout: Int64, cost: Int64) -> [(Int64, Int)] {
        var now: Int64 = 0
        var polls: [(Int64, Int)] = []
        while now < until {
            switch schedule.next(now: now) {
            case .idle(let t): now = max(now + 1, min(t, until))
            case .poll(let i):
                let unit = schedule.entries[i].unit
                polls.append((now, unit))
                if dead.contains(unit) {
                    now += timeout
                    schedule.completed(i, outcome: .failure(.timeout, "no response in time"), now: now)
                } else {
                    now += cost
                    schedule.completed(i, outcome: .success, now: now)
                }
            }
        }
        return polls
    }

    @Test("on a grid: polls do not drift even when each poll takes time")
    func noDrift() {
        var s = BusSchedule(devices: [(unit: 1, blocks: [Self.block(0, every: 1000)])], now: 0, retries: 1, backoff: 1000...8000)
        let polls = Self.simulate(&s, until: 10_000, dead: [], timeout: 500, cost: 37)
        #expect(polls.map(\.0) == stride(from: 0, to: 10_000, by: 1000).map { Int64($0) })
        #expect(s.statistics(unit: 1)?.missedPolls == 0)
    }

    @Test("a dead unit costs at most one timeout per back-off period; the others keep their grid")
    func deadUnitBacksOff() {
        var s = BusSchedule(devices: [(unit: 1, blocks: [Self.block(0, every: 1000)]), (unit: 2, blocks: [Self.block(0, every: 1000)]),
                                      (unit: 3, blocks: [Self.block(0, every: 1000)])],
                            now: 0, retries: 1, backoff: 2000...8000)
        // Units 1 and 3 answer for a while so they are online, then unit 2 dies: first let everything run 3 s.
        var polls = Self.simulate(&s, until: 3000, dead: [], timeout: 300, cost: 10)
        #expect(polls.count == 9)
        var now: Int64 = 3000
        polls = []
        var deadTime: Int64 = 0
        while now < 63_000 {
            switch s.next(now: now) {
            case .idle(let t): now = max(now + 1, t)
            case .poll(let i):
                let unit = s.entries[i].unit
                polls.append((now, unit))
                if unit == 2 {
                    now += 300
                    deadTime += 300
                    s.completed(i, outcome: .failure(.timeout, "no response in time"), now: now)
                } else {
                    now += 10
                    s.completed(i, outcome: .success, now: now)
                }
            }
        }
        let deadPolls = polls.filter { $0.1 == 2 }
        // One poll plus one retry when it dies, then probes at back-off 2, 4, 8, 8, 8 … s.
        #expect(deadPolls.count <= 2 + 1 + 60 / 8 + 1)
        #expect(s.statistics(unit: 2)?.online == false)
        // The live units lost no more than the slots the dead unit's timeouts overlapped.
        for unit in [1, 3] {
            let times = polls.filter { $0.1 == unit }.map(\.0)
            #expect(times.count >= 60 - deadPolls.count, "unit \(unit): \(times.count) polls in 60 s")
            let late = zip(times, times.dropFirst()).filter { $1 - $0 > 1000 + 300 + 10 }
            #expect(late.isEmpty, "unit \(unit) slipped: \(late)")
        }
        // Back-off periods grow: the gaps between probes of the dead unit.
        let gaps = zip(deadPolls.dropFirst(2), deadPolls.dropFirst(3)).map { $1.0 - $0.0 }
        #expect(gaps.allSatisfy { $0 >= 2000 && $0 <= 8000 + 1000 + 300 }, "probe gaps \(gaps)")
        #expect(gaps.last.map { $0 >= 8000 } == true)
    }

    @Test("a unit that answers again is back on its grid at once")
    func recovery() {
        var s = BusSchedule(devices: [(unit: 7, blocks: [Self.block(0, every: 500)])], now: 0, retries: 0, backoff: 1000...1000)
        guard case .poll(let i) = s.next(now: 0) else { Issue.record("nothing due"); return }
        s.completed(i, outcome: .failure(.timeout, "no response in time"), now: 200)
        let idle = s.next(now: 300)
        #expect(idle == .idle(until: 1200))
        guard case .poll(let j) = s.next(now: 1200) else { Issue.record("no probe"); return }
        s.completed(j, outcome: .success, now: 1210)
        #expect(s.isOnline(unit: 7))
        let after = s.next(now: 1210)
        #expect(after == .idle(until: 1500))
    }

    @Test("an exception is an answer: no retry, no back-off")
    func exceptionIsAnAnswer() {
        var s = BusSchedule(devices: [(unit: 1, blocks: [Self.block(0, every: 1000)])], now: 0, retries: 3, backoff: 1000...1000)
        guard case .poll(let i) = s.next(now: 0) else { return }
        s.completed(i, outcome: .failure(.exception(2), "illegal data address"), now: 5)
        #expect(!s.retryPending)
        let n = s.next(now: 5)
        #expect(n == .idle(until: 1000))
        #expect(s.statistics(unit: 1)?.exceptions == [2: 1])
        #expect(s.isOnline(unit: 1))
    }

    @Test("an online unit's failure is retried at once, then it backs off")
    func retries() {
        var s = BusSchedule(devices: [(unit: 1, blocks: [Self.block(0, every: 1000)])], now: 0, retries: 2, backoff: 5000...5000)
        guard case .poll(let i) = s.next(now: 0) else { return }
        s.completed(i, outcome: .success, now: 5)
        for t in [1000, 1100, 1200] as [Int64] {
            let n = s.next(now: t)
            #expect(n == .poll(i))
            s.completed(i, outcome: .failure(.badResponse, "bad crc"), now: t + 100)
        }
        #expect(!s.isOnline(unit: 1))
        let n = s.next(now: 1300)
        #expect(n == .idle(until: 6300))
        #expect(s.statistics(unit: 1)?.crcErrors == 3)
    }
}

@Suite("Report by exception")
struct ReporterTests {
    @Test("deadbands, quality changes and the periodic full report")
    func deadbands() throws {
        var temperature = point("t", .inputRegisters, 0)
        temperature.deadband = .absolute(0.5)
        temperature.unit = "degC"
        var flow = point("f", .inputRegisters, 1)
        flow.deadband = .percent(10)
        var r = Reporter(points: [temperature, flow, point("s", .inputRegisters, 2)], fullReportMilliseconds: 60_000)
        let m0 = r.observe([0, 1, 2], values: [20.0, 100, 1], error: nil, now: 0)
        let first = try #require(m0)
        #expect(first["report"] == "full")
        #expect(first["points"]?["t"] == ["value": 20.0, "unit": "degC", "quality": "good"])
        let m1 = r.observe([0, 1, 2], values: [20.4, 109, 1], error: nil, now: 1000)
        #expect(m1 == nil)
        let m2 = r.observe([0, 1, 2], values: [20.6, 109, 2], error: nil, now: 2000)
        let moved = try #require(m2)
        #expect(moved["report"] == "change")
        #expect(moved["points"]?.objectValue?.keys.sorted() == ["s", "t"])
        let m3 = r.observe([0, 1, 2], values: [20.6, 120, 2], error: nil, now: 3000)
        let flowMoved = try #require(m3)
        #expect(flowMoved["points"]?.objectValue?.keys.sorted() == ["f"])
        let m4 = r.observe([0, 1, 2], values: nil, error: "no response in time", now: 4000)
        let bad = try #require(m4)
        #expect(bad["points"]?["t"] == ["value": nil, "unit": "degC", "quality": "bad", "error": "no response in time"])
        let m5 = r.observe([0, 1, 2], values: nil, error: "no response in time", now: 5000)
        #expect(m5 == nil)
        let m6 = r.observe([0, 1, 2], values: [20.6, 120, 2], error: nil, now: 60_000)
        let full = try #require(m6)
        #expect(full["report"] == "full")
        #expect(full["points"]?.objectValue?.count == 3)
    }
}

extension ReporterTests {
    @Test("the first report waits until every point was read once, then is one full report")
    func firstReportIsWhole() throws {
        var r = Reporter(points: [point("a", .holdingRegisters, 0), point("b", .coils, 0, .bool)], fullReportMilliseconds: 60_000)
        let early = r.observe([0], values: [7], error: nil, now: 0)
        #expect(early == nil)
        let m = r.observe([1], values: [true], error: nil, now: 5)
        let whole = try #require(m)
        #expect(whole["report"] == "full" && whole["points"]?.objectValue?.keys.sorted() == ["a", "b"])
    }
}

@Suite("Profile validation")
struct ProfileValidationTests {
    @Test("overlaps, duplicates, bit tables, read-only writes")
    func problems() {
        var w = point("w", .inputRegisters, 20)
        w.writable = true
        let p = ModbusProfile(name: "x", points: [
            point("a", .holdingRegisters, 0, .f32), point("b", .holdingRegisters, 1), point("a", .holdingRegisters, 5),
            point("c", .coils, 0, .u16), w, point("e", .holdingRegisters, 65535, .u32),
            point("b0", .holdingRegisters, 9, .bit(0)), point("b1", .holdingRegisters, 9, .bit(1)),
        ])
        let messages = p.problems().map(\.message)
        #expect(messages.contains { $0.contains("b") && $0.contains("overlaps a") })
        #expect(messages.contains { $0.contains("point a is defined twice") })
        #expect(messages.contains { $0.contains("coils hold single bits") })
        #expect(messages.contains { $0.contains("read-only") })
        #expect(messages.contains { $0.contains("runs past 65535") })
        #expect(!messages.contains { $0.contains("b1") })
        #expect(messages.count == 5)
    }
}

@Suite("Write coalescing")
struct WriteRunTests {
    @Test("neighbouring points go out in one write; others alone; per table")
    func runs() {
        var a = point("a", .holdingRegisters, 10, .f32)
        a.writable = true
        var b = point("b", .holdingRegisters, 12)
        b.writable = true
        var c = point("c", .holdingRegisters, 20)
        c.writable = true
        var k0 = point("k0", .coils, 0, .bool)
        k0.writable = true
        var k1 = point("k1", .coils, 1, .bool)
        k1.writable = true
        let runs = BusRunner.writeRuns([(c, [7]), (k1, [1]), (b, [5]), (a, [1, 2]), (k0, [0])])
        #expect(runs == [
            BusRunner.WriteRun(table: .coils, address: 0, values: [0, 1]),
            BusRunner.WriteRun(table: .holdingRegisters, address: 10, values: [1, 2, 5]),
            BusRunner.WriteRun(table: .holdingRegisters, address: 20, values: [7]),
        ])
    }

    @Test("a unit's own retries")
    func ownRetries() {
        let block = ReadBlock(table: .holdingRegisters, start: 0, count: 1, points: [0], intervalMilliseconds: 1000)
        var s = BusSchedule(devices: [(unit: 1, blocks: [block]), (unit: 2, blocks: [block])], now: 0, retries: 0, backoff: 1000...1000,
                            retriesByUnit: [2: 2])
        for i in [0, 1] { s.completed(i, outcome: .success, now: 1) }
        s.completed(0, outcome: .failure(.timeout, "t"), now: 1001)
        #expect(!s.retryPending && !s.isOnline(unit: 1))
        s.completed(1, outcome: .failure(.timeout, "t"), now: 1002)
        #expect(s.retryPending)
    }
}

@Suite("Modbus desired properties")
struct DesiredTests {
    @Test("applied settings are what is in effect; dropped keys fall back, dropped points are cleared; bad versions rejected whole")
    func effective() async throws {
        let dir = "/tmp/fieldgate-desired-\(UInt64.random(in: 1...UInt64.max))"
        defer { _ = system("rm -rf '\(dir)'") }
        let spool = try Spool(configuration: SpoolConfiguration(directory: dir))
        defer { spool.close() }
        var device = ModbusDeviceConfiguration(leaf: "m", unit: 1, profile: ModbusProfile(name: "p", points: [point("a", .holdingRegisters, 0), point("b", .holdingRegisters, 1)], pollMilliseconds: 1000))
        device.fullReportMilliseconds = 60_000
        let bus = ModbusBus(configuration: ModbusBusConfiguration(name: "x", endpoint: .tcp(host: "127.0.0.1", port: 1), devices: [device]), spool: spool)
        let first = await bus.desiredProperties(["poll_ms": 500, "points": ["a": ["deadband": 2]]], version: 2, deviceID: "m")
        #expect(first?["modbus"]?["applied"] == ["poll_ms": 500, "full_report_seconds": 60, "points": ["a": ["deadband": 2]]])
        let second = await bus.desiredProperties(["points": ["b": ["enabled": false]]], version: 3, deviceID: "m")
        #expect(second?["modbus"]?["applied"] == ["poll_ms": 1000, "full_report_seconds": 60, "points": ["a": nil, "b": ["enabled": false]]])
        let bad = await bus.desiredProperties(["poll_ms": 5], version: 4, deviceID: "m")
        #expect(bad?["modbus"]?["status"]?.stringValue?.hasPrefix("rejected: poll_ms") == true)
        #expect(await bus.desiredProperties([:], version: 5, deviceID: "other") == nil)
    }
}
