import ArgumentParser
import ControlSocket
import FieldgateCore
import GatewayConfig
import Uplink

#if canImport(Glibc)
import Glibc
#endif

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

struct LeafCommands: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "leaf", abstract: "Add, remove and list leaf devices (devices.d files and their keys), applied to the running fieldgated.",
        subcommands: [Add.self, Remove.self, List.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a leaf: its devices.d file and its key, checked, then applied without a restart.",
            discussion: """
                The key comes from --connection-string (the leaf device's, as az prints it: its DeviceId names the leaf), \
                from --key (base64), or from standard input when neither is given and --no-key is not set. If the whole \
                configuration is not valid afterwards, nothing is changed.
                """)
        @Argument(help: "The leaf's IoT Hub device id (default: the connection string's DeviceId).") var deviceId: String?
        @Option(help: "udp or modbus (serial leaves are named by their [[serial_port]]: edit devices.d by hand).") var adapter = "udp"
        @Option(help: "The leaf device's connection string.") var connectionString: String?
        @Option(help: "The leaf's primary key (base64).") var key: String?
        @Flag(help: "Its key is in the secrets already (or it uses a policy/group credential set with --credential).") var noKey = false
        @Option(help: "key (default), policy:<name>[:hub] or group:<name>.") var credential: String?
        @Option(help: "What the cloud may do besides telemetry: a comma list of c2d, methods, twin; \"none\" for telemetry only. Default: all.") var cloud: String?
        @Option(help: "UDP: a source address allowed to speak for it (repeatable).") var allowedSource: [String] = []
        @Option(help: "UDP: where C2D, methods and desired properties go (host:port).") var commandAddress: String?
        @Option(help: "UDP, for the first UDP leaf: the port to listen on, written as [udp] port (default 47000).") var udpPort: Int?
        @Option(help: "UDP, for the first UDP leaf: the address to listen on, written as [udp] bind (default: all).") var udpBind: String?
        @Option(help: "Modbus: the [[modbus_bus]] it is on.") var bus: String?
        @Option(help: "Modbus: its unit id.") var unitId: Int?
        @Option(help: "Modbus: its profiles.d profile.") var profile: String?
        @Option(help: "Configuration file.") var config = "/etc/fieldgate/fieldgate.toml"
        @Option(help: "fieldgated's control socket.") var socket = "/run/fieldgate/control.sock"
        @Flag(help: "Write and check only; do not apply to the running daemon.") var noReload = false

        func run() async throws {
            var keyText = key
            var device = deviceId
            if let text = connectionString {
                let cs: HubConnectionString
                do { cs = try HubConnectionString.parse(text) } catch { throw Failure("fieldgatectl: \(error)") }
                guard let id = cs.deviceID, cs.keyName == nil else { throw Failure("fieldgatectl: --connection-string must be the leaf device's own (with DeviceId=)") }
                if let d = device, d != id { throw Failure("fieldgatectl: the connection string is for \(id), not \(d)") }
                device = id
                keyText = cs.key
                if let settings = try? GatewaySettings.load(path: config), settings.uplink.hostName.lowercased() != cs.hostName.lowercased() {
                    throw Failure("fieldgatectl: \(id) belongs to hub \(cs.hostName), the gateway connects to \(settings.uplink.hostName)")
                }
            }
            guard let device else { throw Failure("fieldgatectl: name the leaf (its device id) or give its --connection-string") }
            if keyText == nil && !noKey && credential == nil {
                say("the key of \(device) (base64), then Enter:")
                keyText = readSecretLine()
            }
            if let k = keyText, !HubConnectionString.isValidKey(k) {
                throw Failure("fieldgatectl: that is not an IoT Hub key (base64 of 16 to 64 bytes): copy the SharedAccessKey part of \(device)'s connection string")
            }
            guard ["udp", "modbus"].contains(adapter) else { throw Failure("fieldgatectl: --adapter \(adapter): use udp or modbus") }
            if let existing = LeafLocation.all(configPath: config).first(where: { $0.deviceID == device }) {
                throw Failure("fieldgatectl: \(device) is configured already (\(existing.file)\(existing.line.map { ":\($0)" } ?? ""))")
            }
            var files = ConfigFiles(configPath: config)
            let path = files.leafFile(device)
            // Never over a file of the operator's (it may hold other leaves, ports, buses).
            guard !FileManager.default.fileExists(atPath: path) else {
                throw Failure("fieldgatectl: \(path) exists already: add \(device) to it by hand, or move that file away")
            }
            var udpSection: String?
            do throws(Failure) {
                try files.write(path, entry(device))
                // The first UDP leaf needs the adapter's [udp] section.
                if adapter == "udp", let text = ConfigFiles.read(config), !TOMLTextEditor(text).hasTable("udp") {
                    var main = TOMLTextEditor(text)
                    main.set("udp", "port", String(udpPort ?? 47000))
                    if let udpBind { main.set("udp", "bind", TOMLTextEditor.string(udpBind)) }
                    try files.write(config, main.text)
                    udpSection = "UDP leaves listen on \(udpBind ?? "every address"), port \(udpPort ?? 47000) ([udp] in \(config))"
                }
                if let keyText {
                    var secrets = TOMLTextEditor(ConfigFiles.read(files.secretsPath) ?? ConfigTemplate.secrets)
                    secrets.set("keys", device, TOMLTextEditor.string(keyText))
                    try files.write(files.secretsPath, secrets.text)
                }
            } catch {
                _ = files.restore()  // what was written before the failure goes again
                throw error
            }
            do { _ = try GatewaySettings.load(path: config) } catch {
                let notRestored = files.restore()
                printProblems(error)
                throw Failure("fieldgatectl: the configuration would not be valid: " + (notRestored.isEmpty ? "nothing changed" : "and these files could not be put back: " + notRestored.joined(separator: "; ")))
            }
            say("wrote \(path)" + (keyText != nil ? " and the key in \(files.secretsPath)" : ""))
            if let udpSection { say(udpSection) }
            guard !noReload else { return }
            try await applyAndWatch(device, socket: socket)
        }

        private func entry(_ device: String) -> String {
            var lines = ["# \(device), added by fieldgatectl leaf add on \(WallClock.iso8601(milliseconds: WallClock.nowMilliseconds()))",
                         "[[leaf]]", "device_id = \(TOMLTextEditor.string(device))", "adapter = \(TOMLTextEditor.string(adapter))"]
            if let credential { lines.append("credential = \(TOMLTextEditor.string(credential))") }
            if let cloud {
                let names = cloud == "none" ? [] : cloud.split(separator: ",").map { TOMLTextEditor.string($0.trimmed()) }
                lines.append("cloud = [\(names.joined(separator: ", "))]")
            }
            if !allowedSource.isEmpty { lines.append("allowed_sources = [\(allowedSource.map(TOMLTextEditor.string).joined(separator: ", "))]") }
            if let commandAddress { lines.append("command_address = \(TOMLTextEditor.string(commandAddress))") }
            if let bus { lines.append("bus = \(TOMLTextEditor.string(bus))") }
            if let unitId { lines.append("unit_id = \(unitId)") }
            if let profile { lines.append("profile = \(TOMLTextEditor.string(profile))") }
            return lines.joined(separator: "\n") + "\n"
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove a leaf (its own devices.d file and its key), applied without a restart.",
            discussion: "Its readings still in the spool stay there, counted under its name: they are delivered if it is added again, or leave by the spool's cap or TTL (counted as dropped).")
        @Argument(help: "The leaf's device id.") var deviceId: String
        @Flag(help: "Keep its key in the secrets.") var keepKey = false
        @Option(help: "Configuration file.") var config = "/etc/fieldgate/fieldgate.toml"
        @Option(help: "fieldgated's control socket.") var socket = "/run/fieldgate/control.sock"
        @Flag(help: "Do not apply to the running daemon.") var noReload = false

        func run() async throws {
            let all = LeafLocation.all(configPath: config)
            guard let leaf = all.first(where: { $0.deviceID == deviceId }) else {
                throw Failure("fieldgatectl: \(deviceId) is not configured (leaves: \(all.map(\.deviceID).joined(separator: ", ")))")
            }
            guard leaf.fileHoldsOnlyIt, leaf.file != config else {
                throw Failure("fieldgatectl: \(deviceId) shares \(leaf.file) with other entries: remove its [[leaf]] at line \(leaf.line ?? 0) by hand, then fieldgatectl reload")
            }
            var files = ConfigFiles(configPath: config)
            try files.remove(leaf.file)
            let keyShared = all.contains { $0.deviceID != deviceId && $0.keyName == leaf.keyName }
            var keyNote = ""
            if keepKey || leaf.keyName == nil {
                keyNote = ""
            } else if keyShared {
                keyNote = "; its key stays (another leaf uses it)"
            } else if let name = leaf.keyName, let text = ConfigFiles.read(files.secretsPath) {
                var secrets = TOMLTextEditor(text)
                if secrets.remove("keys", name) {
                    try files.write(files.secretsPath, secrets.text)
                    keyNote = " and its key"
                } else {
                    keyNote = "; no line \(name) = … under [keys] in \(files.secretsPath) to remove (edit it by hand if the key is there in another form)"
                }
            }
            do { _ = try GatewaySettings.load(path: config) } catch {
                let notRestored = files.restore()
                printProblems(error)
                throw Failure("fieldgatectl: the configuration would not be valid without it: " + (notRestored.isEmpty ? "nothing changed" : "and these files could not be put back: " + notRestored.joined(separator: "; ")))
            }
            say("removed \(leaf.file)" + keyNote)
            guard !noReload else { return }
            let spooled = (try? ControlClient.request(["command": "spool-stats"], socketPath: socket))?["depth_by_leaf"]?[deviceId]?.intValue ?? 0
            let answer = try ConnectionOptions(socket: socket).ask("reload", ["trigger": "fieldgatectl leaf remove"])
            say("fieldgated: \(answer["reloaded"]?.stringValue ?? "reloaded")")
            if spooled > 0 {
                say("\(spooled) readings of \(deviceId) stay in the spool (fieldgatectl spool stats): delivered if it is added again, otherwise dropped by the spool's cap or TTL, counted")
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Every configured leaf: adapter, file, and (from the daemon) state and spooled readings.")
        @Option(help: "Configuration file.") var config = "/etc/fieldgate/fieldgate.toml"
        @Option(help: "fieldgated's control socket.") var socket = "/run/fieldgate/control.sock"
        @Flag(help: "Print JSON for scripts.") var json = false

        func run() throws {
            let leaves = LeafLocation.all(configPath: config)
            let live = (try? ControlClient.request(["command": "devices"], socketPath: socket))?.arrayValue ?? []
            let state = Dictionary(live.compactMap { d in d["device_id"]?.stringValue.map { ($0, d) } }, uniquingKeysWith: { a, _ in a })
            let spooled = (try? ControlClient.request(["command": "spool-stats"], socketPath: socket))?["depth_by_leaf"]?.objectValue ?? [:]
            var items: [JSONValue] = leaves.map { l in
                ["device_id": .string(l.deviceID), "adapter": .string(l.adapter), "file": .string(l.file),
                 "state": state[l.deviceID]?["state"] ?? (live.isEmpty ? "daemon not reachable" : "not running (reload?)"),
                 "spooled": spooled[l.deviceID] ?? .int(0), "last_error": state[l.deviceID]?["last_error"] ?? .null]
            }
            // Readings of leaves no longer configured are still the gateway's to account for.
            for (id, n) in spooled.sorted(by: { $0.key < $1.key }) where !leaves.contains(where: { $0.deviceID == id }) && state[id] == nil && (n.intValue ?? 0) > 0 {
                items.append(["device_id": .string(id), "adapter": "-", "file": "-", "state": "not configured", "spooled": n, "last_error": .null])
            }
            if json { print(JSONValue.array(items).pretty); return }
            printTable(["DEVICE", "ADAPTER", "STATE", "SPOOLED", "FILE"], items.map { i in
                [i["device_id"]?.stringValue ?? "", i["adapter"]?.stringValue ?? "", i["state"]?.stringValue ?? "",
                 String(i["spooled"]?.intValue ?? 0), i["file"]?.stringValue ?? ""]
            })
        }
    }
}

/// A line from standard input without echoing it when it is a terminal (a key must not stay on the screen).
func readSecretLine() -> String? {
    var saved = termios()
    let isTerminal = isatty(0) == 1 && tcgetattr(0, &saved) == 0
    if isTerminal {
        var quiet = saved
        quiet.c_lflag &= ~tcflag_t(ECHO)
        tcsetattr(0, TCSANOW, &quiet)
    }
    defer { if isTerminal { tcsetattr(0, TCSANOW, &saved); say("") } }
    return readLine(strippingNewline: true)?.trimmed()
}

/// Reloads the running daemon and waits for `device` to be ready (or to fail) on the hub.
func applyAndWatch(_ device: String, socket: String) async throws {
    guard FileManager.default.fileExists(atPath: socket) else {
        say("fieldgated is not running (no \(socket)): it takes the leaf when it starts")
        return
    }
    let answer = try ConnectionOptions(socket: socket).ask("reload", ["trigger": "fieldgatectl leaf add"])
    say("fieldgated: \(answer["reloaded"]?.stringValue ?? "reloaded")")
    let deadline = MonotonicClock.milliseconds() + 30_000
    var last = "not seen yet"
    while MonotonicClock.milliseconds() < deadline {
        let devices = try? ControlClient.request(["command": "devices"], socketPath: socket)
        if let leaf = devices?.arrayValue?.first(where: { $0["device_id"]?.stringValue == device }) {
            let state = leaf["state"]?.stringValue ?? "?"
            if state == "ready" { say("✓ \(device) is ready on the hub"); return }
            last = state + (leaf["last_error"]?.stringValue.map { ": \($0)" } ?? "")
            if state == "refused" { break }
        }
        try await Task.sleep(for: .milliseconds(250))
    }
    throw Failure("fieldgatectl: \(device) was added, but is \(last); fieldgatectl devices shows it, fieldgatectl check tests its key")
}
