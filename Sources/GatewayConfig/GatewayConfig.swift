import FieldgateCore
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
    public var leaf: [Leaf]?
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
            default:
                throw ConfigError("\(path): \(what): adapter \(l.adapter) is not available (udp is; modbus and serial are still to come)")
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
        return GatewaySettings(uplink: uplink, spool: spool, gatewayLeaf: gatewayLeaf, gateway: f.gateway, leaves: leaves, udp: udp)
    }
}
