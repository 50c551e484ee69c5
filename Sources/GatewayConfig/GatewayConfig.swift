import FieldgateCore
import FrameCodecs
import HubTunnel
import IoTHub
import ModbusAdapter
import Provisioning
import SerialAdapter
import SoftwareUpdate
import Spool
import TOMLKit
import UDPAdapter
import Uplink

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#endif

/// `/etc/fieldgate/fieldgate.toml` as a file (docs/contracts.md §7; etc/fieldgate/fieldgate.toml documents every
/// key). Leaves are `[[leaf]]` tables here or in `devices.d/*.toml`; keys live in the secrets file (`Secrets`).
public struct GatewayConfigFile: Decodable, Sendable {
    public struct Hub: Decodable, Sendable {
        /// Required unless `[provisioning]` assigns the hubs.
        public var host: String?
        public var address: String?
        /// Where hubs are reached by name: host → `address` or `address:port`.
        public var addresses: [String: String]?
        public var port: Int?
        public var ca_file: String?
        /// Tests only: no TLS.
        public var insecure_plain_amqp: Bool?
        /// An integer or a float in the file (TOMLKit decodes `20` only as an integer).
        var attaches_per_second: TOMLNumber?
        /// Leaves authenticating or attaching at once on one connection.
        public var attaches_at_once: Int?
        public var token_ttl_seconds: Int64?
        /// A direct method not answered by its adapter within this is answered 504 (below the hub's 30 s).
        public var method_deadline_seconds: Int?
        /// `amqps`, `amqps-websocket` or `auto` (default).
        public var transport: String?
        /// Further hubs to move to when `host` cannot be reached.
        public var fallback_hosts: [String]?
        /// Failed connects on one route before the next (WebSocket fallback, next host).
        public var fallback_after_failures: Int?
        /// `http://[user@]host:port`, or `none` to ignore the environment's https_proxy.
        public var proxy: String?
        public var websocket_port: Int?
        public var websocket_path: String?
        /// 0: no WebSocket pings.
        public var websocket_ping_seconds: Int?
    }
    public struct Gateway: Decodable, Sendable {
        public var device_id: String
        /// `key` (default: the device's own key under [keys]) or `policy:<name>` (a hub policy under [policies]).
        public var credential: String?
        public var key_ref: String?
        /// `credential = "x509"`: the client certificate (PEM) and its key (PEM; a relative name is looked up in
        /// systemd's $CREDENTIALS_DIRECTORY).
        public var certificate_file: String?
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
        /// `udp`, `serial` or `modbus`.
        public var adapter: String
        /// `key` (default: the device's own key), `policy:<name>[:hub]` or `group:<name>` (secrets file).
        public var credential: String?
        /// The name of the key in the secrets file's [keys]; default: the device id.
        public var key_ref: String?
        /// `credential = "x509"`: the client certificate and its key, as for the gateway.
        public var certificate_file: String?
        public var key_file: String?
        /// What the cloud may do besides receiving telemetry: any of `c2d`, `methods`, `twin` (default: all three).
        /// Each costs AMQP links (C2D one, methods and twin two each); a telemetry-only sensor needs `[]`.
        public var cloud: [String]?
        /// This leaf's heartbeat interval (0: none); absent: `[uplink] heartbeat_seconds`.
        public var heartbeat_seconds: Int?
        public var allowed_sources: [String]?
        public var mapped_source: String?
        /// UDP, with `mapped_source`: how its datagrams decode (as a serial port's `format`), and `field_map` for kv.
        public var format: String?
        public var field_map: [String: String]?
        /// UDP: datagrams must be signed with the secrets file's [hmac] key for this device.
        public var hmac: Bool?
        public var command_address: String?
        /// Modbus: the `[[modbus_bus]]` it is on, its unit id there, its profiles.d profile, overrides.
        public var bus: String?
        public var unit_id: Int?
        public var profile: String?
        public var poll_ms: Int?
        public var full_report_seconds: Int?
        /// Modbus: this unit's own response timeout and retries (default: the bus's).
        public var response_timeout_ms: Int?
        public var retries: Int?
    }
    public struct Secrets: Decodable, Sendable { public var file: String? }
    public struct ProvisioningSection: Decodable, Sendable {
        public var id_scope: String
        /// `host` or `host:port`; default: global.azure-devices-provisioning.net.
        public var global_endpoint: String?
        /// The credential of the gateway and of every leaf that names none: `key` or `group:<name>`.
        public var credential: String?
        var registrations_per_second: TOMLNumber?
        public var reprovision_on_start: Bool?
        /// Sent with each registration as its JSON payload (string values).
        public var payload: [String: String]?
        /// CAs of the provisioning endpoint; default: [hub] ca_file, else the system's.
        public var ca_file: String?
    }
    public struct Daemon: Decodable, Sendable { public var stall_seconds: Int? }
    public struct UplinkSection: Decodable, Sendable {
        /// Gather a leaf's queued JSON readings into JSON-array messages of up to this many bytes; 0 or absent: off.
        public var coalesce_bytes: Int?
        /// Telemetry messages awaiting the hub's outcome, across all leaves. Default: 1000.
        public var max_in_flight: Int?
        /// With the hub's daily quota spent, probe the hub this often before its 00:00 UTC reset; 0 or absent: at the
        /// reset only.
        public var quota_probe_minutes: Int?
        /// Every identity sends an empty `heartbeat=true` message this often; 0 or absent: off.
        public var heartbeat_seconds: Int?
    }
    public struct Upload: Decodable, Sendable {
        /// The gateway's `logs` method: journal excerpts uploaded as files through IoT Hub. Default: off.
        public var logs: Bool?
        /// An excerpt keeps its newest entries within this many MiB (before compression). Default: 4.
        public var logs_max_mb: Int?
        /// A leaf with at least this many spooled readings has its old ones sent as files; 0 or absent: off.
        public var offload_records: Int?
        /// Only readings at least this old go to files. Default: 24.
        public var offload_after_hours: Int?
    }
    public struct Update: Decodable, Sendable {
        /// Software update of fieldgate through the gateway twin's desired `firmware`. Default: off.
        public var enabled: Bool?
        /// The helper installs an older version than the running one on request. Default: false.
        public var allow_downgrade: Bool?
        /// Packages must carry a detached OpenPGP signature by a key in this keyring.
        public var keyring: String?
        public var confirm_seconds: Int?
        public var max_download_mb: Int?
        /// CAs for package downloads; absent: the system's.
        public var ca_file: String?
        public var factory_reset: Bool?
        public var factory_reset_clears: [String]?
    }
    public struct Control: Decodable, Sendable {
        public var socket: String?
        public var allow_debug: Bool?
        /// Prometheus metrics on this loopback address (`127.0.0.1:9464`); off when absent.
        public var metrics: String?
    }

    public var hub: Hub
    public var gateway: Gateway
    public var spool: SpoolSection?
    public var uplink: UplinkSection?
    public var upload: Upload?
    public var update: Update?
    public var provisioning: ProvisioningSection?
    public var udp: UDP?
    // An entry that does not decode is nil in its place (its problems are already reported, and the others' positions
    // still name their lines).
    var serial_port: [Tolerant<SerialPortSection>]?
    var modbus_bus: [Tolerant<ModbusBusSection>]?
    var leaf: [Tolerant<Leaf>]?
    public var secrets: Secrets?
    public var daemon: Daemon?
    public var control: Control?

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

/// A `devices.d/*.toml` file: leaves, and the serial ports and Modbus buses they hang on.
struct DevicesFile: Decodable {
    var leaf: [Tolerant<GatewayConfigFile.Leaf>]?
    var serial_port: [Tolerant<GatewayConfigFile.SerialPortSection>]?
    var modbus_bus: [Tolerant<ModbusBusSection>]?
}

/// An array entry that may fail to decode without failing the rest.
struct Tolerant<T: Decodable & Sendable>: Decodable, Sendable {
    var value: T?
    init(from decoder: any Decoder) throws { value = try? T(from: decoder) }
}

extension Optional {
    /// `[[x]]` entries that decoded, with their positions in the file.
    func entries<T>(in source: ConfigSource) -> [(ConfigSource, Int, T)] where Wrapped == [Tolerant<T>] {
        (self ?? []).enumerated().compactMap { i, e in e.value.map { (source, i, $0) } }
    }
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
    public var modbusBuses: [ModbusBusConfiguration]
    /// The control socket's path; `allowDebug` enables `fieldgatectl debug` (tests, diagnosis).
    public var controlSocket: String
    public var allowDebug: Bool
    /// Prometheus metrics on this loopback `host:port`; nil: off.
    public var metricsAddress: String?
    /// The `logs` method's size bound in bytes; nil: the method is off.
    public var logUploadMaxBytes: Int?
    /// Software update, factory reset and the maintenance window (`[update]`).
    public var update: UpdateConfiguration
    /// CAs for package downloads; nil: the system's.
    public var updateCAFile: String?
    /// Hubs assigned through the Device Provisioning Service (`[provisioning]`); nil: the configured hub only.
    public var provisioning: ProvisioningConfiguration?
    /// A component without progress for this long stops the watchdog pings (capped below WatchdogSec).
    public var stallMilliseconds: Int64
    /// The files this configuration was read from.
    public var files: [String]

    /// How an identity registers with DPS (`[provisioning]`): its own key, or the key its group derives for it; nil
    /// for a hub policy, which DPS cannot provision.
    public static func provisioningIdentity(_ leaf: LeafConfiguration) -> ProvisioningIdentity? { Mapper.provisioningIdentity(leaf) }

    /// Reads `path` and the `devices.d/*.toml` beside it, and the secrets; reports every problem of every file at
    /// once: a file with problems is still read as far as it goes (what is wrong is left out), so one run shows all.
    /// `credentialsDirectory`: systemd's `$CREDENTIALS_DIRECTORY` (default: from the environment).
    public static func load(path: String, credentialsDirectory: String? = ProcessInfo.processInfo.environment["CREDENTIALS_DIRECTORY"],
                            secretsGroup: String = Secrets.serviceGroup) throws(ConfigError) -> GatewaySettings {
        var problems: [ConfigProblem] = []
        var mainRead = true
        var main = ConfigSource.empty(path: path)
        // Every document parsed here, and the top of every sanitized copy, is freed when the load is over (the
        // tables a copy nests are copied into it, and their originals stay: a few kB for a file with problems).
        var parsed: [TOMLTable] = []
        defer { ConfigSource.free(parsed) }
        do throws(ConfigError) { main = try ConfigSource.read(path) } catch {
            problems += error.problems
            mainRead = false
        }
        parsed.append(main.table)
        let mainProblems = ConfigSchema.main.check(main.table, path: "", in: main).filter { _ in mainRead }
        problems += mainProblems
        let directory = directoryOf(path)
        let devicesDir = (directory.isEmpty ? "." : directory) + "/devices.d"
        // A file without problems decodes as parsed; the sanitized copy (a few kB per leaf while the load runs) is
        // made only for one with problems.
        var deviceSources: [(source: ConfigSource, clean: Bool)] = []
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: devicesDir)) ?? []).filter { $0.hasSuffix(".toml") }.sorted()
        for name in names {
            do throws(ConfigError) {
                let source = try ConfigSource.read(devicesDir + "/" + name)
                parsed.append(source.table)
                let found = ConfigSchema.devices.check(source.table, path: "", in: source)
                problems += found
                deviceSources.append((source, found.isEmpty))
            } catch { problems += error.problems }
        }
        var profileLoader = ProfileLoader()
        profileLoader.load(directory: (directory.isEmpty ? "." : directory) + "/profiles.d")
        problems += profileLoader.problems
        // Decode what the schema accepts; a missing [hub] or [gateway] (reported above) gets a stand-in so the leaves
        // are still checked.
        let mainTable = mainRead && mainProblems.isEmpty ? main.table : ConfigSchema.main.sanitized(main.table)
        parsed.append(mainTable)
        let hasGateway = mainTable["gateway"] != nil
        if mainTable["hub"] == nil { mainTable["hub"] = TOMLTable() }
        if !hasGateway { mainTable["gateway"] = TOMLTable(["device_id": ""]) }
        let file: GatewayConfigFile
        var devices: [(ConfigSource, DevicesFile)] = []
        do {
            file = try TOMLDecoder().decode(GatewayConfigFile.self, from: mainTable)
            for (source, clean) in deviceSources {
                let table = clean ? source.table : ConfigSchema.devices.sanitized(source.table)
                if !clean { parsed.append(table) }
                devices.append((source, try TOMLDecoder().decode(DevicesFile.self, from: table)))
            }
        } catch {
            throw ConfigError(problems + [ConfigProblem(file: path, line: nil, message: "\(error)")])  // the sanitizer should have prevented it
        }
        let secretsFile = file.secrets?.file ?? (directory.isEmpty ? "." : directory) + "/secrets.toml"
        var secrets: Secrets?
        do throws(ConfigError) { secrets = try Secrets.load(file: secretsFile, credentialsDirectory: credentialsDirectory, group: secretsGroup) } catch {
            problems += error.problems
        }
        var mapper = Mapper(file: file, main: main, devices: devices, secrets: secrets ?? Secrets(origin: secretsFile), profiles: profileLoader.profiles)
        // Without a readable secrets file every key would be reported missing; without a readable main file, so would
        // every cross-reference to it.
        mapper.checkKeys = secrets != nil
        mapper.checkMain = mainRead && hasGateway
        mapper.credentialsDirectory = credentialsDirectory
        let settings = mapper.map()
        problems += mapper.problems
        guard problems.isEmpty, let settings else { throw ConfigError(problems) }
        return settings
    }
}

/// Maps the decoded files onto the modules' configurations, collecting problems with their lines.
struct Mapper {
    let file: GatewayConfigFile
    let main: ConfigSource
    let devices: [(ConfigSource, DevicesFile)]
    let secrets: Secrets
    let profiles: [String: (source: ConfigSource, profile: ModbusProfile)]
    var problems: [ConfigProblem] = []
    /// Report keys missing from the secrets (off when the secrets file itself could not be read).
    var checkKeys = true
    /// Report what depends on the main file (off when it could not be read).
    var checkMain = true
    /// systemd's $CREDENTIALS_DIRECTORY, where key files named without a path are.
    var credentialsDirectory: String?

    init(file: GatewayConfigFile, main: ConfigSource, devices: [(ConfigSource, DevicesFile)], secrets: Secrets,
         profiles: [String: (source: ConfigSource, profile: ModbusProfile)] = [:]) {
        self.file = file
        self.main = main
        self.devices = devices
        self.secrets = secrets
        self.profiles = profiles
    }

    mutating func report(_ source: ConfigSource, _ keyPath: String, _ message: String) {
        problems.append(source.problem(keyPath, message))
    }

    mutating func map() -> GatewaySettings? {
        let f = file
        var uplink = UplinkConfiguration(hostName: f.hub.host ?? "")
        uplink.address = f.hub.address
        if checkMain && (f.hub.host ?? "").isEmpty && f.provisioning == nil {
            report(main, "hub", "[hub] needs host = \"<name>.azure-devices.net\" (or a [provisioning] section, so DPS assigns the hub)")
        }
        for (host, address) in f.hub.addresses ?? [:] {
            if host.isEmpty || address.isEmpty || host.contains(where: { $0 == "/" || $0 == ":" || $0 == " " }) {
                report(main, "hub.addresses", "hub.addresses: \"\(host)\" = \"\(address)\" must map a host name to an address or address:port")
            }
        }
        uplink.hostAddresses = f.hub.addresses ?? [:]
        uplink.port = f.hub.port ?? 5671
        uplink.transport = f.hub.insecure_plain_amqp == true ? .insecurePlainAMQP : .tls(.init(caFile: f.hub.ca_file))
        if let a = f.hub.attaches_per_second?.value { uplink.attachesPerSecond = a > 0 ? a : nil }
        if let n = f.hub.attaches_at_once {
            if UplinkConfiguration.attachingPerConnectionRange.contains(n) { uplink.attachingPerConnection = n } else {
                report(main, "hub.attaches_at_once", "hub.attaches_at_once must be \(UplinkConfiguration.attachingPerConnectionRange.lowerBound) to \(UplinkConfiguration.attachingPerConnectionRange.upperBound)")
            }
        }
        if let t = f.hub.token_ttl_seconds {
            if t >= 60 { uplink.tokenTTLSeconds = t } else { report(main, "hub.token_ttl_seconds", "hub.token_ttl_seconds must be at least 60") }
        }
        if let d = f.hub.method_deadline_seconds {
            if (1...29).contains(d) { uplink.methodDeadlineMilliseconds = Int64(d) * 1000 } else {
                report(main, "hub.method_deadline_seconds", "hub.method_deadline_seconds must be 1 to 29 (the hub gives up at 30 s by default)")
            }
        }
        if let port = f.hub.port, !(1...65535).contains(port) { report(main, "hub.port", "hub.port must be 1 to 65535 (5671 for AMQPS)") }
        mapReach(f.hub, into: &uplink)
        if let c = f.uplink?.coalesce_bytes, c != 0 {
            if (UplinkConfiguration.coalesceRange).contains(c) { uplink.coalesceTargetBytes = c } else {
                report(main, "uplink.coalesce_bytes", "uplink.coalesce_bytes must be 0 (off) or \(UplinkConfiguration.coalesceRange.lowerBound) to \(UplinkConfiguration.coalesceRange.upperBound); 4000 fits IoT Hub's 4 KB billing unit")
            }
        }
        if let n = f.uplink?.max_in_flight {
            if UplinkConfiguration.inFlightRange.contains(n) { uplink.maxInFlightTotal = n } else {
                report(main, "uplink.max_in_flight", "uplink.max_in_flight must be \(UplinkConfiguration.inFlightRange.lowerBound) to \(UplinkConfiguration.inFlightRange.upperBound); each costs ~2–3.5 kB of memory while the connection lasts")
            }
        }
        if let m = f.uplink?.quota_probe_minutes, m != 0 {
            if (1...1440).contains(m) { uplink.quotaProbeIntervalMilliseconds = Int64(m) * 60_000 } else {
                report(main, "uplink.quota_probe_minutes", "uplink.quota_probe_minutes must be 0 (probe at the 00:00 UTC reset only) or 1 to 1440")
            }
        }
        if let h = f.uplink?.heartbeat_seconds, h != 0 {
            if Self.heartbeatRange.contains(h) { uplink.heartbeatIntervalMilliseconds = Int64(h) * 1000 } else {
                report(main, "uplink.heartbeat_seconds", "uplink.heartbeat_seconds must be 0 (off) or \(Self.heartbeatRange.lowerBound) to \(Self.heartbeatRange.upperBound); each heartbeat is a message of the daily quota (hourly: 24 per identity a day)")
            }
        }
        var logUploadMaxBytes: Int?
        if f.upload?.logs == true {
            let mb = f.upload?.logs_max_mb ?? 4
            if (1...64).contains(mb) { logUploadMaxBytes = mb << 20 } else {
                report(main, "upload.logs_max_mb", "upload.logs_max_mb must be 1 to 64 (MiB of log text before compression)")
            }
        }
        let spool = spoolConfiguration(f.spool)
        let stateDirectory = spool.directory.lastIndex(of: "/").map { String(spool.directory[..<$0]) } ?? "."
        var update = UpdateConfiguration(directory: stateDirectory + "/update")
        if let u = f.update {
            update.enabled = u.enabled ?? false
            update.allowDowngrade = u.allow_downgrade ?? false
            if let k = u.keyring {
                if k.hasPrefix("/") { update.keyring = k } else { report(main, "update.keyring", "update.keyring must be an absolute path (a keyring root owns, e.g. /etc/fieldgate/update-keyring.gpg)") }
            }
            update.factoryReset = u.factory_reset ?? false
            if let c = u.confirm_seconds {
                if UpdateConfiguration.confirmRange.contains(c) { update.confirmSeconds = c } else {
                    report(main, "update.confirm_seconds", "update.confirm_seconds must be \(UpdateConfiguration.confirmRange.lowerBound) to \(UpdateConfiguration.confirmRange.upperBound) (how long a new version has to start and reach the hub before it is rolled back)")
                }
            }
            if let mb = u.max_download_mb {
                if (1...4096).contains(mb) { update.maxDownloadBytes = mb << 20 } else {
                    report(main, "update.max_download_mb", "update.max_download_mb must be 1 to 4096")
                }
            }
            if let clears = u.factory_reset_clears {
                var targets: Set<UpdateConfiguration.ResetTarget> = []
                for c in clears {
                    if let t = UpdateConfiguration.ResetTarget(rawValue: c) { targets.insert(t) } else {
                        report(main, "update.factory_reset_clears", "update.factory_reset_clears: \(c) is not one of spool, state, devices")
                    }
                }
                update.factoryResetClears = targets
            }
        }
        if let n = f.upload?.offload_records, n != 0 {
            let hours = f.upload?.offload_after_hours ?? 24
            if n < 1000 || n > 10_000_000 {
                report(main, "upload.offload_records", "upload.offload_records must be 0 (off) or 1000 to 10000000 (readings a leaf has spooled before its old ones go as files)")
            } else if !(0...8760).contains(hours) {
                report(main, "upload.offload_after_hours", "upload.offload_after_hours must be 0 to 8760")
            } else {
                // Beside the spool, on the same disk: /var/lib/fieldgate/spool → /var/lib/fieldgate/offload.
                let parent = spool.directory.lastIndex(of: "/").map { String(spool.directory[..<$0]) } ?? "."
                uplink.offload = BacklogOffloadPolicy(minRecords: n, olderThanMilliseconds: Int64(hours) * 3_600_000,
                                                      stagingDirectory: parent + "/offload")
            }
        }

        let gatewayKey = checkMain ? gatewayCredential(f.gateway) : nil
        let gatewayLeaf = LeafConfiguration(deviceID: f.gateway.device_id, credential: gatewayKey ?? .symmetricKey(primary: "", secondary: nil),
                                            capabilities: [.methods, .twin])
        if checkMain, !Self.isValidDeviceID(f.gateway.device_id) { report(main, "gateway.device_id", Self.deviceIDRule(f.gateway.device_id)) }

        var leaves: [LeafConfiguration] = []
        var udpLeaves: [UDPLeaf] = []
        var serialLeaves: [String: (ConfigSource, String)] = [:]
        var modbusLeaves: [(ConfigSource, String, GatewayConfigFile.Leaf)] = []
        // Where each device id was first seen; its file:line is worked out only for a duplicate.
        var seen: [String: (ConfigSource, String)] = [f.gateway.device_id: (main, "gateway.device_id")]
        let allLeaves = f.leaf.entries(in: main) + devices.flatMap { source, d in d.leaf.entries(in: source) }
        for (source, i, l) in allLeaves {
            let at = "leaf[\(i)]"
            guard Self.isValidDeviceID(l.device_id) else { report(source, "\(at).device_id", Self.deviceIDRule(l.device_id)); continue }
            if let (firstSource, firstKey) = seen[l.device_id] {
                let first = "\(firstSource.path):\(firstSource.line(firstKey) ?? 0)"
                report(source, "\(at).device_id", "device_id \(l.device_id) is used twice (first at \(first)); each leaf is its own IoT Hub identity")
                continue
            }
            seen[l.device_id] = (source, "\(at).device_id")
            // A problem with its key or cloud list does not stop the checks of its adapter settings (one run shows all).
            let credential = leafCredential(l, source: source, at: at)
            let capabilities = cloudCapabilities(l, source: source, at: at)
            var heartbeat: Int64?
            if let h = l.heartbeat_seconds {
                if h == 0 || Self.heartbeatRange.contains(h) { heartbeat = Int64(h) * 1000 } else {
                    report(source, "\(at).heartbeat_seconds", "leaf \(l.device_id): heartbeat_seconds must be 0 (none for this leaf) or \(Self.heartbeatRange.lowerBound) to \(Self.heartbeatRange.upperBound)")
                }
            }
            if let credential, let capabilities {
                leaves.append(LeafConfiguration(deviceID: l.device_id, credential: credential, capabilities: capabilities, heartbeatIntervalMilliseconds: heartbeat))
            }
            switch l.adapter {
            case "udp":
                var format: FrameFormat?
                if let text = l.format {
                    if l.mapped_source == nil {
                        report(source, "\(at).format", "leaf \(l.device_id): format applies to datagrams from a mapped_source; add mapped_source or remove format")
                    }
                    switch Self.frameFormat(text, idField: nil, fieldMap: l.field_map) {
                    case .success(let f): format = f
                    case .failure(let why): report(source, "\(at).format", "leaf \(l.device_id): \(why.message)")
                    }
                }
                var hmacKey: [UInt8]?
                if l.hmac == true {
                    if let k = secrets.hmac[l.device_id] { hmacKey = Array(k.utf8) } else if checkKeys {
                        report(source, "\(at).hmac", "leaf \(l.device_id): hmac = true but \(secrets.origin) has no [hmac] \(l.device_id) = \"…\"; add it")
                    }
                }
                udpLeaves.append(UDPLeaf(deviceID: l.device_id, allowedSources: l.allowed_sources ?? [], mappedSource: l.mapped_source,
                                         format: format, hmacKey: hmacKey, commandAddress: l.command_address))
            case "serial":
                serialLeaves[l.device_id] = (source, at)  // carried by a [[serial_port]] that names it
            case "modbus":
                modbusLeaves.append((source, at, l))
            default:
                report(source, "\(at).adapter", "leaf \(l.device_id): adapter \(l.adapter) is not available; use udp, serial or modbus")
            }
            if l.adapter != "modbus" {
                for (key, set) in [("bus", l.bus != nil), ("unit_id", l.unit_id != nil), ("profile", l.profile != nil), ("poll_ms", l.poll_ms != nil),
                                   ("full_report_seconds", l.full_report_seconds != nil), ("response_timeout_ms", l.response_timeout_ms != nil),
                                   ("retries", l.retries != nil)] where set {
                    report(source, "\(at).\(key)", "leaf \(l.device_id): \(key) applies to modbus leaves (this one has adapter = \"\(l.adapter)\")")
                }
            }
        }
        var udp: UDPAdapterConfiguration?
        if !udpLeaves.isEmpty {
            if let u = f.udp {
                var c = UDPAdapterConfiguration(port: u.port, leaves: udpLeaves)
                c.bindAddress = u.bind ?? "::"
                if let m = u.max_datagram_bytes { c.maxDatagramBytes = m }
                c.allowedSources = u.allowed_sources ?? []
                // What the adapter learns of its leaves lives with the spool (the gateway's state directory).
                c.stateFile = spool.directory + "/udp-\(u.port).state"
                if !(0...65535).contains(u.port) { report(main, "udp.port", "udp.port must be 0 to 65535") }
                udp = c
            } else if checkMain {
                report(main, "", "udp leaves need a [udp] section with a port (in \(main.path))")
            }
        }
        var covered: Set<String> = []
        var ports: [SerialPortConfiguration] = []
        let allPorts = f.serial_port.entries(in: main) + devices.flatMap { source, d in d.serial_port.entries(in: source) }
        for (source, i, p) in allPorts {
            let at = "serial_port[\(i)]"
            guard let c = serialPort(p, source: source, at: at) else { continue }
            for leaf in c.allLeaves {
                if serialLeaves[leaf] == nil {
                    report(source, at, "serial_port \(p.path): leaf \(leaf) needs a [[leaf]] entry with adapter = \"serial\"")
                }
                covered.insert(leaf)
            }
            ports.append(c)
        }
        for (leaf, (source, at)) in serialLeaves.sorted(by: { $0.key < $1.key }) where !covered.contains(leaf) {
            report(source, at, "leaf \(leaf) has adapter = \"serial\" but no [[serial_port]] names it (leaf = or leaves =)")
        }
        let busSections = f.modbus_bus.entries(in: main) + devices.flatMap { source, d in d.modbus_bus.entries(in: source) }
        let buses = modbusBuses(busSections, leaves: modbusLeaves)
        let provisioning = provisioningConfiguration(f, stateDirectory: stateDirectory, uplink: uplink,
                                                     identities: [(gatewayLeaf, main, "gateway.device_id")] + leaves.map { leaf in
                                                         let (source, key) = seen[leaf.deviceID] ?? (main, "")
                                                         return (leaf, source, key)
                                                     })
        guard problems.isEmpty else { return nil }
        return GatewaySettings(
            uplink: uplink, spool: spool, gatewayLeaf: gatewayLeaf, gateway: f.gateway, leaves: leaves, udp: udp, serialPorts: ports,
            modbusBuses: buses,
            controlSocket: f.control?.socket ?? "/run/fieldgate/control.sock", allowDebug: f.control?.allow_debug ?? false,
            metricsAddress: f.control?.metrics, logUploadMaxBytes: logUploadMaxBytes, update: update, updateCAFile: f.update?.ca_file,
            provisioning: provisioning,
            stallMilliseconds: Int64(max(2, f.daemon?.stall_seconds ?? 10)) * 1000,
            files: [main.path] + devices.map(\.0.path) + profiles.values.map(\.source.path).sorted())
    }

    /// `[provisioning]`: DPS's endpoint and id scope; the assignments are kept beside the spool. Identities that
    /// register must have device ids DPS takes as registration ids.
    private mutating func provisioningConfiguration(_ f: GatewayConfigFile, stateDirectory: String, uplink: UplinkConfiguration,
                                                    identities: [(LeafConfiguration, ConfigSource, String)]) -> ProvisioningConfiguration? {
        guard let p = f.provisioning else { return nil }
        var c = ProvisioningConfiguration(idScope: p.id_scope, storePath: stateDirectory + "/provisioning.json")
        if p.id_scope.isEmpty || !p.id_scope.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber) }) {
            report(main, "provisioning.id_scope", "provisioning.id_scope \"\(p.id_scope)\" must be the DPS instance's id scope (letters and digits, e.g. 0ne0012AB34), as the portal or `az iot dps show` gives it")
        }
        if let e = p.global_endpoint {
            let host = e.split(separator: ":", maxSplits: 1).first.map(String.init) ?? ""
            let port = e.split(separator: ":", maxSplits: 1).dropFirst().first.map { Int($0) }
            if host.isEmpty || e.contains("/") || e.contains(" ") || port.map({ $0.map { !(1...65535).contains($0) } ?? true }) == true {
                report(main, "provisioning.global_endpoint", "provisioning.global_endpoint must be a host name or host:port (no scheme or path), e.g. global.azure-devices-provisioning.net")
            } else { c.endpoint = e }
        }
        if let r = p.registrations_per_second?.value {
            if r > 0 && r <= 100 { c.registrationsPerSecond = r } else {
                report(main, "provisioning.registrations_per_second", "provisioning.registrations_per_second must be above 0 and at most 100")
            }
        }
        c.reprovisionOnStart = p.reprovision_on_start ?? false
        c.payload = p.payload.map { .object($0.mapValues { .string($0) }) }
        if case .tls(let tls) = uplink.transport {
            c.https.caFile = p.ca_file ?? tls.caFile
            c.https.verifyPeer = tls.verifyHostName
        } else {
            c.https.caFile = p.ca_file
        }
        c.https.proxy = uplink.webSocket.proxy
        c.https.timeoutMilliseconds = 30_000
        c.userAgent = uplink.clientVersion
        for (leaf, source, key) in identities where Self.provisioningIdentity(leaf) != nil {
            if !isValidRegistrationID(leaf.deviceID) {
                report(source, key, "device_id \"\(leaf.deviceID)\" cannot register with DPS: registration ids are 1 to 128 lowercase letters, digits and - . _ : (not first or last)")
            }
        }
        if (f.hub.host ?? "").isEmpty {
            for (leaf, source, key) in identities where Self.provisioningIdentity(leaf) == nil {
                report(source, key, "\(leaf.deviceID) uses a hub policy, which DPS cannot provision: set [hub] host for it, or give it a key, group or x509 credential")
            }
        }
        return c
    }

    /// How an identity registers with DPS: its own key, or the key its group derives for it; nil for a hub policy.
    static func provisioningIdentity(_ leaf: LeafConfiguration) -> ProvisioningIdentity? {
        switch leaf.credential {
        case .symmetricKey(let primary, _): return ProvisioningIdentity(registrationID: leaf.deviceID, key: primary)
        case .groupKey(let group):
            guard let key = try? deriveDeviceKey(groupKey: group, registrationID: leaf.deviceID) else { return nil }
            return ProvisioningIdentity(registrationID: leaf.deviceID, key: key)
        case .x509(let certificate, let key):
            return ProvisioningIdentity(registrationID: leaf.deviceID, attestation: .x509(certificateFile: certificate, keyFile: key))
        case .sharedAccessPolicy: return nil
        }
    }


    private mutating func spoolConfiguration(_ section: GatewayConfigFile.SpoolSection?) -> SpoolConfiguration {
        var spool = SpoolConfiguration(directory: section?.directory ?? "/var/lib/fieldgate/spool")
        if let mb = section?.cap_mb {
            if mb >= 1 {
                spool.capBytes = mb * 1024 * 1024
                spool.segmentBytes = min(spool.segmentBytes, max(64 * 1024, spool.capBytes / 8))
            } else { report(main, "spool.cap_mb", "spool.cap_mb must be at least 1") }
        }
        switch section?.sync ?? "always" {
        case "always": spool.sync = .always
        case let s where s.hasPrefix("interval-") && Int(s.dropFirst(9)).map({ $0 > 0 }) == true:
            spool.sync = .interval(milliseconds: Int(s.dropFirst(9))!)
        case let s: report(main, "spool.sync", "spool.sync \(s): use always or interval-<milliseconds>, e.g. interval-100")
        }
        switch section?.full_policy ?? "drop-oldest" {
        case "drop-oldest": spool.fullPolicy = .dropOldest
        case "reject-new": spool.fullPolicy = .rejectNew
        case let s: report(main, "spool.full_policy", "spool.full_policy \(s): use drop-oldest or reject-new")
        }
        if let h = section?.ttl_hours { spool.ttlMilliseconds = Int64(h) * 3_600_000 }
        return spool
    }

    private mutating func deviceKey(_ name: String, owner: String, source: ConfigSource, keyPath: String) -> LeafCredential? {
        guard let k = secrets.keys[name] else {
            guard checkKeys else { return nil }
            report(source, keyPath, "\(owner): \(secrets.origin) has no key named \(name); add \(name) = \"<primary key, base64>\" under [keys]")
            return nil
        }
        return .symmetricKey(primary: k.primary, secondary: k.secondary)
    }

    /// Heartbeat intervals, in seconds: no more often than every 10 s, at least daily.
    static let heartbeatRange = 10...86_400

    /// `cloud = ["c2d", "methods", "twin"]` → the leaf's links (telemetry always).
    private mutating func cloudCapabilities(_ l: GatewayConfigFile.Leaf, source: ConfigSource, at: String) -> LeafCapabilities? {
        guard let names = l.cloud else { return .all }
        let known: [String: LeafCapabilities] = ["c2d": .cloudToDevice, "methods": .methods, "twin": .twin]
        var capabilities: LeafCapabilities = []
        for name in names {
            guard let c = known[name] else {
                report(source, "\(at).cloud", "leaf \(l.device_id): cloud lists \"\(name)\"; use any of \"c2d\", \"methods\", \"twin\" (telemetry is always on), or [] for telemetry only")
                return nil
            }
            capabilities.insert(c)
        }
        return capabilities
    }

    private mutating func leafCredential(_ l: GatewayConfigFile.Leaf, source: ConfigSource, at: String) -> LeafCredential? {
        credential(l.credential ?? file.provisioning?.credential, deviceID: l.device_id, keyRef: l.key_ref, owner: "leaf \(l.device_id)", source: source, at: at, keyAt: "\(at).device_id",
                   certificate: (l.certificate_file, l.key_file))
    }

    /// The gateway's own identity: its device key, or a hub policy (`fieldgatectl connect` with a policy string).
    /// Transport, fallback hosts, WebSocket endpoint and proxy.
    private mutating func mapReach(_ hub: GatewayConfigFile.Hub, into uplink: inout UplinkConfiguration) {
        if let t = hub.transport {
            if let policy = UplinkConfiguration.RoutePolicy(rawValue: t) { uplink.route = policy } else {
                report(main, "hub.transport", "hub.transport must be \"amqps\" (TLS on 5671), \"amqps-websocket\" (AMQP over WebSockets on 443) or \"auto\" (5671, falling back to 443)")
            }
        }
        if hub.insecure_plain_amqp == true {
            // Plain AMQP on hub.port; WebSockets always use TLS.
            if hub.transport == nil { uplink.route = .amqps } else if uplink.route != .amqps {
                report(main, "hub.transport", "insecure_plain_amqp = true is plain AMQP on hub.port: set transport = \"amqps\" with it (WebSockets always use TLS)")
            }
        }
        for (i, h) in (hub.fallback_hosts ?? []).enumerated() where h.isEmpty || h.contains(where: { $0 == "/" || $0 == ":" || $0 == " " }) {
            report(main, "hub.fallback_hosts", "hub.fallback_hosts[\(i)] = \"\(h)\" must be a host name (no scheme, port or path)")
        }
        uplink.fallbackHosts = hub.fallback_hosts ?? []
        if let n = hub.fallback_after_failures {
            if (1...100).contains(n) { uplink.failuresBeforeNextRoute = n } else {
                report(main, "hub.fallback_after_failures", "hub.fallback_after_failures must be 1 to 100")
            }
        }
        if let port = hub.websocket_port {
            if (1...65535).contains(port) { uplink.webSocket.port = port } else { report(main, "hub.websocket_port", "hub.websocket_port must be 1 to 65535 (443 for IoT Hub)") }
        }
        if let path = hub.websocket_path {
            if path.hasPrefix("/") && !path.contains(" ") { uplink.webSocket.path = path } else {
                report(main, "hub.websocket_path", "hub.websocket_path must start with / (IoT Hub's is /$iothub/websocket)")
            }
        }
        if let ping = hub.websocket_ping_seconds {
            if (0...3600).contains(ping) { uplink.webSocket.pingIntervalMilliseconds = ping == 0 ? nil : ping * 1000 } else {
                report(main, "hub.websocket_ping_seconds", "hub.websocket_ping_seconds must be 0 (off) to 3600")
            }
        }
        if let proxy = hub.proxy {
            switch Self.parseProxy(proxy) {
            case .failure(let why): report(main, "hub.proxy", why.description)
            case .success(nil): uplink.webSocket.proxy = .direct
            case .success(let (url, user)?):
                var password: String?
                if let user {
                    password = secrets.proxyPassword
                    if password == nil && checkKeys {
                        report(main, "hub.proxy", "hub.proxy names the user \(user): put its password in \(secrets.origin) as [proxy] password = \"…\"")
                    }
                }
                uplink.webSocket.proxy = .url(url, user: user, password: password)
            }
        }
    }

    /// `none` → nil; `http://[user@]host:port` → the URL without the user, and the user.
    static func parseProxy(_ text: String) -> Result<(url: String, user: String?)?, ProxyProblem> {
        if text == "none" { return .success(nil) }
        let rule = "hub.proxy must be \"http://host:port\" or \"http://user@host:port\" (the password goes in the secrets file as [proxy] password), or \"none\""
        let lowered = text.lowercased()
        let scheme = lowered.hasPrefix("http://") ? "http" : lowered.hasPrefix("https://") ? "https" : nil
        guard let scheme else { return .failure(ProxyProblem(rule)) }
        var rest = String(text.dropFirst(scheme.count + 3))
        if rest.hasSuffix("/") { rest.removeLast() }
        var user: String?
        if let at = rest.lastIndex(of: "@") {
            let info = String(rest[..<at])
            guard !info.contains(":") else {
                return .failure(ProxyProblem("hub.proxy must not hold the password (it would show in logs): put it in the secrets file as [proxy] password = \"…\" and keep http://user@host:port"))
            }
            user = info
            rest = String(rest[rest.index(after: at)...])
        }
        guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]), (1...65535).contains(port),
              !rest[..<colon].isEmpty, !rest.contains("/")
        else { return .failure(ProxyProblem(rule)) }
        return .success(("\(scheme)://\(rest)", user))
    }

    struct ProxyProblem: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    private mutating func gatewayCredential(_ g: GatewayConfigFile.Gateway) -> LeafCredential? {
        credential(g.credential ?? file.provisioning?.credential, deviceID: g.device_id, keyRef: g.key_ref, owner: "gateway \(g.device_id)", source: main, at: "gateway", keyAt: "gateway",
                   certificate: (g.certificate_file, g.key_file))
    }

    /// `key` (default), `policy:<name>[:hub]` or `group:<name>`, looked up in the secrets.
    private mutating func credential(_ text: String?, deviceID: String, keyRef: String?, owner: String, source: ConfigSource, at: String, keyAt: String,
                                     certificate: (file: String?, key: String?) = (nil, nil)) -> LeafCredential? {
        let parts = (text ?? "key").split(separator: ":").map(String.init)
        if text != "x509" && (certificate.file != nil || certificate.key != nil) {
            report(source, "\(at).\(certificate.file != nil ? "certificate_file" : "key_file")", "\(owner): certificate_file and key_file go with credential = \"x509\"")
        }
        switch parts.first {
        case "x509" where parts.count == 1:
            return x509Credential(certificate, owner: owner, source: source, at: at)
        case "key" where parts.count == 1:
            return deviceKey(keyRef ?? deviceID, owner: owner, source: source, keyPath: keyAt)
        case "policy" where parts.count == 2 || (parts.count == 3 && parts[2] == "hub"):
            guard let key = secrets.policies[parts[1]] else {
                if checkKeys { report(source, "\(at).credential", "\(owner): \(secrets.origin) has no [policies] \(parts[1]) = \"…\"; add the policy's key") }
                return nil
            }
            return .sharedAccessPolicy(name: parts[1], key: key, scope: parts.count == 3 ? .hub : .device)
        case "group" where parts.count == 2:
            guard let key = secrets.groups[parts[1]] else {
                if checkKeys { report(source, "\(at).credential", "\(owner): \(secrets.origin) has no [groups] \(parts[1]) = \"…\"; add the group key") }
                return nil
            }
            return .groupKey(key)
        default:
            report(source, "\(at).credential", "\(owner): credential \(text ?? ""): use key, policy:<name>, policy:<name>:hub, group:<name> or x509")
            return nil
        }
    }

    /// An X.509 identity: a readable PEM certificate, and a PEM key that only its owner (and group) may read. A key
    /// named without a leading / is a systemd credential (`LoadCredential=`), looked up in $CREDENTIALS_DIRECTORY.
    private mutating func x509Credential(_ c: (file: String?, key: String?), owner: String, source: ConfigSource, at: String) -> LeafCredential? {
        guard let certificate = c.file, let keyName = c.key else {
            report(source, "\(at).credential", "\(owner): credential = \"x509\" needs certificate_file = \"/etc/fieldgate/<id>.pem\" and key_file = \"/etc/fieldgate/<id>.key\" (or a systemd credential name)")
            return nil
        }
        let before = problems.count
        var key = keyName
        if !keyName.hasPrefix("/") {
            guard let dir = credentialsDirectory else {
                report(source, "\(at).key_file", "\(owner): key_file \(keyName) is a systemd credential name, but $CREDENTIALS_DIRECTORY is not set (LoadCredential=\(keyName):/path in the unit), or give an absolute path")
                return nil
            }
            key = dir + "/" + keyName
        }
        guard checkKeys else { return .x509(certificateFile: certificate, keyFile: key) }
        let certificateText = (try? String(contentsOfFile: certificate, encoding: .utf8)) ?? ""
        if !certificateText.contains("-----BEGIN CERTIFICATE-----") {
            report(source, "\(at).certificate_file", "\(owner): \(certificate) is not a readable PEM certificate")
        }
        var st = stat()
        if stat(key, &st) != 0 {
            report(source, "\(at).key_file", "\(owner): cannot read the key \(key): \(String(cString: strerror(errno)))")
        } else if st.st_mode & 0o007 != 0 {
            report(source, "\(at).key_file", "\(owner): \(key) is readable by everyone: chmod 0600 (or 0640 root:fieldgate) it")
        } else if !((try? String(contentsOfFile: key, encoding: .utf8)) ?? "").contains("PRIVATE KEY-----") {
            report(source, "\(at).key_file", "\(owner): \(key) is not a readable PEM private key")
        }
        return problems.count == before ? .x509(certificateFile: certificate, keyFile: key) : nil
    }

    struct FormatProblem: Error { var message: String }

    /// A frame format as written in the configuration (serial ports, mapped UDP sources).
    static func frameFormat(_ format: String, idField: String?, fieldMap: [String: String]?) -> Result<FrameFormat, FormatProblem> {
        switch format.split(separator: ":", maxSplits: 1).map(String.init) {
        case ["json"]: return .success(.json(idField: idField))
        case ["kv"]: return .success(.keyValue(fieldMap: fieldMap ?? [:], onlyMapped: fieldMap != nil, idField: idField))
        case ["raw"]: return .success(.raw)
        case let x where x.count == 2 && x[0] == "csv": return .success(.csv(fields: x[1].split(separator: ",").map(String.init), idField: idField))
        case let x where x.count == 2 && x[0] == "regex":
            do { _ = try FrameDecoder(.regex(pattern: x[1], idField: nil)) } catch { return .failure(FormatProblem(message: "\(error)")) }
            return .success(.regex(pattern: x[1], idField: idField))
        default:
            return .failure(FormatProblem(message: "format \(format): use json, csv:<fields>, kv, regex:<pattern> or raw"))
        }
    }

    /// IoT Hub device ids: up to 128 letters, digits and `-.%_*?!(),:=@$'` (docs/iothub-protocol.md §10, B.9).
    static func isValidDeviceID(_ id: String) -> Bool {
        let allowed = Set("-.%_*?!(),:=@$'")
        return (1...128).contains(id.count) && id.allSatisfy { ($0.isASCII && ($0.isLetter || $0.isNumber)) || allowed.contains($0) }
    }

    static func deviceIDRule(_ id: String) -> String {
        "device_id \"\(id)\" is not a valid IoT Hub device id: 1 to 128 ASCII letters, digits or - . % _ * ? ! ( ) , : = @ $ '"
    }

    private mutating func serialPort(_ p: GatewayConfigFile.SerialPortSection, source: ConfigSource, at: String) -> SerialPortConfiguration? {
        let before = problems.count
        func bad(_ key: String, _ message: String) { problems.append(source.problem("\(at).\(key)", "serial_port \(p.path): \(message)")) }
        var c = SerialPortConfiguration(path: p.path)
        if let b = p.baud { c.baud = b }
        if let v = p.parity { if let x = SerialPortConfiguration.Parity(rawValue: v) { c.parity = x } else { bad("parity", "parity \(v): use none, even or odd") } }
        if let v = p.flow_control { if let x = SerialPortConfiguration.FlowControl(rawValue: v) { c.flowControl = x } else { bad("flow_control", "flow_control \(v): use none, rtscts or xonxoff") } }
        if let v = p.data_bits { if (5...8).contains(v) { c.dataBits = v } else { bad("data_bits", "data_bits must be 5 to 8") } }
        if let v = p.stop_bits { if v == 1 || v == 2 { c.stopBits = v } else { bad("stop_bits", "stop_bits must be 1 or 2") } }
        let framing = p.framing ?? "lines"
        func hex(_ s: Substring) -> UInt8? { UInt8(s.hasPrefix("0x") ? s.dropFirst(2) : s, radix: 16) }
        switch framing.split(separator: ":", maxSplits: 1).map(String.init) {
        case ["lines"]: c.framing = .lines()
        case let x where x.count == 2 && x[0] == "fixed" && Int(x[1]).map({ $0 > 0 }) == true: c.framing = .fixed(length: Int(x[1])!)
        case let x where x.count == 2 && x[0] == "length" && ["1", "2", "4"].contains(x[1]): c.framing = .lengthPrefixed(prefixBytes: Int(x[1])!)
        case let x where x.count == 2 && x[0] == "markers" && (2...3).contains(x[1].split(separator: ",").count) && x[1].split(separator: ",").allSatisfy({ hex($0) != nil }):
            let bytes = x[1].split(separator: ",").map { hex($0)! }
            c.framing = .markers(start: bytes[0], end: bytes[1], escape: bytes.count == 3 ? bytes[2] : nil)
        default:
            bad("framing", "framing \(framing): use lines, fixed:<n>, length:<1|2|4> or markers:<start>,<end>[,<escape>] (hex, e.g. markers:02,03,10)")
        }
        let format = p.format ?? "json"
        switch Self.frameFormat(format, idField: p.id_field, fieldMap: p.field_map) {
        case .success(let f): c.format = f
        case .failure(let why): bad("format", why.message)
        }
        c.leaf = p.leaf
        c.leaves = p.leaves ?? []
        if c.leaf == nil && c.leaves.isEmpty { bad("path", "name its leaf (leaf = \"id\") or the leaves its id field may name (leaves = [...])") }
        if c.leaf == nil && !c.leaves.isEmpty && p.id_field == nil && format != "raw" { bad("leaves", "with several leaves the frames must name theirs: set id_field") }
        c.replyPattern = p.reply_pattern
        if let rp = p.reply_pattern, (try? Regex(rp)) == nil { bad("reply_pattern", "reply_pattern \(rp) is not a valid regular expression") }
        return problems.count == before ? c : nil
    }
}
