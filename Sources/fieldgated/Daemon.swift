import FieldgateCore
import Gateway
import GatewayConfig
import Logging
import ModbusAdapter
import SerialAdapter
import ServiceLifecycle
import SoftwareUpdate
import HubTunnel
import Provisioning
import Spool
import Synchronization
import UDPAdapter
import Uplink

/// The running gateway: spool → uplink → adapters, plus the gateway's own identity. A `Service` whose parts can
/// change while it runs (reload): adapters and leaves are swapped without dropping the hub connection; new hub
/// settings bring a new uplink (a reconnect). Stops adapters first, then the uplink, so what the adapters still
/// wrote is in the spool before the connection closes.
final class Daemon: Service, Sendable {
    let spool: Spool
    let identity: GatewayIdentity
    private let logger: Logger
    private let wake = WakeBox()

    struct Parts {
        var settings: GatewaySettings
        var uplink: Uplink
    }
    /// Always set once `init` returns (the provisioner's callback, made before the uplink, reads it).
    private let parts = PartsBox()

    /// The parts, shared with the provisioner's callback (which exists before them).
    final class PartsBox: Sendable {
        private let state = Mutex<Parts?>(nil)
        let provisioner = Mutex<Provisioner?>(nil)
        /// Reloads and new assignments change the uplink's leaves one at a time: each computes them from the
        /// settings and uplink of the moment, so neither undoes the other or lands on an uplink being replaced.
        let leafChanges = AsyncGate()
        func withLock<T>(_ body: (inout Parts?) -> T) -> T { state.withLock { body(&$0) } }
    }
    /// The adapters, apart: the uplink's router looks leaves up here (it exists before the uplink does).
    private let adapters = AdapterTable()
    /// Registers identities with DPS when `[provisioning]` is set; its assignments decide each identity's hub.
    let provisioner: Provisioner?
    private let refusalWatch = Mutex<Task<Void, Never>?>(nil)

    init(settings: GatewaySettings, logger: Logger) throws {
        self.logger = logger
        spool = try Spool(configuration: settings.spool, logger: logger)
        var identityConfig = GatewayIdentity.Configuration(deviceID: settings.gateway.device_id, version: FieldgateVersion.current)
        if let c = settings.gateway.reboot_command { identityConfig.rebootCommand = c }
        if let c = settings.gateway.restart_command { identityConfig.restartCommand = c }
        identityConfig.logUpload = settings.logUploadMaxBytes.map { GatewayIdentity.LogUpload(maxBytes: $0) }
        identity = GatewayIdentity(configuration: identityConfig, spool: spool, logger: logger)
        identity.setUpdateAgent(Self.makeUpdateAgent(settings, identity: identity, spool: spool, logger: logger))
        let wake = self.wake
        let spool = self.spool
        let udp = try settings.udp.map { c throws(UDPAdapterError) in try UDPAdapter(configuration: c, spool: spool, onAppended: { wake.wake() }, onReachable: { wake.reachable($0) }, logger: logger) }
        let serial = try settings.serialPorts.map { c throws(SerialAdapterError) in try Self.makePort(c, spool: spool, wake: wake, logger: logger) }
        let modbus = settings.modbusBuses.map { Self.makeBus($0, spool: spool, wake: wake, logger: logger) }
        adapters.set(Adapters(udp: udp, serial: serial, modbus: modbus))
        let parts = self.parts
        provisioner = settings.provisioning.map { c in
            Provisioner(configuration: c, logger: logger) { fresh in
                await Self.provisioned(fresh, parts: parts, provisioner: parts.provisioner.withLock { $0 }, logger: logger)
            }
        }
        parts.provisioner.withLock { [provisioner] in $0 = provisioner }
        provisioner?.set(identities: Self.provisioningIdentities(settings))
        // The router finds a leaf's adapter when a command comes, so reloads can change adapters under it.
        let uplink = try Uplink(configuration: settings.uplink, leaves: Self.uplinkLeaves(settings, provisioner: provisioner), spool: spool,
                                router: GatewayRouter(gateway: identity) { [adapters] in adapters.owner(of: $0) }, logger: logger)
        identity.attach(uplink)
        wake.set(uplink)
        parts.withLock { $0 = Parts(settings: settings, uplink: uplink) }
        if let udp { logger.info("udp adapter on port \(udp.port) (\(udp.configuration.leaves.count) leaves)") }
        for port in serial { logger.info("serial adapter on \(port.configuration.path) (\(port.configuration.allLeaves.count) leaves)") }
        for bus in modbus { logger.info("modbus bus \(bus.configuration.name) on \(bus.configuration.endpoint) (\(bus.leaves.count) leaves)") }
    }

    /// Downloads go as the hub's HTTPS requests do (the configured proxy), with the system's CAs unless
    /// `[update] ca_file` names others.
    private static func makeUpdateAgent(_ settings: GatewaySettings, identity: GatewayIdentity, spool: Spool, logger: Logger) -> UpdateAgent {
        var https = HTTPSSettings()
        https.caFile = settings.updateCAFile
        https.proxy = settings.uplink.webSocket.proxy
        https.timeoutMilliseconds = 3_600_000  // a stalled transfer ends sooner (libcurl's low-speed limit)
        var environment = UpdateAgent.Environment(
            report: { [identity] patch, timeout in await identity.reportForUpdate(patch, timeout: timeout) },
            flushSpool: { [identity] in await identity.flushSpool() },
            spooledSequence: { [spool] in spool.lastAppendedSequence },
            https: https,
            reboot: { [identity] in await identity.reboot() })
        environment.hubConnected = { [identity] in await identity.hubConnected() }
        return UpdateAgent(configuration: settings.update, currentVersion: FieldgateVersion.current, environment: environment, logger: logger)
    }

    var uplink: Uplink { parts.withLock { $0!.uplink } }
    var udp: UDPAdapter? { adapters.current.udp }
    var serial: [SerialAdapter] { adapters.current.serial }
    var modbus: [ModbusBus] { adapters.current.modbus }

    func run() async throws {
        let a = adapters.current
        uplink.start()
        if let provisioner {
            provisioner.start()
            refusalWatch.withLock { $0 = Task { [self] in await watchRefusals(provisioner) } }
        }
        if let update = identity.update { Task { await update.resume() } }
        a.udp?.start()
        for port in a.serial { port.start() }
        for bus in a.modbus { bus.start() }
        try? await gracefulShutdown()
        let b = adapters.current
        await b.udp?.stop()
        for port in b.serial { await port.stop() }
        for bus in b.modbus { await bus.stop() }
        let watch = refusalWatch.withLock { $0 }
        watch?.cancel()
        await watch?.value
        await provisioner?.stop()
        await uplink.stop()
    }

    // MARK: provisioning

    /// Identities the hub refuses as unknown or unauthorized (put-token 401/404: deleted from the hub, moved, keys
    /// changed) register with DPS again; the provisioner paces that per identity.
    private func watchRefusals(_ provisioner: Provisioner) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(5))
            let status = await uplink.status()
            let refused = status.leaves.filter { _, leaf in
                leaf.phase == .refused && (leaf.lastError.map { $0.hasPrefix("401 ") || $0.hasPrefix("404 ") } ?? false)
            }.map(\.key).sorted()
            guard !refused.isEmpty else { continue }
            provisioner.reprovision(refused, reason: "refused by their hub")
        }
    }

    /// What `[provisioning]` itself sets (the HTTPS settings it takes from `[hub]` apply at the next start).
    private static func provisioningSection(_ c: ProvisioningConfiguration) -> ProvisioningConfiguration {
        var c = c
        c.https = HTTPSSettings()
        c.userAgent = ""
        return c
    }

    /// The identities that register with DPS: the gateway and every leaf with a key or group credential.
    static func provisioningIdentities(_ settings: GatewaySettings) -> [ProvisioningIdentity] {
        ([settings.gatewayLeaf] + settings.leaves).compactMap { GatewaySettings.provisioningIdentity($0) }
    }

    /// The identities the uplink serves now: each provisioned one on its assigned hub; one still waiting for DPS is
    /// left out (its readings wait in the spool); identities DPS does not provision (hub policies) on the configured hub.
    static func uplinkLeaves(_ settings: GatewaySettings, provisioner: Provisioner?) -> [LeafConfiguration] {
        let all = [settings.gatewayLeaf] + settings.leaves
        guard let provisioner else { return all }
        let assigned = provisioner.assignments
        return all.compactMap { leaf in
            guard GatewaySettings.provisioningIdentity(leaf) != nil else { return leaf }
            guard let a = assigned[leaf.deviceID] else { return nil }
            var placed = leaf
            placed.hubHost = a.hub
            return placed
        }
    }

    /// New assignments: the uplink takes the identities onto connections to their hubs; ones it refused before (a
    /// device re-created by DPS) try again at once.
    private static func provisioned(_ fresh: [String: Assignment], parts: PartsBox, provisioner: Provisioner?, logger: Logger) async {
        await parts.leafChanges.acquire()
        defer { parts.leafChanges.release() }
        guard let provisioner, let (settings, uplink) = parts.withLock({ p in p.map { ($0.settings, $0.uplink) } }) else { return }
        let hubs = Set(fresh.values.map(\.hub)).sorted()
        logger.notice("provisioning: \(fresh.count) identities assigned (hubs: \(hubs.joined(separator: ", ")))")
        do throws(UplinkError) {
            _ = try await uplink.reconfigure(leaves: uplinkLeaves(settings, provisioner: provisioner))
            uplink.retrySoon(Array(fresh.keys))
        } catch {
            logger.error("provisioning: the uplink did not take the assigned identities: \(error)")
        }
    }

    var heartbeats: [Heartbeat] {
        let a = adapters.current
        return [spool.heartbeat] + uplink.heartbeats + (a.udp.map { [$0.heartbeat] } ?? []) + a.serial.map(\.heartbeat) + a.modbus.map(\.heartbeat)
    }

    /// Which adapter serves each leaf (for `fieldgatectl devices`).
    var adapterNames: [String: String] {
        let a = adapters.current
        var names: [String: String] = [:]
        for leaf in a.udp?.configuration.leaves ?? [] { names[leaf.deviceID] = "udp" }
        for port in a.serial { for leaf in port.configuration.allLeaves { names[leaf] = "serial:\(port.configuration.path)" } }
        for bus in a.modbus { for leaf in bus.leaves { names[leaf] = "modbus:\(bus.configuration.name)" } }
        return names
    }

    /// No connection is being opened and no leaf is on its way to the hub: the start's one-time work is done.
    func startSettled() async -> Bool {
        let status = await uplink.status()
        let inTransit: Set<LeafPhase> = [.queued, .authenticating, .attaching]
        return !status.connections.contains { $0.state == "connecting" } && !status.leaves.values.contains { inTransit.contains($0.phase) }
    }

    func statusLine() async -> String {
        StatusLine.compose(uplink: await uplink.status(), spool: spool.statistics())
    }

    // MARK: reload

    /// Applies a reloaded configuration (SIGHUP) as one step: everything new is built first (a port that cannot be
    /// bound refuses the whole reload), then swapped in. Settings that only a restart can change are refused. Callers
    /// go through `Reloader`, which runs one reload at a time.
    func apply(_ next: GatewaySettings) async throws(ConfigReloadError) -> String {
        await parts.leafChanges.acquire()
        defer { parts.leafChanges.release() }
        let old = parts.withLock { $0!.settings }
        var needsRestart: [String] = []
        if next.spool != old.spool { needsRestart.append("[spool]") }
        if next.gateway.device_id != old.gateway.device_id { needsRestart.append("gateway.device_id") }
        if next.controlSocket != old.controlSocket || next.allowDebug != old.allowDebug || next.metricsAddress != old.metricsAddress {
            needsRestart.append("[control]")
        }
        if next.stallMilliseconds != old.stallMilliseconds { needsRestart.append("[daemon]") }
        if next.provisioning.map(Self.provisioningSection) != old.provisioning.map(Self.provisioningSection) { needsRestart.append("[provisioning]") }
        guard needsRestart.isEmpty else {
            throw ConfigReloadError(description: "\(needsRestart.joined(separator: ", ")) changed: only a restart applies that (systemctl restart fieldgated)")
        }
        var summary: [String] = []
        // 1. Build what is new; nothing running is touched yet.
        let current = adapters.current
        let (currentUDP, currentSerial) = (current.udp, current.serial)
        var newUDP = currentUDP
        var udpToStop: UDPAdapter?
        var udpToStart: UDPAdapter?
        let wake = self.wake
        if next.udp != old.udp {
            if let c = next.udp, let udp = currentUDP, (try? udp.reconfigure(c)) != nil {
                summary.append("udp leaves updated")
            } else {
                if let c = next.udp {
                    do throws(UDPAdapterError) {
                        udpToStart = try UDPAdapter(configuration: c, spool: spool, onAppended: { wake.wake() }, onReachable: { wake.reachable($0) }, logger: logger)
                    } catch { throw ConfigReloadError(description: "udp: \(error)") }
                }
                udpToStop = currentUDP
                newUDP = udpToStart
                summary.append(next.udp == nil ? "udp adapter removed" : "udp adapter on port \(next.udp!.port)")
            }
        }
        var newSerial: [SerialAdapter] = []
        var serialToStart: [SerialAdapter] = []
        for c in next.serialPorts {
            if let same = currentSerial.first(where: { $0.configuration == c }) { newSerial.append(same); continue }
            do throws(SerialAdapterError) {
                let port = try Self.makePort(c, spool: spool, wake: wake, logger: logger)
                newSerial.append(port)
                serialToStart.append(port)
                summary.append("serial \(c.path) (re)configured")
            } catch { throw ConfigReloadError(description: "serial \(c.path): \(error)") }
        }
        let serialToStop = currentSerial.filter { port in !newSerial.contains { $0 === port } }
        for port in serialToStop where !next.serialPorts.contains(where: { $0.path == port.configuration.path }) {
            summary.append("serial \(port.configuration.path) removed")
        }
        // Modbus buses: an unchanged bus keeps running (its connection and schedule); a changed one is rebuilt.
        var newModbus: [ModbusBus] = []
        var modbusToStart: [ModbusBus] = []
        for c in next.modbusBuses {
            if let same = current.modbus.first(where: { $0.configuration == c }) { newModbus.append(same); continue }
            let bus = Self.makeBus(c, spool: spool, wake: wake, logger: logger)
            newModbus.append(bus)
            modbusToStart.append(bus)
            summary.append("modbus bus \(c.name) (re)configured")
        }
        let modbusToStop = current.modbus.filter { bus in !newModbus.contains { $0 === bus } }
        for bus in modbusToStop where !next.modbusBuses.contains(where: { $0.name == bus.configuration.name }) {
            summary.append("modbus bus \(bus.configuration.name) removed")
        }
        // The provisioner learns the new identities first, so the leaves given to the uplink below (a new one, or the
        // running one's reconfigure) are placed by assignments that hold for the new credentials.
        provisioner?.set(identities: Self.provisioningIdentities(next))
        var newUplink: Uplink?
        if next.uplink != old.uplink || next.gatewayLeaf != old.gatewayLeaf {
            do throws(UplinkError) { newUplink = try makeUplinkDetached(next) } catch { throw ConfigReloadError(description: "\(error)") }
        }
        // 2. Swap: adapters out, then in; leaves on the running connection, or a new connection for new hub settings.
        await udpToStop?.stop()
        for port in serialToStop { await port.stop() }
        for bus in modbusToStop { await bus.stop() }  // a rebuilt bus's old owner lets go of the port first
        adapters.set(Adapters(udp: newUDP, serial: newSerial, modbus: newModbus))
        let oldUplink = parts.withLock { p -> Uplink in
            p!.settings = next
            return p!.uplink
        }
        udpToStart?.start()
        for port in serialToStart { port.start() }
        for bus in modbusToStart { bus.start() }
        if let newUplink {
            await oldUplink.stop()  // settles with the spool: what was in flight goes out again on the new connection
            parts.withLock { $0!.uplink = newUplink }
            identity.attach(newUplink)
            wake.set(newUplink)
            newUplink.start()
            summary.append("hub settings changed: reconnected")
        } else {
            do throws(UplinkError) {
                let changes = try await oldUplink.reconfigure(leaves: Self.uplinkLeaves(next, provisioner: provisioner))
                if !changes.isEmpty { summary.append("\(changes) on the same connection") }
            } catch { throw ConfigReloadError(description: "\(error)") }
        }
        return summary.isEmpty ? "nothing changed" : summary.joined(separator: "; ")
    }

    /// A serial port whose readings wake the uplink and whose state goes to its leaves' twins.
    private static func makePort(_ c: SerialPortConfiguration, spool: Spool, wake: WakeBox, logger: Logger) throws(SerialAdapterError) -> SerialAdapter {
        let port = try SerialAdapter(configuration: c, spool: spool, onAppended: { wake.wake() }, logger: logger)
        port.reportStates { leaf, patch in wake.report(patch, for: leaf) }
        return port
    }

    /// A Modbus bus whose readings wake the uplink and whose units' states go to their leaves' twins.
    private static func makeBus(_ c: ModbusBusConfiguration, spool: Spool, wake: WakeBox, logger: Logger) -> ModbusBus {
        let bus = ModbusBus(configuration: c, spool: spool, onAppended: { wake.wake() }, logger: logger)
        bus.reportStates { leaf, patch in
            wake.report(patch, for: leaf)
            // A unit back online: a C2D write held for it is retried now rather than at its next back-off.
            if patch["modbus"]?["state"]?["online"] == .bool(true) { wake.reachable(leaf) }
        }
        return bus
    }

    /// A new uplink for new hub settings, not yet attached or started.
    private func makeUplinkDetached(_ settings: GatewaySettings) throws(UplinkError) -> Uplink {
        try Uplink(configuration: settings.uplink, leaves: Self.uplinkLeaves(settings, provisioner: provisioner), spool: spool,
                   router: GatewayRouter(gateway: identity) { [adapters] in adapters.owner(of: $0) }, logger: logger)
    }
}

/// The running adapters.
struct Adapters: Sendable {
    var udp: UDPAdapter?
    var serial: [SerialAdapter] = []
    var modbus: [ModbusBus] = []
}

/// The adapters of the moment, and which one owns a leaf.
final class AdapterTable: Sendable {
    private let state = Mutex(Adapters())

    var current: Adapters { state.withLock { $0 } }

    func set(_ adapters: Adapters) { state.withLock { $0 = adapters } }

    func owner(of deviceID: String) -> (any LeafRouter)? {
        let a = current
        if let udp = a.udp, udp.configuration.leaves.contains(where: { $0.deviceID == deviceID }) { return udp }
        if let bus = a.modbus.first(where: { $0.leaves.contains(deviceID) }) { return bus }
        return a.serial.first { $0.configuration.allLeaves.contains(deviceID) }
    }
}

/// Lets adapters wake the current uplink.
final class WakeBox: Sendable {
    private let uplink = Mutex<Uplink?>(nil)
    func set(_ u: Uplink) { uplink.withLock { $0 = u } }
    func wake() { uplink.withLock { $0 }?.wake() }
    /// A leaf an adapter could not reach spoke again.
    func reachable(_ leaf: String) { uplink.withLock { $0 }?.leafReachable(leaf) }
    /// A reported patch for a leaf's twin (merged with others while the leaf is offline), in the order the adapter
    /// made them.
    func report(_ patch: JSONValue, for leaf: String) {
        uplink.withLock { $0 }?.queueReport(patch, for: leaf)
    }
}

/// Reports the gateway's health to its twin periodically.
struct HealthReporter: Service {
    let identity: GatewayIdentity
    func run() async throws {
        // Cancelled at graceful shutdown, so the services after it in the group are not kept waiting.
        try? await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await identity.reportHealthIfDue()
                await identity.update?.tick()
                try await Task.sleep(for: .seconds(5))
            }
        }
    }
}
