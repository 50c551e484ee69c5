import ArgumentParser
import ControlSocket
import FieldgateCore
import GatewayConfig
import Uplink

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#endif

struct CheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Is everything in place for data to flow? Configuration, file access, clock, DNS, TCP, TLS, and the hub's answer to each identity's key.",
        discussion: "One line per check: ✓ passed, ! warning, ✗ failed (with a hint), - skipped. Exit 1 when a check failed.")
    @Option(help: "Configuration file (devices.d/ and secrets.toml beside it).") var config = "/etc/fieldgate/fieldgate.toml"
    @Flag(help: "Put a token for every leaf (default: the gateway and the first 100 leaves).") var allLeaves = false
    @Flag(help: "Print JSON for scripts.") var json = false

    func run() async throws {
        let results = await GatewayChecks(configPath: config, allLeaves: allLeaves).run()
        let failed = results.contains { $0.verdict == .fail }
        if json {
            print(JSONValue.object(["ok": .bool(!failed), "checks": .array(results.map(\.json))]).pretty)
        } else {
            for r in results { print(r.line) }
        }
        if failed { throw ExitCode(1) }
    }
}

struct ReloadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reload",
        abstract: "Apply the configuration to the running fieldgated and wait for its answer (systemctl reload runs this).",
        discussion: "Exit 0 when applied; exit 1 with the reason when refused (the running configuration stays, and fieldgatectl status shows why until the next reload).")
    @OptionGroup var options: ConnectionOptions

    func run() throws {
        let answer = try options.ask("reload", ["trigger": .string(Self.underSystemd ? "systemctl reload" : "fieldgatectl reload")])
        if options.json { print(answer.pretty); return }
        print("reloaded: \(answer["reloaded"]?.stringValue ?? "")")
    }
}

extension ReloadCommand {
    /// ExecReload runs with the unit's environment, which names the invocation.
    static var underSystemd: Bool { getenv("INVOCATION_ID") != nil }
}

struct Connect: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Point the gateway at a hub from a connection string: write [hub], [gateway] and the key, check, then start (or reload) fieldgated.",
        discussion: """
            Takes the gateway device's connection string as az or the portal print it (HostName=…;DeviceId=…;SharedAccessKey=…), \
            or a hub policy's (HostName=…;SharedAccessKeyName=…;SharedAccessKey=…) with --device-id. Without the argument it reads \
            the string from standard input, which keeps the key out of the shell history. If a check fails, the previous files are \
            put back and nothing is started.
            """)
    @Argument(help: "The connection string (default: read from standard input).") var connectionString: String?
    @Option(help: "The gateway's device id, with a hub policy connection string.") var deviceId: String?
    @Option(help: "AMQPS port, when the hub is not on 5671 (a fieldgate-hub).") var port: Int?
    @Option(help: "Connect to this address instead of resolving the host name.") var address: String?
    @Option(help: "CA bundle the hub's certificate chains to (default: the system's).") var caFile: String?
    @Option(help: "Configuration file.") var config = "/etc/fieldgate/fieldgate.toml"
    @Option(help: "fieldgated's control socket.") var socket = "/run/fieldgate/control.sock"
    @Flag(help: "Show what would be written, change nothing.") var dryRun = false
    @Flag(help: "Write and check, but do not start or reload the service.") var noStart = false

    func run() async throws {
        let text = connectionString ?? readLine(strippingNewline: true) ?? ""
        let cs: HubConnectionString
        do { cs = try HubConnectionString.parse(text) } catch { throw Failure("fieldgatectl: \(error)") }
        guard let device = cs.deviceID ?? deviceId else {
            throw Failure("fieldgatectl: this is a hub policy's connection string (\(cs.keyName ?? "")): name the gateway's device with --device-id")
        }
        if let d = deviceId, let c = cs.deviceID, d != c { throw Failure("fieldgatectl: --device-id \(d) but the connection string is for \(c)") }
        var files = ConfigFiles(configPath: config)
        var main = TOMLTextEditor(ConfigFiles.read(config) ?? ConfigTemplate.main)
        // The whole of [hub]'s connection: what a previous hub needed (another port, address or CA) goes.
        main.set("hub", "host", TOMLTextEditor.string(cs.hostName))
        if let port { main.set("hub", "port", String(port)) } else { main.remove("hub", "port") }
        if let address { main.set("hub", "address", TOMLTextEditor.string(address)) } else { main.remove("hub", "address") }
        if let caFile { main.set("hub", "ca_file", TOMLTextEditor.string(caFile)) } else { main.remove("hub", "ca_file") }
        main.set("gateway", "device_id", TOMLTextEditor.string(device))
        main.remove("gateway", "key_ref")
        var secrets = TOMLTextEditor(ConfigFiles.read(files.secretsPath) ?? ConfigTemplate.secrets)
        let credential: String
        if let policy = cs.keyName {
            main.set("gateway", "credential", TOMLTextEditor.string("policy:\(policy)"))
            secrets.set("policies", policy, TOMLTextEditor.string(cs.key))
            credential = "hub policy \(policy) (secrets [policies])"
        } else {
            main.remove("gateway", "credential")
            secrets.set("keys", device, TOMLTextEditor.string(cs.key))
            credential = "its device key (secrets [keys] \(device))"
        }
        say("hub \(cs.hostName)\(port.map { ":\($0)" } ?? ""), gateway \(device) authenticated by \(credential)")
        if dryRun {
            say("would write \(config):")
            say(main.text)
            say("would write \(files.secretsPath) (keys not shown), mode 0640, group \(Secrets.serviceGroup)")
            return
        }
        do throws(Failure) {
            try files.write(config, main.text)
            try files.write(files.secretsPath, secrets.text)
        } catch {
            _ = files.restore()  // the main file must not point at a key that was not written
            throw error
        }
        say("wrote \(config) and \(files.secretsPath)")
        let results = await GatewayChecks(configPath: config, sample: 0).run()
        for r in results { say(r.line) }
        if results.contains(where: { $0.verdict == .fail }) {
            let notRestored = files.restore()
            guard notRestored.isEmpty else {
                throw Failure("fieldgatectl: a check failed, and the previous files could not all be put back: " + notRestored.joined(separator: "; "))
            }
            throw Failure("fieldgatectl: a check failed: the previous files are back, nothing was started")
        }
        guard !noStart else { say("checked; start it with: systemctl enable --now fieldgated"); return }
        guard FileManager.default.fileExists(atPath: "/run/systemd/system") else {
            say("no systemd here: start the gateway with fieldgated run --config \(config)")
            return
        }
        let active = HostCommand.capture(["systemctl", "is-active", "fieldgated"])?.output == "active"
        var argv = active ? ["systemctl", "reload", "fieldgated"] : ["systemctl", "enable", "--now", "fieldgated"]
        say(argv.joined(separator: " "))
        let status = HostCommand.run(argv)
        if status != 0 && active {
            // A reload refuses what only a restart applies (another gateway device id): restart then.
            argv = ["systemctl", "restart", "fieldgated"]
            say("the running daemon cannot take this by a reload: " + argv.joined(separator: " "))
            guard HostCommand.run(argv) == 0 else {
                throw Failure("fieldgatectl: \(argv.joined(separator: " ")) failed: see systemctl status fieldgated and journalctl -u fieldgated")
            }
        } else if status != 0 {
            throw Failure("fieldgatectl: \(argv.joined(separator: " ")) failed: see systemctl status fieldgated and journalctl -u fieldgated")
        }
        try await waitForGateway(device, socket: socket)
    }

    /// Until the gateway's own identity is ready on the hub (30 s).
    private func waitForGateway(_ device: String, socket: String) async throws {
        let deadline = MonotonicClock.milliseconds() + 30_000
        var last = "no answer from fieldgated yet"
        while MonotonicClock.milliseconds() < deadline {
            if let devices = try? ControlClient.request(["command": "devices"], socketPath: socket),
               let gateway = devices.arrayValue?.first(where: { $0["device_id"]?.stringValue == device }) {
                let state = gateway["state"]?.stringValue ?? "?"
                if state == "ready" { say("✓ fieldgated is connected: gateway \(device) ready"); return }
                last = "gateway \(device) is \(state)" + (gateway["last_error"]?.stringValue.map { " (\($0))" } ?? "")
            }
            try await Task.sleep(for: .milliseconds(250))
        }
        throw Failure("fieldgatectl: fieldgated runs, but within 30 s: \(last); see fieldgatectl status")
    }
}

/// A progress line on stdout, at once.
func say(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
}
