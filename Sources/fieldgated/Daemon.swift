import FieldgateCore
import Gateway
import GatewayConfig
import Logging
import SerialAdapter
import ServiceLifecycle
import Spool
import Synchronization
import UDPAdapter
import Uplink

/// The running gateway: spool → uplink → adapters, plus the gateway's own identity.
final class Daemon: Sendable {
    let spool: Spool
    let uplink: Uplink
    let identity: GatewayIdentity
    let udp: UDPAdapter?
    let serial: [SerialAdapter]
    private let settings: Mutex<GatewaySettings>
    private let logger: Logger

    init(settings: GatewaySettings, logger: Logger) throws {
        self.logger = logger
        self.settings = Mutex(settings)
        spool = try Spool(configuration: settings.spool, logger: logger)
        var identityConfig = GatewayIdentity.Configuration(deviceID: settings.gateway.device_id, version: Version.current)
        if let c = settings.gateway.reboot_command { identityConfig.rebootCommand = c }
        if let c = settings.gateway.restart_command { identityConfig.restartCommand = c }
        identity = GatewayIdentity(configuration: identityConfig, spool: spool, logger: logger)
        let wake = WakeBox()
        let spool = spool
        udp = try settings.udp.map { c throws(UDPAdapterError) in try UDPAdapter(configuration: c, spool: spool, onAppended: { wake.wake() }, logger: logger) }
        serial = try settings.serialPorts.map { c throws(SerialAdapterError) in try SerialAdapter(configuration: c, spool: spool, onAppended: { wake.wake() }, logger: logger) }
        var owners: [String: any LeafRouter] = [:]
        for leaf in udp?.configuration.leaves ?? [] { owners[leaf.deviceID] = udp }
        for port in serial { for leaf in port.configuration.allLeaves { owners[leaf] = port } }
        uplink = try Uplink(configuration: settings.uplink, leaves: [settings.gatewayLeaf] + settings.leaves, spool: spool,
                            router: GatewayRouter(gateway: identity, owners: owners), logger: logger)
        identity.attach(uplink)
        wake.set(uplink)
        if let udp { logger.info("udp adapter on port \(udp.port) (\(udp.configuration.leaves.count) leaves)") }
        for port in serial { logger.info("serial adapter on \(port.configuration.path) (\(port.configuration.allLeaves.count) leaves)") }
    }

    /// In start order; a ServiceGroup shuts them down in reverse (adapters before the uplink).
    var services: [any Service] {
        var s: [any Service] = [uplink, HealthReporter(identity: identity)]
        if let udp { s.append(udp) }
        s += serial.map { $0 as any Service }
        return s
    }

    var heartbeats: [Heartbeat] {
        [spool.heartbeat] + uplink.heartbeats + (udp.map { [$0.heartbeat] } ?? []) + serial.map(\.heartbeat)
    }

    /// Which adapter serves each leaf (for `fieldgatectl devices`).
    var adapterNames: [String: String] {
        var names: [String: String] = [:]
        for leaf in udp?.configuration.leaves ?? [] { names[leaf.deviceID] = "udp" }
        for port in serial { for leaf in port.configuration.allLeaves { names[leaf] = "serial:\(port.configuration.path)" } }
        return names
    }

    func statusLine() async -> String {
        StatusLine.compose(uplink: await uplink.status(), spool: spool.statistics())
    }

    /// Applies a reloaded configuration (SIGHUP).
    func apply(_ next: GatewaySettings) async throws(ConfigReloadError) -> String {
        settings.withLock { $0 = next }
        return "validated"
    }
}

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
