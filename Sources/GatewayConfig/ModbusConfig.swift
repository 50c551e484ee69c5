import FieldgateCore
import ModbusAdapter
import ModbusIO
import TOMLKit

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A number in TOML, written as an integer or a float (`scale = 1` and `scale = 0.1` both work).
struct TOMLNumber: Decodable, Sendable {
    var value: Double
    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let d = try? c.decode(Double.self) { value = d } else { value = Double(try c.decode(Int64.self)) }
    }
}

/// A register address: 0-based within its table, or Modicon notation as a string (`"40001"`).
enum TOMLAddress: Decodable, Sendable {
    case number(Int)
    case text(String)
    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let i = try? c.decode(Int.self) { self = .number(i) } else { self = .text(try c.decode(String.self)) }
    }
}

/// `[[modbus_bus]]`: one TCP connection or serial line (etc/fieldgate/devices.d/example-modbus.toml.example).
public struct ModbusBusSection: Decodable, Sendable {
    public var name: String
    /// `host:port` (`[v6]:port`) of a Modbus TCP server or gateway.
    public var tcp: String?
    /// A serial device for Modbus RTU.
    public var device: String?
    public var baud: Int?
    public var parity: String?
    public var data_bits: Int?
    public var stop_bits: Int?
    public var rs485: Bool?
    public var response_timeout_ms: Int?
    public var byte_timeout_ms: Int?
    var turnaround_ms: TOMLNumber?
    public var retries: Int?
    public var backoff_ms: Int?
    public var backoff_max_ms: Int?
    public var max_gap: Int?
}

/// A `profiles.d/*.toml` file: one device profile (a register map).
struct ProfileFile: Decodable {
    struct Point: Decodable {
        var name: String
        var table: String?
        var address: TOMLAddress
        var type: String?
        var length: Int?
        var bit: Int?
        var order: String?
        var scale: TOMLNumber?
        var offset: TOMLNumber?
        var unit: String?
        var deadband: TOMLNumber?
        var deadband_percent: TOMLNumber?
        var poll_ms: Int?
        var writable: Bool?
        var min: TOMLNumber?
        var max: TOMLNumber?
    }
    var name: String?
    var description: String?
    var poll_ms: Int?
    var order: String?
    var point: [Point]?
}

extension ConfigSchema {
    static let modbusBus = Schema(fields: [
        "name": .string, "tcp": .string, "device": .string, "baud": .int, "parity": .string, "data_bits": .int, "stop_bits": .int,
        "rs485": .bool, "response_timeout_ms": .int, "byte_timeout_ms": .int, "turnaround_ms": .number, "retries": .int,
        "backoff_ms": .int, "backoff_max_ms": .int, "max_gap": .int,
    ], required: ["name"])

    static let profilePoint = Schema(fields: [
        "name": .string, "table": .string, "address": .intOrString, "type": .string, "length": .int, "bit": .int, "order": .string,
        "scale": .number, "offset": .number, "unit": .string, "deadband": .number, "deadband_percent": .number, "poll_ms": .int,
        "writable": .bool, "min": .number, "max": .number,
    ], required: ["name", "address"])

    static let profile = Schema(fields: [
        "name": .string, "description": .string, "poll_ms": .int, "order": .string, "point": .tables(profilePoint),
    ], required: ["point"])
}

/// Reads `profiles.d/*.toml`; the profile's name is its `name` key or the file name without `.toml`.
struct ProfileLoader {
    var problems: [ConfigProblem] = []
    var profiles: [String: (source: ConfigSource, profile: ModbusProfile)] = [:]

    mutating func load(directory: String) {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasSuffix(".toml") }.sorted()
        for file in names {
            let source: ConfigSource
            do throws(ConfigError) { source = try ConfigSource.read(directory + "/" + file) } catch { problems += error.problems; continue }
            defer { ConfigSource.free([source.table]) }  // decoded within this turn; lines come from the text
            let schemaProblems = ConfigSchema.profile.check(source.table, path: "", in: source)
            guard schemaProblems.isEmpty else { problems += schemaProblems; continue }
            let decoded: ProfileFile
            do { decoded = try TOMLDecoder().decode(ProfileFile.self, from: source.table) } catch {
                problems.append(ConfigProblem(file: source.path, line: nil, message: "\(error)"))
                continue
            }
            let name = decoded.name ?? String(file.dropLast(5))
            if let other = profiles[name] {
                problems.append(source.problem("name", "profile \(name) is defined twice (also in \(other.source.path)); profile names must be unique"))
                continue
            }
            if let profile = map(decoded, name: name, source: source) { profiles[name] = (source, profile) }
        }
    }

    private mutating func map(_ f: ProfileFile, name: String, source: ConfigSource) -> ModbusProfile? {
        let before = problems.count
        func bad(_ keyPath: String, _ message: String) { problems.append(source.problem(keyPath, "profile \(name): \(message)")) }
        let poll = Int64(f.poll_ms ?? 1000)
        if poll < 10 { bad("poll_ms", "poll_ms must be at least 10") }
        if let o = f.order, RegisterOrder(o) == nil { bad("order", "order \(o): use ABCD, CDAB, BADC or DCBA (64-bit: ABCDEFGH, GHEFCDAB, BADCFEHG, HGFEDCBA)") }
        var points: [ModbusPoint] = []
        var fileIndex: [Int] = []  // points[k] is the file's point[fileIndex[k]] (entries with errors are skipped)
        for (i, p) in (f.point ?? []).enumerated() {
            let at = "point[\(i)]"
            // The table: from `table`, or from a Modicon address; both must agree.
            var table: ModbusTable?
            var address = 0
            switch p.address {
            case .number(let n):
                address = n
                if !(0...65535).contains(n) { bad("\(at).address", "point \(p.name): address \(n) must be 0 to 65535 (0-based), or Modicon notation as a string (\"40001\")") }
            case .text(let t):
                if let m = parseModiconAddress(t) { table = m.table; address = m.address } else {
                    bad("\(at).address", "point \(p.name): address \"\(t)\" is not Modicon notation (0xxxx coils, 1xxxx discrete inputs, 3xxxx input registers, 4xxxx holding registers, 1-based; 6 digits up to 465536)")
                }
            }
            if let t = p.table {
                guard let named = Self.table(t) else {
                    bad("\(at).table", "point \(p.name): table \(t): use holding, input, coil or discrete (or holding_registers, input_registers, coils, discrete_inputs)")
                    continue
                }
                if let fromAddress = table, fromAddress != named {
                    bad("\(at).table", "point \(p.name): table \(t) contradicts the Modicon address (\(fromAddress.rawValue))")
                }
                table = named
            }
            guard let table else { bad("\(at).table", "point \(p.name): name its table (table = \"holding\") or use a Modicon address (\"40001\")"); continue }
            let typeName = p.type ?? (table.isBits ? "bool" : "u16")
            if typeName == "string" && (p.length ?? 0) < 1 { bad("\(at).length", "point \(p.name): a string needs length = <characters>"); continue }
            if typeName == "bit" && !(0...15).contains(p.bit ?? -1) { bad("\(at).bit", "point \(p.name): a bit needs bit = 0 to 15"); continue }
            guard let type = PointType.named(typeName, length: p.length, bit: p.bit) else {
                bad("\(at).type", "point \(p.name): type \(typeName): use u16 i16 u32 i32 u64 i64 f32 f64 string bool bit")
                continue
            }
            var point = ModbusPoint(name: p.name, table: table, address: address, type: type)
            if let o = p.order ?? f.order {
                if let order = RegisterOrder(o), RegisterOrder.fits(o, type) || p.order == nil {
                    point.order = order
                } else {
                    bad("\(at).order", "point \(p.name): order \(o) does not apply to \(type) (32-bit: ABCD CDAB BADC DCBA; 64-bit: those or ABCDEFGH GHEFCDAB BADCFEHG HGFEDCBA; 16-bit and strings: AB or BA)")
                }
            }
            if let s = p.scale?.value { point.scale = s }
            if let o = p.offset?.value { point.offset = o }
            if (p.scale != nil || p.offset != nil) && !type.isNumericForScale {
                bad("\(at).scale", "point \(p.name): scale and offset apply to numbers, not \(type)")
            }
            point.unit = p.unit
            if p.deadband != nil && p.deadband_percent != nil { bad("\(at).deadband", "point \(p.name): set deadband or deadband_percent, not both") }
            if let d = p.deadband?.value { point.deadband = .absolute(d) }
            if let d = p.deadband_percent?.value { point.deadband = .percent(d) }
            if let d = p.deadband?.value ?? p.deadband_percent?.value, d < 0 { bad("\(at).deadband", "point \(p.name): a deadband cannot be negative") }
            if let ms = p.poll_ms {
                if ms < 10 { bad("\(at).poll_ms", "point \(p.name): poll_ms must be at least 10") }
                point.pollMilliseconds = Int64(ms)
            }
            point.writable = p.writable ?? false
            point.minimum = p.min?.value
            point.maximum = p.max?.value
            points.append(point)
            fileIndex.append(i)
        }
        let profile = ModbusProfile(name: name, points: points, pollMilliseconds: poll)
        for (index, key, message) in profile.problems() {
            bad("point[\(fileIndex[index])].\(key)", message)
        }
        if points.isEmpty && problems.count == before { bad("point", "a profile needs at least one [[point]]") }
        return problems.count == before ? profile : nil
    }

    static func table(_ name: String) -> ModbusTable? {
        switch name {
        case "holding", "holding_registers", "holding_register": .holdingRegisters
        case "input", "input_registers", "input_register": .inputRegisters
        case "coil", "coils": .coils
        case "discrete", "discrete_inputs", "discrete_input": .discreteInputs
        default: nil
        }
    }
}

extension PointType {
    var isNumericForScale: Bool {
        switch self { case .string, .bool, .bit: false; default: true }
    }
}

extension Mapper {
    /// Buses from `[[modbus_bus]]` tables with the leaves that name them.
    mutating func modbusBuses(_ sections: [(ConfigSource, Int, ModbusBusSection)], leaves: [(ConfigSource, String, GatewayConfigFile.Leaf)]) -> [ModbusBusConfiguration] {
        var buses: [String: (source: ConfigSource, at: String, configuration: ModbusBusConfiguration)] = [:]
        var order: [String] = []
        var owners: [String: String] = [:]  // by port path or host:port, whatever the line settings
        for (source, i, b) in sections {
            let at = "modbus_bus[\(i)]"
            if buses[b.name] != nil { report(source, "\(at).name", "modbus_bus \(b.name) is defined twice; bus names must be unique"); continue }
            guard let c = modbusBus(b, source: source, at: at) else { continue }
            if let other = owners[c.endpoint.description] {
                report(source, at, "modbus_bus \(b.name) uses \(c.endpoint), like bus \(other): one connection or port has exactly one owner; put both devices on one bus")
                continue
            }
            owners[c.endpoint.description] = b.name
            buses[b.name] = (source, at, c)
            order.append(b.name)
        }
        var units: [String: [Int: String]] = [:]
        for (source, at, l) in leaves {
            guard let busName = l.bus else { report(source, "\(at).adapter", "leaf \(l.device_id): a modbus leaf needs bus = \"<name of a [[modbus_bus]]>\""); continue }
            guard var bus = buses[busName] else {
                let known = order.isEmpty ? "none is defined" : "defined: " + order.joined(separator: ", ")
                report(source, "\(at).bus", "leaf \(l.device_id): no [[modbus_bus]] named \(busName) (\(known))")
                continue
            }
            guard let profileName = l.profile else { report(source, "\(at).adapter", "leaf \(l.device_id): a modbus leaf needs profile = \"<name of a profiles.d profile>\""); continue }
            guard let profile = profiles[profileName]?.profile else {
                let known = profiles.keys.sorted()
                report(source, "\(at).profile", "leaf \(l.device_id): no profile \(profileName) in profiles.d (\(known.isEmpty ? "there are none" : "known: " + known.joined(separator: ", ")))")
                continue
            }
            let unit = l.unit_id ?? 1
            let range: ClosedRange<Int> = if case .rtu = bus.configuration.endpoint { 1...247 } else { 0...255 }
            guard range.contains(unit) else {
                report(source, "\(at).unit_id", "leaf \(l.device_id): unit_id \(unit) is out of range (\(range.lowerBound) to \(range.upperBound) on this bus)")
                continue
            }
            if let other = units[busName]?[unit] {
                report(source, "\(at).unit_id", "leaf \(l.device_id): unit_id \(unit) on bus \(busName) is already leaf \(other)")
                continue
            }
            units[busName, default: [:]][unit] = l.device_id
            var device = ModbusDeviceConfiguration(leaf: l.device_id, unit: unit, profile: profile)
            if let ms = l.poll_ms {
                if ms >= 10 { device.pollMilliseconds = Int64(ms) } else { report(source, "\(at).poll_ms", "leaf \(l.device_id): poll_ms must be at least 10") }
            }
            if let s = l.full_report_seconds {
                if s >= 1 { device.fullReportMilliseconds = Int64(s) * 1000 } else { report(source, "\(at).full_report_seconds", "leaf \(l.device_id): full_report_seconds must be at least 1") }
            }
            if let v = l.response_timeout_ms {
                if (1...5000).contains(v) { device.responseTimeoutMilliseconds = v } else { report(source, "\(at).response_timeout_ms", "leaf \(l.device_id): response_timeout_ms must be 1 to 5000") }
            }
            if let v = l.retries {
                if (0...10).contains(v) { device.retries = v } else { report(source, "\(at).retries", "leaf \(l.device_id): retries must be 0 to 10") }
            }
            bus.configuration.devices.append(device)
            buses[busName] = bus
        }
        return order.compactMap { buses[$0]?.configuration }.filter { !$0.devices.isEmpty }
    }

    private mutating func modbusBus(_ b: ModbusBusSection, source: ConfigSource, at: String) -> ModbusBusConfiguration? {
        let before = problems.count
        func bad(_ key: String, _ message: String) { report(source, key.isEmpty ? at : "\(at).\(key)", "modbus_bus \(b.name): \(message)") }
        let endpoint: ModbusEndpoint
        switch (b.tcp, b.device) {
        case (let tcp?, nil):
            guard let colon = tcp.lastIndex(of: ":"), let port = Int(tcp[tcp.index(after: colon)...]), (1...65535).contains(port) else {
                bad("tcp", "tcp = \"\(tcp)\": use host:port, e.g. \"192.168.1.20:502\" or \"[fd00::5]:502\"")
                return nil
            }
            var host = String(tcp[..<colon])
            if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            endpoint = .tcp(host: host, port: port)
        case (nil, let path?):
            var line = RTULine(path: path)
            if let v = b.baud { if v > 0 { line.baud = v } else { bad("baud", "baud must be positive") } }
            if let v = b.parity { if let p = RTULine.Parity(rawValue: v) { line.parity = p } else { bad("parity", "parity \(v): use none, even or odd") } }
            if let v = b.data_bits { if (7...8).contains(v) { line.dataBits = v } else { bad("data_bits", "data_bits must be 7 or 8") } }
            if let v = b.stop_bits { if v == 1 || v == 2 { line.stopBits = v } else { bad("stop_bits", "stop_bits must be 1 or 2") } }
            line.rs485 = b.rs485 ?? false
            endpoint = .rtu(line)
        default:
            bad("", "set tcp = \"host:port\" (Modbus TCP) or device = \"/dev/ttyUSB0\" (Modbus RTU), exactly one")
            return nil
        }
        if b.tcp != nil, b.baud != nil || b.parity != nil || b.rs485 != nil { bad("tcp", "baud, parity and rs485 apply to serial buses (device = …), not tcp") }
        var c = ModbusBusConfiguration(name: b.name, endpoint: endpoint, devices: [])
        // Capped: a transaction blocks the bus thread, and the watchdog wants it back within [daemon] stall_seconds.
        if let v = b.response_timeout_ms { if (1...5000).contains(v) { c.responseTimeoutMilliseconds = v } else { bad("response_timeout_ms", "response_timeout_ms must be 1 to 5000") } }
        if let v = b.byte_timeout_ms { if (1...1000).contains(v) { c.byteTimeoutMilliseconds = v } else { bad("byte_timeout_ms", "byte_timeout_ms must be 1 to 1000") } }
        if let v = b.turnaround_ms?.value { if v >= 0 { c.turnaroundMilliseconds = v } else { bad("turnaround_ms", "turnaround_ms cannot be negative") } }
        if let v = b.retries { if (0...10).contains(v) { c.retries = v } else { bad("retries", "retries must be 0 to 10") } }
        let low = Int64(b.backoff_ms ?? 1000), high = Int64(b.backoff_max_ms ?? max(60_000, b.backoff_ms ?? 0))
        if low >= 1 && high >= low { c.backoffMilliseconds = low...high } else { bad("backoff_ms", "backoff_ms must be at least 1 and backoff_max_ms at least backoff_ms") }
        if let v = b.max_gap { if (0...124).contains(v) { c.maxGap = v } else { bad("max_gap", "max_gap must be 0 to 124") } }
        return problems.count == before ? c : nil
    }
}

