import ArgumentParser
import ControlSocket
import FieldgateCore
import Gateway
import GatewayConfig
import Provisioning
import Spool
import Uplink

#if canImport(Glibc)
import Glibc
#endif

/// The operator's view of a running fieldgated (issue 8, part 4): over the control socket for live state, and
/// directly for what needs no daemon (config check, spool inspect, sas-token). The `fieldgatectl` executable runs
/// it, and so does `fieldgated` when started under that name (the package ships one binary and a symlink).
@available(macOS 10.15, macCatalyst 13, iOS 13, tvOS 13, watchOS 6, *)
public struct Fieldgatectl: AsyncParsableCommand {
    public init() {}

    public static let configuration = CommandConfiguration(
        commandName: "fieldgatectl", abstract: "Set up, inspect and operate fieldgated.",
        discussion: "Exit status: 0 success; 1 a failure (the reason on stderr); 64 a usage error; 78 an invalid configuration.",
        version: FieldgateVersion.current,
        subcommands: [Connect.self, CheckCommand.self, LeafCommands.self, ReloadCommand.self, Status.self, Devices.self, SpoolCommands.self,
                      ConfigCommands.self, UpdateCommands.self, SASTokenCommand.self, Debug.self])
}

@available(macOS 10.15, macCatalyst 13, iOS 13, tvOS 13, watchOS 6, *)
extension Fieldgatectl {
    /// fieldgatectl as a program: a peer that resets a TLS or control connection must cost an error, not the process
    /// (OpenSSL and the control socket write with write(2), which raises SIGPIPE).
    public static func runAsProgram() async {
        signal(SIGPIPE, SIG_IGN)
        await main()
    }
}

struct ConnectionOptions: ParsableArguments {
    @Option(help: "fieldgated's control socket.") var socket = "/run/fieldgate/control.sock"
    @Flag(help: "Print JSON for scripts.") var json = false

    init() {}
    init(socket: String) { self.socket = socket }

    func ask(_ command: String, _ extra: [String: JSONValue] = [:]) throws -> JSONValue {
        var body = extra
        body["command"] = .string(command)
        let answer: JSONValue
        do { answer = try ControlClient.request(.object(body), socketPath: socket) } catch { throw Failure("fieldgatectl: \(error)") }
        if let e = answer["error"]?.stringValue { throw Failure("fieldgatectl: \(e)") }
        return answer
    }
}

/// A message on stderr and exit status 1.
struct Failure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Connection, leaves by state, spool, drops, adapters.")
    @OptionGroup var options: ConnectionOptions

    func run() throws {
        let s = try options.ask("status")
        if options.json { print(s.pretty); return }
        print(s["summary"]?.stringValue ?? "")
        print("version \(s["version"]?.stringValue ?? "?"), up \(s["uptime_seconds"]?.intValue ?? 0) s")
        for c in s["connections"]?.arrayValue ?? [] {
            let err = c["last_error"]?.stringValue.map { " — last error: \($0)" } ?? ""
            let route = c["host"]?.stringValue.map { " to \($0) over \(c["transport"]?.stringValue == "amqps-websocket" ? "WebSockets (443)" : "AMQPS")" } ?? ""
            let tier = (c["refused_by_tier"]?.arrayValue ?? []).compactMap(\.stringValue)
            let refused = tier.isEmpty ? "" : "; the hub's tier refuses \(tier.joined(separator: ", "))"
            print("connection \(c["index"]?.intValue ?? 0): \(c["state"]?.stringValue ?? "?")\(route), \(c["leaves"]?.intValue ?? 0) leaves, opened \(c["opens"]?.intValue ?? 0)×\(refused)\(err)")
        }
        let phases = (s["leaves_by_state"]?.objectValue ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key) \($0.value.intValue ?? 0)" }
        print("leaves: " + (phases.isEmpty ? "none" : phases.joined(separator: ", ")))
        if let spool = s["spool"] {
            let oldest = spool["oldest_age_seconds"]?.intValue.map { ", oldest \($0) s" } ?? ""
            print("spool: \(spool["depth"]?.intValue ?? 0) records, \(ByteCount.format(Int(spool["bytes"]?.intValue ?? 0)))\(oldest)")
            let drops = (spool["dropped"]?.objectValue ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key) \($0.value.intValue ?? 0)" }
            print("dropped: " + (drops.isEmpty ? "none" : drops.joined(separator: ", ")))
        }
        for (name, a) in (s["adapters"]?.objectValue ?? [:]).sorted(by: { $0.key < $1.key }) {
            let fields = (a.objectValue ?? [:]).filter { $0.key != "units" }.sorted { $0.key < $1.key }
                .map { "\($0.key) \($0.value.stringValue ?? $0.value.serialized)" }
            print("\(name): " + fields.joined(separator: ", "))
            // A Modbus bus: one line per unit (the per-bus statistics).
            for (unit, u) in (a["units"]?.objectValue ?? [:]).sorted(by: { (Int($0.key) ?? 0) < (Int($1.key) ?? 0) }) {
                let state = u["online"] == .bool(true) ? "online" : "OFFLINE"
                let err = u["last_error"]?.stringValue.map { " — \($0)" } ?? ""
                print("  unit \(unit) \(u["leaf"]?.stringValue ?? "?"): \(state), \(u["requests"]?.intValue ?? 0) requests, "
                      + "\(u["timeouts"]?.intValue ?? 0) timeouts, \(u["crc_errors"]?.intValue ?? 0) CRC errors, "
                      + "\(u["exceptions"]?.intValue ?? 0) exceptions, \(u["missed_polls"]?.intValue ?? 0) missed polls\(err)")
            }
        }
        let stuck = s["stuck"]?.arrayValue?.compactMap(\.stringValue) ?? []
        if !stuck.isEmpty { print("STUCK (watchdog withheld): " + stuck.joined(separator: ", ")) }
        if let r = s["reload"], r["result"]?.stringValue == "refused" {
            print("RELOAD REFUSED at \(r["at"]?.stringValue ?? "?") (\(r["trigger"]?.stringValue ?? "?")), the running configuration stays: \(r["detail"]?.stringValue ?? "")")
        } else if let r = s["reload"], r["result"]?.stringValue == "applied" {
            print("last reload \(r["at"]?.stringValue ?? "?"): \(r["detail"]?.stringValue ?? "")")
        }
    }
}

struct Devices: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Every leaf: adapter, state, spooled, sent/accepted.")
    @OptionGroup var options: ConnectionOptions

    func run() throws {
        let d = try options.ask("devices")
        if options.json { print(d.pretty); return }
        let rows = (d.arrayValue ?? []).map { (l: JSONValue) -> [String] in
            let text = { (key: String) -> String in l[key]?.stringValue ?? "" }
            let count = { (key: String) -> String in String(l[key]?.intValue ?? 0) }
            let state = text("state") + (l["tier_limitation"]?.stringValue.map { ", \($0)" } ?? "")
            return [text("device_id"), text("adapter"), state, count("spooled"), count("accepted"), count("rejected"),
                    text("last_error")]
        }
        printTable(["DEVICE", "ADAPTER", "STATE", "SPOOLED", "ACCEPTED", "REJECTED", "LAST ERROR"], rows)
    }
}

struct SpoolCommands: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "spool", abstract: "The store-and-forward spool.",
                                                    subcommands: [Stats.self, Inspect.self])

    struct Stats: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Depth, bytes, oldest age, drops (from the daemon).")
        @OptionGroup var options: ConnectionOptions

        func run() throws {
            let s = try options.ask("spool-stats")
            if options.json { print(s.pretty); return }
            print("records \(s["depth"]?.intValue ?? 0), \(ByteCount.format(Int(s["bytes"]?.intValue ?? 0))) on disk, oldest \(s["oldest_age_seconds"]?.intValue.map { "\($0) s" } ?? "-")")
            let rows = (s["depth_by_leaf"]?.objectValue ?? [:]).sorted { $0.key < $1.key }.map { [$0.key, String($0.value.intValue ?? 0)] }
            if !rows.isEmpty { printTable(["DEVICE", "RECORDS"], rows) }
            for (reason, n) in (s["dropped"]?.objectValue ?? [:]).sorted(by: { $0.key < $1.key }) { print("dropped (\(reason)): \(n.intValue ?? 0)") }
            print("recovery: \(s["corrupt_regions"]?.intValue ?? 0) corrupt regions, \(s["torn_tails"]?.intValue ?? 0) torn tails, \(s["salvaged_records"]?.intValue ?? 0) records salvaged")
        }
    }

    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The oldest undelivered records (opens the spool read-only; the daemon may run).")
        @Option(help: "The spool directory.") var dir = "/var/lib/fieldgate/spool"
        @Option(help: "Only this leaf.") var leaf: String?
        @Option(help: "At most this many records.") var limit = 20
        @Flag(help: "Print JSON for scripts.") var json = false

        func run() throws {
            let spool: Spool
            do { spool = try Spool(configuration: SpoolConfiguration(directory: dir), readOnly: true) } catch { throw Failure("fieldgatectl: \(error)") }
            defer { spool.close() }
            let records: [SpoolRecord]
            do { records = try spool.next(max: limit) { leaf == nil || $0 == leaf } } catch { throw Failure("fieldgatectl: \(error)") }
            let items: [JSONValue] = records.map { r in
                let envelope = TelemetryEnvelope(decoding: r.payload)
                let body = envelope.map { String(decoding: $0.body, as: UTF8.self) } ?? "(not a telemetry envelope)"
                return ["leaf": .string(r.leaf), "sequence": .int(Int64(r.sequence)), "message_id": .string(spool.messageID(for: r.sequence)),
                        "acquired": .string(WallClock.iso8601(milliseconds: r.acquiredAtMs)), "body": .string(body)]
            }
            if json { print(JSONValue.array(items).pretty); return }
            printTable(["LEAF", "MESSAGE ID", "ACQUIRED", "BODY"], items.map { i in
                [i["leaf"]?.stringValue ?? "", i["message_id"]?.stringValue ?? "", i["acquired"]?.stringValue ?? "", String((i["body"]?.stringValue ?? "").prefix(60))]
            })
        }
    }
}

struct ConfigCommands: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "config", abstract: "The configuration.", subcommands: [Check.self])

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Validate as fieldgated does; every problem as file:line: what to fix. Exit 78 when invalid.")
        @Option(help: "Configuration file (devices.d/ and secrets.toml beside it).") var config = "/etc/fieldgate/fieldgate.toml"

        func run() throws {
            do {
                let s = try GatewaySettings.load(path: config)
                let hub = s.uplink.hostName.isEmpty ? "hubs assigned by DPS (id scope \(s.provisioning?.idScope ?? ""))" : "hub \(s.uplink.hostName)"
                print("\(config): valid — \(hub), gateway \(s.gatewayLeaf.deviceID), \(s.leaves.count) leaves from \(s.files.count) files")
            } catch {
                printProblems(error)
                throw ExitCode(78)
            }
        }
    }
}

struct SASTokenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "sas-token", abstract: "Compute a device's SAS token, for debugging (prints a secret).")
    @Option(help: "Configuration file.") var config = "/etc/fieldgate/fieldgate.toml"
    @Option(help: "The device (a leaf or the gateway).") var device: String
    @Option(help: "Validity in seconds.") var ttl: Int64 = 3600

    func run() throws {
        let s: GatewaySettings
        do { s = try GatewaySettings.load(path: config) } catch {
            printProblems(error)
            throw ExitCode(78)
        }
        guard let leaf = ([s.gatewayLeaf] + s.leaves).first(where: { $0.deviceID == device }) else {
            throw Failure("fieldgatectl: \(device) is not configured (gateway \(s.gatewayLeaf.deviceID), leaves: \(s.leaves.map(\.deviceID).joined(separator: ", ")))")
        }
        var uplink = s.uplink
        // A provisioned identity's token names the hub DPS assigned it.
        if let p = s.provisioning, let hub = AssignmentStore(path: p.storePath).entries[device]?.hub { uplink.hostName = hub }
        guard !uplink.hostName.isEmpty else { throw Failure("fieldgatectl: \(device) has no hub yet: DPS assigns one when fieldgated starts") }
        print(try uplink.sasToken(for: leaf, expiry: WallClock.nowMilliseconds() / 1000 + ttl))
    }
}

struct Debug: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Drills (need allow_debug = true under [control]).", subcommands: [Freeze.self])

    struct Freeze: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Freeze one component loop: the watchdog must notice.")
        @OptionGroup var options: ConnectionOptions
        @Argument(help: "The loop, as `fieldgatectl status --json` names it (spool, uplink, udp:<port>, serial:<path>).") var component: String
        @Option(help: "How long.") var seconds = 30

        func run() throws {
            _ = try options.ask("debug-freeze", ["component": .string(component), "seconds": .int(Int64(seconds))])
            print("\(component) frozen for \(seconds) s")
        }
    }
}

func printTable(_ header: [String], _ rows: [[String]]) {
    let widths = header.indices.map { i in ([header[i]] + rows.map { $0[i] }).map(\.count).max() ?? 0 }
    for row in [header] + rows {
        print(row.enumerated().map { i, c in i == row.count - 1 ? c : c + String(repeating: " ", count: widths[i] - c.count) }.joined(separator: "  "))
    }
}

extension JSONValue {
    /// Indented JSON for humans and scripts (keys sorted).
    var pretty: String { prettyLines(indent: "").joined(separator: "\n") }

    private func prettyLines(indent: String) -> [String] {
        let inner = indent + "  "
        switch self {
        case .object(let o) where !o.isEmpty:
            let keys = o.keys.sorted()
            var lines = ["{"]
            for (i, k) in keys.enumerated() {
                var value = o[k]!.prettyLines(indent: inner)
                value[0] = inner + JSONValue.string(k).serialized + ": " + value[0]
                if i < keys.count - 1 { value[value.count - 1] += "," }
                lines += value
            }
            return lines + [indent + "}"]
        case .array(let a) where !a.isEmpty:
            var lines = ["["]
            for (i, v) in a.enumerated() {
                var value = v.prettyLines(indent: inner)
                value[0] = inner + value[0]
                if i < a.count - 1 { value[value.count - 1] += "," }
                lines += value
            }
            return lines + [indent + "]"]
        default:
            return [serialized]
        }
    }
}

/// Each problem on its own stderr line.
func printProblems(_ error: ConfigError) {
    let text = error.problems.map { "\($0)\n" }.joined()
    _ = text.withCString { write(2, $0, strlen($0)) }
}
