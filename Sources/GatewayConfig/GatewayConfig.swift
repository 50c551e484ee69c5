import FieldgateCore
import FrameCodecs
import SerialAdapter
import Spool
import TOMLKit
import UDPAdapter
import Uplink

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// `/etc/fieldgate/fieldgate.toml` as a file (ARCHITECTURE.md "Configuration"). Keys are snake_case. A first cut:
/// one file, leaves inline as `[[leaf]]`; secrets inline or in key files (`key_file`, mode 0600 recommended).
public struct GatewayConfigFile: Decodable, Sendable {
    public struct Hub: Decodable, Sendable {
        public var host: String
        public var address: String?
        public var port: Int?
        public var ca_file: String?
        /// Tests only: no TLS.
        public var insecure_plain_amqp: Bool?
        public var attaches_per_second: Double?
        public var token_ttl_seconds: Int64?
    }
    public struct Gateway: Decodable, Sendable {
        public var device_id: String
        public var key: String?
        public var key_file: String?
        public var reboot_command: [String]?
        public var restart_command: [String]?
    }
    public struct SpoolSection: Decodable, Sendable {
        public var directory: String?
        public var cap_mb: Int?
        /// `always` or `interval-<ms>` (e.g. `interval-100`).
        public var sync: String?
        public var full_policy: String?
        public var ttl_hours: Int?
    }
    public struct UDP: Decodable, Sendable {
        public var bind: String?
        public var port: Int
        public var max_datagram_bytes: Int?
        public var allowed_sources: [String]?
    }
    public struct Leaf: Decodable, Sendable {
        public var device_id: String
        public var key: String?
        public var key_file: String?
        /// `udp` (Modbus and serial are still to come).
        public var adapter: String
        public var allowed_sources: [String]?
        public var mapped_source: String?
        public var hmac_key: String?
        public var command_address: String?
    }

    public var hub: Hub
    public var gateway: Gateway
    public var spool: SpoolSection?
    public var udp: UDP?
    public var serial_port: [SerialPortSection]?
    public var leaf: [Leaf]?

    public struct SerialPortSection: Decodable, Sendable {
        public var path: String
        public var baud: Int?
        public var parity: String?
        public var data_bits: Int?
        public var stop_bits: Int?
        public var flow_control: String?
        /// `lines` | `fixed:<n>` | `length:<1|2|4>` | `markers:<start hex>,<end hex>[,<escape hex>]`
        public var framing: String?
        /// `json` | `csv:<field,…>` | `kv` | `regex:<pattern>` | `raw`
        public var format: String?
        public var id_field: String?
        public var field_map: [String: String]?
        public var leaf: String?
        public var leaves: [String]?
        public var reply_pattern: String?
    }
}

/// A configuration error: `file[:line[:column]]: what and how to fix` (ARCHITECTURE.md contract 6). The daemon
/// exits 78 (EX_CONFIG) with it.
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    public var description: String
    init(_ d: String) { description = d }
    public var isRetriable: Bool { false }
}

/// Everything the daemon needs, mapped onto each module's own configuration.
public struct GatewaySettings: Sendable {
    public var uplink: UplinkConfiguration
    public var spool: SpoolConfiguration
    public var gatewayLeaf: LeafConfiguration
    public var gateway: GatewayConfigFile.Gateway
    public var leaves: [LeafConfiguration]
    public var udp: UDPAdapterConfiguration?
    public var serialPorts: [SerialPortConfiguration]

    public static func load(path: String) throws(ConfigError) -> GatewaySettings {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError("\(path): cannot read the configuration file (does it exist, and may fieldgate read it?)")
        }
        let file: GatewayConfigFile
        do {
            let table = try TOMLTable(string: String(decoding: data, as: UTF8.self))
            file = try TOMLDecoder().decode(GatewayConfigFile.self, from: table)
        } catch let e as TOMLParseError {
            throw ConfigError("\(path):\(e.source.begin.line):\(e.source.begin.column): \(e.description)")
        } catch let e as DecodingError {
            throw ConfigError("\(path): \(describe(e))")
        } catch {
            throw ConfigError("\(path): \(error)")
        }
        return try map(file, path: path)
    }

    private static func describe(_ e: DecodingError) -> String {
        func path(_ c: [any CodingKey]) -> String { c.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".") }
        switch e {
        case .keyNotFound(let key, let ctx):
            let full = ctx.codingPath.last?.stringValue == key.stringValue ? ctx.codingPath : ctx.codingPath + [key]
            return "\(path(full)): required, add it"
        case .typeMismatch(let type, let ctx): return "\(path(ctx.codingPath)): must be \(type)"
        case .valueNotFound(let type, let ctx): return "\(path(ctx.codingPath)): must be \(type)"
        case .dataCorrupted(let ctx): return "\(path(ctx.codingPath)): \(ctx.debugDescription)"
        @unknown default: return "\(e)"
        }
    }

    private static func key(inline: String?, file: String?, what: String, path: String) throws(ConfigError) -> String {
        if let inline, !inline.isEmpty { return inline }
        if let file {
            guard let d = FileManager.default.contents(atPath: file) else { throw ConfigError("\(path): \(what).key_file \(file) cannot be read") }
            return String(decoding: d, as: UTF8.self).split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
        }
        throw ConfigError("\(path): \(what) needs key or key_file (the device's primary key, base64)")
    }

    static func map(_ f: GatewayConfigFile, path: String) throws(ConfigError) -> GatewaySettings {
        var uplink = UplinkConfiguration(hostName: f.hub.host)
        uplink.address = f.hub.address
        uplink.port = f.hub.port ?? 5671
        uplink.transport = f.hub.insecure_plain_amqp == true ? .insecurePlainAMQP : .tls(.init(caFile: f.hub.ca_file))
        if let a = f.hub.attaches_per_second { uplink.attachesPerSecond = a > 0 ? a : nil }
        if let t = f.hub.token_ttl_seconds {
            guard t >= 60 else { throw ConfigError("\(path): hub.token_ttl_seconds must be at least 60") }
            uplink.tokenTTLSeconds = t
        }
        var spool = SpoolConfiguration(directory: f.spool?.directory ?? "/var/lib/fieldgate/spool")
        if let mb = f.spool?.cap_mb {
            guard mb >= 1 else { throw ConfigError("\(path): spool.cap_mb must be at least 1") }
            spool.capBytes = mb * 1024 * 1024
            spool.segmentBytes = min(spool.segmentBytes, max(64 * 1024, spool.capBytes / 8))
        }
        switch f.spool?.sync ?? "always" {
        case "always": spool.sync = .always
        case let s where s.hasPrefix("interval-"):
            guard let ms = Int(s.dropFirst(9)), ms > 0 else { throw ConfigError("\(path): spool.sync \(s): write interval-<milliseconds>, e.g. interval-100") }
            spool.sync = .interval(milliseconds: ms)
        case let s: throw ConfigError("\(path): spool.sync \(s): use always or interval-<milliseconds>")
        }
        switch f.spool?.full_policy ?? "drop-oldest" {
        case "drop-oldest": spool.fullPolicy = .dropOldest
        case "reject-new": spool.fullPolicy = .rejectNew
        case let s: throw ConfigError("\(path): spool.full_policy \(s): use drop-oldest or reject-new")
        }
        if let h = f.spool?.ttl_hours { spool.ttlMilliseconds = Int64(h) * 3_600_000 }

        let gatewayKey = try key(inline: f.gateway.key, file: f.gateway.key_file, what: "gateway", path: path)
        let gatewayLeaf = LeafConfiguration(deviceID: f.gateway.device_id, credential: .symmetricKey(primary: gatewayKey, secondary: nil),
                                            capabilities: [.methods, .twin])
        var leaves: [LeafConfiguration] = []
        var udpLeaves: [UDPLeaf] = []
        var ids: Set<String> = [f.gateway.device_id]
        for (i, l) in (f.leaf ?? []).enumerated() {
            let what = "leaf[\(i)] (\(l.device_id))"
            guard ids.insert(l.device_id).inserted else { throw ConfigError("\(path): \(what): device_id is used twice") }
            let k = try key(inline: l.key, file: l.key_file, what: what, path: path)
            leaves.append(LeafConfiguration(deviceID: l.device_id, credential: .symmetricKey(primary: k, secondary: nil)))
            switch l.adapter {
            case "udp":
                udpLeaves.append(UDPLeaf(deviceID: l.device_id, allowedSources: l.allowed_sources ?? [], mappedSource: l.mapped_source,
                                         hmacKey: l.hmac_key.map { Array($0.utf8) }, commandAddress: l.command_address))
            case "serial":
                break  // carried by a [[serial_port]] that names it
            default:
                throw ConfigError("\(path): \(what): adapter \(l.adapter) is not available (udp and serial are; modbus is still to come)")
            }
        }
        var udp: UDPAdapterConfiguration?
        if !udpLeaves.isEmpty {
            guard let u = f.udp else { throw ConfigError("\(path): udp leaves need a [udp] section with a port") }
            var c = UDPAdapterConfiguration(port: u.port, leaves: udpLeaves)
            c.bindAddress = u.bind ?? "::"
            if let m = u.max_datagram_bytes { c.maxDatagramBytes = m }
            c.allowedSources = u.allowed_sources ?? []
            udp = c
        }
        let serialLeaves = Set((f.leaf ?? []).filter { $0.adapter == "serial" }.map(\.device_id))
        var covered: Set<String> = []
        var ports: [SerialPortConfiguration] = []
        for (i, p) in (f.serial_port ?? []).enumerated() {
            let c = try serialPort(p, what: "serial_port[\(i)] (\(p.path))", path: path)
            for leaf in c.allLeaves {
                guard serialLeaves.contains(leaf) else {
                    throw ConfigError("\(path): serial_port[\(i)] (\(p.path)): leaf \(leaf) needs a [[leaf]] entry with adapter = \"serial\"")
                }
                covered.insert(leaf)
            }
            ports.append(c)
        }
        if let orphan = serialLeaves.subtracting(covered).sorted().first {
            throw ConfigError("\(path): leaf \(orphan) has adapter = \"serial\" but no [[serial_port]] names it (leaf = or leaves =)")
        }
        return GatewaySettings(uplink: uplink, spool: spool, gatewayLeaf: gatewayLeaf, gateway: f.gateway, leaves: leaves, udp: udp, serialPorts: ports)
    }

    private static func serialPort(_ p: GatewayConfigFile.SerialPortSection, what: String, path: String) throws(ConfigError) -> SerialPortConfiguration {
        var c = SerialPortConfiguration(path: p.path)
        if let b = p.baud { c.baud = b }
        if let v = p.parity { guard let x = SerialPortConfiguration.Parity(rawValue: v) else { throw ConfigError("\(path): \(what): parity \(v): use none, even or odd") }; c.parity = x }
        if let v = p.flow_control { guard let x = SerialPortConfiguration.FlowControl(rawValue: v) else { throw ConfigError("\(path): \(what): flow_control \(v): use none, rtscts or xonxoff") }; c.flowControl = x }
        if let v = p.data_bits { guard (5...8).contains(v) else { throw ConfigError("\(path): \(what): data_bits must be 5 to 8") }; c.dataBits = v }
        if let v = p.stop_bits { guard v == 1 || v == 2 else { throw ConfigError("\(path): \(what): stop_bits must be 1 or 2") }; c.stopBits = v }
        let framing = p.framing ?? "lines"
        func hex(_ s: Substring) -> UInt8? { UInt8(s.hasPrefix("0x") ? s.dropFirst(2) : s, radix: 16) }
        switch framing.split(separator: ":", maxSplits: 1).map(String.init) {
        case ["lines"]: c.framing = .lines()
        case let x where x.count == 2 && x[0] == "fixed" && Int(x[1]).map({ $0 > 0 }) == true: c.framing = .fixed(length: Int(x[1])!)
        case let x where x.count == 2 && x[0] == "length" && ["1", "2", "4"].contains(x[1]): c.framing = .lengthPrefixed(prefixBytes: Int(x[1])!)
        case let x where x.count == 2 && x[0] == "markers":
            let bytes = x[1].split(separator: ",").map(hex)
            guard (2...3).contains(bytes.count), bytes.allSatisfy({ $0 != nil }) else {
                throw ConfigError("\(path): \(what): framing \(framing): write markers:<start>,<end>[,<escape>] in hex, e.g. markers:02,03,10")
            }
            c.framing = .markers(start: bytes[0]!, end: bytes[1]!, escape: bytes.count == 3 ? bytes[2] : nil)
        default:
            throw ConfigError("\(path): \(what): framing \(framing): use lines, fixed:<n>, length:<1|2|4> or markers:<start>,<end>[,<escape>]")
        }
        let format = p.format ?? "json"
        switch format.split(separator: ":", maxSplits: 1).map(String.init) {
        case ["json"]: c.format = .json(idField: p.id_field)
        case ["kv"]: c.format = .keyValue(fieldMap: p.field_map ?? [:], onlyMapped: p.field_map != nil, idField: p.id_field)
        case ["raw"]: c.format = .raw
        case let x where x.count == 2 && x[0] == "csv": c.format = .csv(fields: x[1].split(separator: ",").map(String.init), idField: p.id_field)
        case let x where x.count == 2 && x[0] == "regex":
            do { _ = try FrameDecoder(.regex(pattern: x[1], idField: nil)) } catch { throw ConfigError("\(path): \(what): \(error)") }
            c.format = .regex(pattern: x[1], idField: p.id_field)
        default:
            throw ConfigError("\(path): \(what): format \(format): use json, csv:<fields>, kv, regex:<pattern> or raw")
        }
        c.leaf = p.leaf
        c.leaves = p.leaves ?? []
        guard c.leaf != nil || !c.leaves.isEmpty else { throw ConfigError("\(path): \(what): name its leaf (leaf = \"id\") or the leaves its id field may name (leaves = [...])") }
        if c.leaf == nil && p.id_field == nil && format != "raw" {
            throw ConfigError("\(path): \(what): with several leaves the frames must name theirs: set id_field")
        }
        c.replyPattern = p.reply_pattern
        if let rp = p.reply_pattern, (try? Regex(rp)) == nil { throw ConfigError("\(path): \(what): reply_pattern \(rp) is not a valid regular expression") }
        return c
    }
}
