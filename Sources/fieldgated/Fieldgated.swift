import ArgumentParser
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
import Uplink

#if canImport(Glibc)
import Glibc
#endif

/// The gateway daemon: spool + uplink + adapters + the gateway's own identity, from /etc/fieldgate.
@main
struct Fieldgated: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fieldgated", abstract: "fieldgate: leaf devices to Azure IoT Hub over one AMQP connection.",
        subcommands: [Run.self, SimulateUDPLeaf.self], defaultSubcommand: Run.self)
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Run the gateway (the default).")

    @Option(help: "Configuration file.") var config = "/etc/fieldgate/fieldgate.toml"
    @Option(help: "Log level: trace, debug, info, notice, warning, error.") var logLevel = "info"

    func run() async throws {
        var logger = Logger(label: "fieldgated")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        let settings: GatewaySettings
        do { settings = try GatewaySettings.load(path: config) } catch {
            let line = "fieldgated: \(error)\n"  // one line on stderr: file[:line]: what and how to fix
            _ = line.withCString { write(2, $0, strlen($0)) }
            throw ExitCode(78)  // EX_CONFIG
        }
        let spool = try Spool(configuration: settings.spool, logger: logger)
        var identityConfig = GatewayIdentity.Configuration(deviceID: settings.gateway.device_id, version: Version.current)
        if let c = settings.gateway.reboot_command { identityConfig.rebootCommand = c }
        if let c = settings.gateway.restart_command { identityConfig.restartCommand = c }
        let identity = GatewayIdentity(configuration: identityConfig, spool: spool, logger: logger)
        let wake = WakeBox()
        let udp = try settings.udp.map { c throws(UDPAdapterError) in try UDPAdapter(configuration: c, spool: spool, onAppended: { wake.wake() }, logger: logger) }
        let serial = try settings.serialPorts.map { c throws(SerialAdapterError) in try SerialAdapter(configuration: c, spool: spool, onAppended: { wake.wake() }, logger: logger) }
        var owners: [String: any LeafRouter] = [:]
        for leaf in udp?.configuration.leaves ?? [] { owners[leaf.deviceID] = udp }
        for port in serial { for leaf in port.configuration.allLeaves { owners[leaf] = port } }
        let uplink = try Uplink(configuration: settings.uplink, leaves: [settings.gatewayLeaf] + settings.leaves, spool: spool,
                                router: GatewayRouter(gateway: identity, owners: owners), logger: logger)
        identity.attach(uplink)
        wake.set(uplink)
        var services: [any Service] = [uplink, HealthReporter(identity: identity)]
        if let udp { services.append(udp); logger.info("udp adapter on port \(udp.port) (\(udp.configuration.leaves.count) leaves)") }
        for port in serial { services.append(port); logger.info("serial adapter on \(port.configuration.path) (\(port.configuration.allLeaves.count) leaves)") }
        logger.info("fieldgated \(Version.current): hub \(settings.uplink.hostName), \(settings.leaves.count) leaves, spool \(settings.spool.directory)")
        let group = ServiceGroup(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await group.run()
        spool.close()
    }
}

enum Version { static let current = "0.1.0" }

/// Lets adapters wake the uplink once it exists.
final class WakeBox: Sendable {
    private let uplink = Mutex<Uplink?>(nil)
    func set(_ u: Uplink) { uplink.withLock { $0 = u } }
    func wake() { uplink.withLock { $0 }?.wake() }
}

/// Reports the gateway's health to its twin periodically.
struct HealthReporter: Service {
    let identity: GatewayIdentity
    func run() async throws {
        // Cancelled at graceful shutdown, so the services after it in the group are not kept waiting.
        try? await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await identity.reportHealthIfDue()
                try await Task.sleep(for: .seconds(5))
            }
        }
    }
}
