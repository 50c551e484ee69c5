import Dispatch
import ArgumentParser
import ControlSocket
import FieldgateCtl
import FieldgateCore
import Gateway
import GatewayConfig
import Logging
import ServiceLifecycle
import SerialAdapter
import Spool
import UDPAdapter
import UnixSignals
import Synchronization
import Systemd
import Uplink

#if canImport(Glibc)
import Glibc
#endif

/// The gateway daemon: spool + uplink + adapters + the gateway's own identity, from /etc/fieldgate.
@main
struct Fieldgated: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fieldgated", abstract: "fieldgate: leaf devices to Azure IoT Hub over one AMQP connection.",
        discussion: "Exit status: 0 stopped cleanly; 1 a failure at start (the reason on stderr); 64 a usage error; 78 an invalid configuration (systemd does not restart it).",
        version: FieldgateVersion.current,
        subcommands: [Run.self, SimulateUDPLeaf.self], defaultSubcommand: Run.self)

    /// One binary, two programs: installed as /usr/sbin/fieldgated with /usr/bin/fieldgatectl linked to it.
    static func main() async {
        if CommandLine.arguments.first?.split(separator: "/").last == "fieldgatectl" {
            await Fieldgatectl.runAsProgram()
            return
        }
        await main(nil)
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Run the gateway (the default).")

    @Option(help: "Configuration file.") var config = "/etc/fieldgate/fieldgate.toml"
    @Option(help: "Log level: trace, debug, info, notice, warning, error.") var logLevel = "info"

    func run() async throws {
        MemoryHousekeeping.limitArenas()
        let level = Logger.Level(rawValue: logLevel) ?? .info
        DaemonLogging.bootstrap(level: level)
        let logger = Logger(label: "fieldgated")
        let settings: GatewaySettings
        do { settings = try GatewaySettings.load(path: config) } catch {
            // One line per problem: file:line: what is wrong and how to fix it. Under systemd each is a journal entry
            // at error priority (journalctl -p err finds them); elsewhere plain lines on stderr.
            if JournalLogHandler.stderrIsJournal {
                for problem in error.problems { logger.error("invalid configuration: \(problem)", metadata: ["file": "\(problem.file)"]) }
            } else {
                let text = error.problems.map { "fieldgated: \($0)\n" }.joined()
                _ = text.withCString { write(2, $0, strlen($0)) }
            }
            throw ExitCode(78)  // EX_CONFIG
        }
        let daemon = try Daemon(settings: settings, logger: logger)
        let configPath = config
        let notifier = SystemdNotifier()
        let liveness = Liveness(stallMilliseconds: Liveness.stallMilliseconds(
            pingIntervalMs: notifier.watchdogPingMilliseconds,
            configured: settings.stallMilliseconds))
        let reloader = Reloader(notifier: notifier, statusLine: { await daemon.statusLine() }, logger: logger) { () throws(ConfigReloadError) in
            // Reading and checking the files blocks (file I/O, user database lookups): not on the cooperative pool.
            let loaded = await withCheckedContinuation { (c: CheckedContinuation<Result<GatewaySettings, ConfigError>, Never>) in
                DispatchQueue(label: "fieldgate.reload").async {
                    c.resume(returning: Result { () throws(ConfigError) in try GatewaySettings.load(path: configPath) })
                }
            }
            switch loaded {
            case .success(let next): return try await daemon.apply(next)
            case .failure(let error): throw ConfigReloadError(description: "\(error)")
            }
        }
        let supervisor = Supervisor(
            notifier: notifier, heartbeats: { daemon.heartbeats }, statusLine: { await daemon.statusLine() },
            reloader: reloader, logger: logger, liveness: liveness)
        logger.info("fieldgated \(FieldgateVersion.current): hub \(settings.uplink.hostName), \(settings.leaves.count) leaves, spool \(settings.spool.directory)")
        let handler = ControlHandler(daemon: daemon, allowDebug: settings.allowDebug, liveness: liveness, reloader: reloader)
        daemon.identity.setStatusProvider { await handler.handle(["command": "status"]) }  // the `status` method
        var control: ControlServer?
        do throws(ControlError) {
            control = try ControlServer(path: settings.controlSocket, handler: { await handler.handle($0) })
            control?.start()
        } catch {
            logger.warning("no control socket, fieldgatectl cannot reach this daemon: \(error)")
        }
        // Shut down in reverse order: the supervisor first (STOPPING=1), then the daemon (adapters, then the uplink).
        var metrics: MetricsServer?
        if let address = settings.metricsAddress {
            do throws(ControlError) {
                metrics = try MetricsServer(address: address) { await handler.metrics() }
                metrics?.start()
                logger.info("Prometheus metrics on http://\(address)/metrics")
            } catch {
                logger.error("no metrics endpoint: \(error)")
            }
        }
        let trimming = MemoryHousekeeping.startTrimming()
        defer { trimming.cancel() }
        let startupPages = Task { await MemoryHousekeeping.releaseStartupPages(settled: { await daemon.startSettled() }, logger: logger) }
        defer { startupPages.cancel() }
        let group = ServiceGroup(services: [daemon, HealthReporter(identity: daemon.identity), supervisor], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await group.run()
        control?.stop()
        metrics?.stop()
        daemon.spool.close()
        logger.notice("stopped")
    }
}


