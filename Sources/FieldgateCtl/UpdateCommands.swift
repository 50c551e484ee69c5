import ArgumentParser
import FieldgateCore
import GatewayConfig
import SoftwareUpdate
import Spool

#if canImport(Glibc)
import Glibc
#endif

/// `fieldgatectl update`: the privileged helper's entry (`apply`, run as root by fieldgate-update.service when the
/// daemon left a request) and what the last update did (`status`). docs/software-update.md.
struct UpdateCommands: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "update", abstract: "Software update and factory reset of the gateway (through its twin).",
                                                    subcommands: [Status.self, Apply.self])

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The last update: its status in the twin's words, and the update helper's last result.")
        @Option(help: "Configuration file.") var config = "/etc/fieldgate/fieldgate.toml"
        @Flag(help: "JSON output.") var json = false

        func run() throws {
            let s: GatewaySettings
            do { s = try GatewaySettings.load(path: config) } catch {
                printProblems(error)
                throw ExitCode(78)
            }
            let record = StateFile.read(s.update.directory + "/" + UpdateHandoff.recordFile).flatMap { JSONValue.parse($0) }.flatMap { UpdateRecord(json: $0) } ?? UpdateRecord()
            let result = UpdateHandoff.Report.read(s.update.helperDirectory + "/" + UpdateHandoff.resultFile)
            let out: JSONValue = ["enabled": .bool(s.update.enabled), "factoryReset": .bool(s.update.factoryReset),
                                  "firmware": record.reported(currentVersion: FieldgateVersion.current), "helper": result?.json ?? .null]
            if json { print(out.pretty); return }
            print("software update: \(s.update.enabled ? "on" : "off ([update] enabled)"); factory reset: \(s.update.factoryReset ? "on" : "off")")
            print("running \(FieldgateVersion.current); last update: \(record.status.rawValue)\(record.pendingVersion.isEmpty ? "" : " → \(record.pendingVersion)")\(record.substatus.isEmpty ? "" : " (\(record.substatus))")")
            if let result {
                print("update helper, last result: \(result.outcome.rawValue) \(result.version) at \(WallClock.iso8601(milliseconds: result.atMs))\(result.reason.isEmpty ? "" : ": \(result.reason)")")
            }
        }
    }

    struct Apply: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Carry out the daemon's waiting request (install a verified package, or a factory reset). Run as root by fieldgate-update.service.")
        @Option(help: "Configuration file.") var config = "/etc/fieldgate/fieldgate.toml"

        func run() throws {
            guard geteuid() == 0 else {
                writeStandardError("fieldgatectl update apply: must run as root (fieldgate-update.service starts it)\n")
                throw ExitCode(77)
            }
            let s: GatewaySettings
            do { s = try GatewaySettings.load(path: config) } catch {
                // The request is taken all the same (else the path unit would start this again and again) and
                // refused with the reason, where the daemon reads it.
                printProblems(error)
                let defaults = UpdateConfiguration(directory: "/var/lib/fieldgate/update")
                let request = defaults.directory + "/" + UpdateHandoff.requestFile
                let id = StateFile.read(request, limit: 64 << 10).flatMap { JSONValue.parse($0) }?["id"]?.stringValue ?? "unknown"
                unlink(request)
                let report = UpdateHandoff.Report(requestID: id, outcome: .error, reason: "the update helper cannot read \(config): \(error.problems.first.map { "\($0)" } ?? "invalid")")
                mkdir(defaults.helperDirectory, 0o755)
                for name in [UpdateHandoff.progressFile, UpdateHandoff.resultFile] {
                    StateFile.replace(defaults.helperDirectory + "/" + name, with: report.json.bytes, durable: true, mode: 0o644)
                }
                throw ExitCode(78)
            }
            let stateDirectory = s.update.directory.lastIndex(of: "/").map { String(s.update.directory[..<$0]) } ?? "."
            var settings = UpdateHelper.Settings(
                daemonDirectory: s.update.directory, updateEnabled: s.update.enabled, factoryResetEnabled: s.update.factoryReset,
                resetClears: s.update.factoryResetClears, maxBytes: s.update.maxDownloadBytes, spoolDirectory: s.spool.directory,
                stateDirectory: stateDirectory, devicesDirectory: (directoryOf(config).isEmpty ? "." : directoryOf(config)) + "/devices.d")
            settings.helperDirectory = s.update.helperDirectory
            settings.allowDowngrade = s.update.allowDowngrade
            settings.keyring = s.update.keyring
            let helper = UpdateHelper(settings: settings) { line in writeStandardError("fieldgate-update: \(line)\n") }
            if !helper.runOnce() { writeStandardError("fieldgate-update: no request waiting\n") }
        }
    }
}

private func writeStandardError(_ text: String) {
    _ = text.withCString { write(2, $0, strlen($0)) }
}
