import FieldgateCore
import ModbusIO

/// Desired-twin settings of one device (README "Modbus adapter", Twin): they change the poll plan and the reports.
public struct DeviceOverrides: Sendable, Equatable {
    public var pollMilliseconds: Int64?
    public var fullReportMilliseconds: Int64?
    public var disabledPoints: Set<String> = []
    public var deadbands: [String: Deadband] = [:]

    public init() {}

    /// What the poll plan depends on (deadbands and report periods do not change it).
    struct Plan: Equatable {
        var pollMilliseconds: Int64?
        var disabledPoints: Set<String>
    }
    var plan: Plan { Plan(pollMilliseconds: pollMilliseconds, disabledPoints: disabledPoints) }
}

/// The bus thread's own state: the schedule, each device's reporter, and the transactions themselves. Not shared:
/// only the bus thread touches it.
struct BusRunner {
    let configuration: ModbusBusConfiguration
    var schedule: BusSchedule
    var reporters: [Reporter]
    private var overrides: [Int: DeviceOverrides] = [:]
    /// What each schedule entry read last time, when it succeeded: the same registers again mean nothing to
    /// decode or report (most field values sit still) unless a full report is due.
    private var lastRead: [[UInt16]?] = []
    /// The response timeout the connection is set to now (units may have their own).
    private var timeout: Int

    init(configuration: ModbusBusConfiguration, now: Int64) {
        self.configuration = configuration
        timeout = configuration.responseTimeoutMilliseconds
        reporters = configuration.devices.map { Reporter(points: $0.profile.points, fullReportMilliseconds: $0.fullReportMilliseconds) }
        schedule = BusSchedule(devices: [], now: now, retries: configuration.retries, backoff: configuration.backoffMilliseconds)
        schedule = makeSchedule(now: now)
        lastRead = Array(repeating: nil, count: schedule.entries.count)
    }

    private func makeSchedule(now: Int64) -> BusSchedule {
        let plans = configuration.devices.enumerated().map { i, d in
            let o = overrides[i]
            let points = d.profile.points.filter { !(o?.disabledPoints.contains($0.name) ?? false) }
            let indexOf = Dictionary(d.profile.points.enumerated().map { ($0.element.name, $0.offset) }, uniquingKeysWith: { a, _ in a })
            var blocks = ReadPlanner.plan(points, defaultIntervalMilliseconds: o?.pollMilliseconds ?? d.pollMilliseconds, maxGap: configuration.maxGap)
            for b in blocks.indices { blocks[b].points = blocks[b].points.map { indexOf[points[$0].name]! } }
            return (unit: d.unit, blocks: blocks)
        }
        let ownRetries = Dictionary(configuration.devices.compactMap { d in d.retries.map { (d.unit, $0) } }, uniquingKeysWith: { a, _ in a })
        return BusSchedule(devices: plans, now: now, retries: configuration.retries, backoff: configuration.backoffMilliseconds, retriesByUnit: ownRetries)
    }

    var unitStatistics: [(Int, UnitStatistics)] {
        configuration.devices.compactMap { d in schedule.statistics(unit: d.unit).map { (d.unit, $0) } }
    }

    /// New twin settings: the plan is rebuilt (statistics carried over), the reporters told.
    mutating func apply(_ next: [Int: DeviceOverrides], now: Int64) {
        let planChanged = next.mapValues(\.plan) != overrides.mapValues(\.plan)
        // In place: what was reported stays the reference for the deadbands (no burst of reports after a twin change).
        for (i, o) in next where overrides[i] != o {
            reporters[i].fullReportMilliseconds = o.fullReportMilliseconds ?? configuration.devices[i].fullReportMilliseconds
            reporters[i].disabled = o.disabledPoints
            reporters[i].deadbands = o.deadbands
        }
        overrides = next
        if planChanged {
            let old = schedule
            schedule = makeSchedule(now: now)
            schedule.carryStatistics(from: old)
            lastRead = Array(repeating: nil, count: schedule.entries.count)
        }
        for i in lastRead.indices { lastRead[i] = nil }  // new deadbands or points: look at every value again
    }

    /// Polls one scheduled block: returns the telemetry body to send (if the reporter has something), its leaf, and
    /// the error if the poll failed.
    mutating func poll(_ index: Int, on connection: ModbusConnection, now: () -> Int64, wallNow: Int64) -> (JSONValue?, String?, ModbusError?) {
        let entry = schedule.entries[index]
        let device = configuration.devices[entry.device]
        let block = entry.block
        useTimeout(of: device, on: connection)
        do throws(ModbusError) {
            let registers = try connection.read(block.table, unit: device.unit, address: block.start, count: block.count)
            schedule.completed(index, outcome: .success, now: now())
            if lastRead[index] == registers && !reporters[entry.device].isFullReportDue(now: wallNow) { return (nil, nil, nil) }
            lastRead[index] = registers
            let values = block.points.map { i -> JSONValue in
                let p = device.profile.points[i]
                let from = p.address - block.start
                return p.value(of: registers[from..<(from + p.count)])
            }
            return (reporters[entry.device].observe(block.points, values: values, error: nil, now: wallNow), device.leaf, nil)
        } catch {
            // A late answer to this request must not be taken for the answer to the next one.
            if error.kind == .timeout || error.kind == .badResponse { connection.flush() }
            lastRead[index] = nil
            schedule.completed(index, outcome: .failure(error.kind, error.message), now: now())
            if schedule.retryPending { return (nil, nil, error) }  // a retry comes next: report nothing yet
            return (reporters[entry.device].observe(block.points, values: nil, error: error.message, now: wallNow), device.leaf, error)
        }
    }

    private mutating func useTimeout(of device: ModbusDeviceConfiguration, on connection: ModbusConnection) {
        let wanted = device.responseTimeoutMilliseconds ?? configuration.responseTimeoutMilliseconds
        if wanted != timeout {
            connection.setResponseTimeout(milliseconds: wanted)
            timeout = wanted
        }
    }

    /// Carries out a command from the cloud.
    mutating func execute(_ command: BusCommand, on connection: ModbusConnection) -> Result<JSONValue, ModbusError> {
        connection.flush()
        switch command {
        case .write(let d, let points, let readback):
            let device = configuration.devices[d]
            useTimeout(of: device, on: connection)
            var readBack: [String: JSONValue] = [:]
            do throws(ModbusError) {
                // Neighbouring points go out in one request (function 16 / 15), a lone register or coil as 6 / 5.
                for run in Self.writeRuns(points) {
                    if run.table == .coils {
                        try connection.writeCoils(unit: device.unit, address: run.address, values: run.values.map { $0 != 0 })
                    } else {
                        try connection.writeRegisters(unit: device.unit, address: run.address, values: run.values)
                    }
                }
                if readback {
                    for (point, _) in points {
                        let r = try connection.read(point.table, unit: device.unit, address: point.address, count: point.count)
                        readBack[point.name] = point.value(of: r[...])
                    }
                }
            } catch { return .failure(error) }
            return .success(readback ? .object(readBack) : .object([:]))
        case .read(let d, let indices):
            let device = configuration.devices[d]
            useTimeout(of: device, on: connection)
            let wanted = indices.map { i in
                var p = device.profile.points[i]
                p.pollMilliseconds = nil  // one plan for all of them
                return p
            }
            var values: [String: JSONValue] = [:]
            // Coalesced like polls; one request for neighbouring points.
            for block in ReadPlanner.plan(wanted, defaultIntervalMilliseconds: 1, maxGap: configuration.maxGap) {
                do throws(ModbusError) {
                    let registers = try connection.read(block.table, unit: device.unit, address: block.start, count: block.count)
                    for i in block.points {
                        let p = wanted[i]
                        let from = p.address - block.start
                        var v: [String: JSONValue] = ["value": p.value(of: registers[from..<(from + p.count)])]
                        if let u = p.unit { v["unit"] = .string(u) }
                        values[p.name] = .object(v)
                    }
                } catch { return .failure(error) }
            }
            return .success(.object(values))
        }
    }
}

extension BusRunner {
    struct WriteRun: Equatable {
        var table: ModbusTable
        var address: Int
        var values: [UInt16]
    }

    /// Points to write, merged into runs of contiguous addresses per table (at most 123 registers or 1968 coils,
    /// the protocol's limits for one write).
    static func writeRuns(_ points: [(point: ModbusPoint, registers: [UInt16])]) -> [WriteRun] {
        var runs: [WriteRun] = []
        for (point, registers) in points.sorted(by: { ($0.point.table, $0.point.address) < ($1.point.table, $1.point.address) }) {
            let limit = point.table == .coils ? 1968 : 123
            if var last = runs.last, last.table == point.table, last.address + last.values.count == point.address,
               last.values.count + registers.count <= limit {
                last.values += registers
                runs[runs.count - 1] = last
            } else {
                runs.append(WriteRun(table: point.table, address: point.address, values: registers))
            }
        }
        return runs
    }
}

extension BusSchedule {
    /// Keeps unit statistics (and back-off) across a plan rebuilt by a twin change.
    mutating func carryStatistics(from old: BusSchedule) {
        for (unit, slot) in old.slots { if let mine = slots[unit] { units[mine] = old.units[slot] } }
    }
}
