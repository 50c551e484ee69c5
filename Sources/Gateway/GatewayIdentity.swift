import FieldgateCore
import Logging
import SoftwareUpdate
import Spool
import Synchronization
import Uplink

/// The gateway as a device of its own (issue 5): it reports its health in its twin and answers `reboot`
/// (seed 004), `restart`, `status`, `logs` and `factoryReset`; its desired `firmware` and `maintenance` go to the
/// software update agent (docs/software-update.md).
public final class GatewayIdentity: LeafRouter {
    public struct Configuration: Sendable {
        public var deviceID: String
        public var version: String
        /// Run by `reboot` after the twin is updated and the spool flushed. Default: `systemctl reboot`.
        public var rebootCommand = ["systemctl", "reboot"]
        /// Run by `restart`. Default: `systemctl restart fieldgate`.
        public var restartCommand = ["systemctl", "restart", "fieldgated"]
        /// Health is reported at most this often (and when the leaf states change). Default: 60 s.
        public var healthIntervalMilliseconds: Int64 = 60_000
        /// The `logs` method; nil: off (answered 501).
        public var logUpload: LogUpload?

        public init(deviceID: String, version: String) {
            self.deviceID = deviceID
            self.version = version
        }
    }

    /// What the `logs` method reads and how much of it.
    public struct LogUpload: Sendable {
        public var maxBytes: Int
        /// The unit whose journal entries are read. Default: fieldgated.service.
        public var unit = "fieldgated.service"
        /// Journal files here instead of the system's journal (tests).
        public var journalDirectory: String?
        public init(maxBytes: Int) { self.maxBytes = maxBytes }
    }

    public let configuration: Configuration
    private let spool: Spool
    let logger: Logger
    private let runner = CommandRunner()
    private let startedAtMs = WallClock.nowMilliseconds()
    /// `failure`: why the last report failed, so a lasting cause (a Basic-tier hub has no twin) is logged once.
    private let state = Mutex<(uplink: Uplink?, lastHealth: JSONValue?, lastHealthMs: Int64, failure: String?)>((nil, nil, 0, nil))
    private let statusProvider = Mutex<(@Sendable () async -> JSONValue)?>(nil)
    private let updateAgent = Mutex<UpdateAgent?>(nil)

    public init(configuration: Configuration, spool: Spool, logger: Logger = Logger(label: "fieldgate.gateway")) {
        self.configuration = configuration
        self.spool = spool
        self.logger = logger
    }

    /// Software update, factory reset and the maintenance window: the daemon makes the agent (it knows the download
    /// settings); the agent reports through `reportForUpdate`.
    public func setUpdateAgent(_ agent: UpdateAgent) { updateAgent.withLock { $0 = agent } }
    public var update: UpdateAgent? { updateAgent.withLock { $0 } }

    /// Reports for the agent: through the uplink attached at the time, waiting for the hub's answer.
    public func reportForUpdate(_ patch: JSONValue, timeout: Duration) async -> UpdateError? {
        guard let uplink else { return UpdateError("the uplink is not running") }
        do throws(UplinkError) { try await uplink.reportAndWait(patch, for: configuration.deviceID, timeout: timeout) } catch {
            return UpdateError(error.message)
        }
        return nil
    }

    /// A hub connection is open.
    public func hubConnected() async -> Bool {
        await uplink?.status().connections.contains { $0.state == "open" } ?? false
    }

    /// Flushes the spool (before a restart).
    public func flushSpool() async {
        let flushed = await offCooperativePool { [spool] in Result { () throws(SpoolError) in try spool.sync() } }
        if case .failure(let error) = flushed { logger.error("spool flush failed: \(error)") }
    }

    public func desiredProperties(_ desired: JSONValue, version: Int64, deviceID: String) async -> JSONValue? {
        update?.desired(desired)
    }

    /// The uplink exists only after its router: connect the two here.
    public func attach(_ uplink: Uplink) { state.withLock { $0.uplink = uplink } }
    private var uplink: Uplink? { state.withLock { $0.uplink } }
    var attachedUplink: Uplink? { uplink }

    /// What the `status` method answers: the daemon sets what `fieldgatectl status` shows; default: `health()`.
    public func setStatusProvider(_ provider: @escaping @Sendable () async -> JSONValue) {
        statusProvider.withLock { $0 = provider }
    }

    public func cloudToDevice(_ message: C2DMessage) async -> C2DOutcome {
        .reject("the gateway identity takes no cloud-to-device messages")
    }

    public func invoke(_ call: MethodCall) async -> MethodResponse? {
        switch call.name {
        case "reboot":
            // The maintenance window holds it back unless forced; the agent reboots when the window opens.
            if let update, !(await update.mayRebootNow(force: call.payload["force"] == .bool(true))) {
                return MethodResponse(status: 202, payload: ["status": "pending", "reason": "waiting for the maintenance window; force: true reboots now"])
            }
            // Seed 004: answer first, then record lastReboot, wait for the hub to take it, flush, reboot.
            Task { await reboot() }
            return MethodResponse(status: 200, payload: "Reboot started")
        case "factoryReset":
            guard let update else {
                return MethodResponse(status: 403, payload: ["error": "factory reset is off in this gateway's configuration ([update] factory_reset = true enables it)"])
            }
            let (status, answer) = await update.factoryReset(force: call.payload["force"] == .bool(true))
            return MethodResponse(status: status, payload: answer)
        case "restart":
            Task { await runAfterAnswer(configuration.restartCommand, what: "restart") }
            return MethodResponse(status: 200, payload: "Restart started")
        case "status":
            if let provider = statusProvider.withLock({ $0 }) { return MethodResponse(status: 200, payload: await provider()) }
            return MethodResponse(status: 200, payload: await health())
        case "logs":
            return await uploadLogs(call.payload)
        default:
            return nil
        }
    }

    /// The reboot itself (seed 004), also when a deferred one's window opens.
    public func reboot() async {
        let lastReboot = WallClock.iso8601Now()
        do throws(UplinkError) {
            try await uplink?.reportAndWait(["iothubDM": ["reboot": ["lastReboot": .string(lastReboot)]]], for: configuration.deviceID)
        } catch {
            logger.error("reboot: lastReboot could not be reported (\(error)); rebooting anyway")
        }
        await runAfterAnswer(configuration.rebootCommand, what: "reboot")
    }

    private func runAfterAnswer(_ command: [String], what: String) async {
        try? await Task.sleep(for: .milliseconds(100))  // let the method answer go out first
        let flushed = await offCooperativePool { [spool] in Result { () throws(SpoolError) in try spool.sync() } }
        if case .failure(let error) = flushed { logger.error("\(what): spool flush failed: \(error)") }
        logger.notice("\(what): running \(command.joined(separator: " "))")
        do throws(CommandRunner.Failure) { try await runner.run(command) } catch {
            logger.error("\(what): \(error)")
        }
    }

    /// Version, uptime, spool figures, drops, leaves by state and connections: the gateway's reported health and
    /// the `status` method's answer.
    public func health() async -> JSONValue {
        let stats = spool.statistics()
        let status = await uplink?.status() ?? UplinkStatus()
        // Every state and reason is always present (0 too): reported properties merge, so a key left out would
        // keep its old count forever.
        var byPhase: [String: JSONValue] = [:]
        for phase in LeafPhase.allCases { byPhase[phase.rawValue] = 0 }
        for leaf in status.leaves.values { byPhase[leaf.phase.rawValue] = .int((byPhase[leaf.phase.rawValue]?.intValue ?? 0) + 1) }
        var drops: [String: JSONValue] = [:]
        for reason in DropReason.allCases { drops[reason.rawValue] = .int(Int64(stats.dropped[reason]?.values.reduce(0, +) ?? 0)) }
        let connections: [String: JSONValue] = Dictionary(uniqueKeysWithValues: status.connections.map {
            ("c\($0.index)", ["state": .string($0.state), "opens": .int(Int64($0.opens)), "host": .string($0.host),
                                "transport": .string($0.transport), "lastError": $0.lastError.map(JSONValue.string) ?? .null])
        })
        return [
            "version": .string(configuration.version),
            "uptimeSeconds": .int((WallClock.nowMilliseconds() - startedAtMs) / 1000),
            "spool": ["depth": .int(Int64(stats.depth)), "bytes": .int(Int64(stats.bytes)),
                      "oldestAgeSeconds": stats.oldestAgeMilliseconds.map { .int($0 / 1000) } ?? .null],
            "drops": .object(drops),
            "leaves": .object(byPhase),
            "connections": .object(connections),
            // Present while the hub's daily quota holds telemetry back; null (removed) otherwise.
            "telemetryPaused": status.telemetryPause?.json ?? .null,
        ]
    }

    /// Reports health when the leaf states changed or the interval passed. Call periodically (the daemon's loop).
    public func reportHealthIfDue() async {
        var h = await health()
        let now = WallClock.nowMilliseconds()
        let due = state.withLock { s -> Bool in
            let changed = s.lastHealth?["leaves"] != h["leaves"] || s.lastHealth?["connections"] != h["connections"]
                || s.lastHealth?["telemetryPaused"] != h["telemetryPaused"]
            return changed || now - s.lastHealthMs >= configuration.healthIntervalMilliseconds
        }
        guard due, let uplink else { return }
        // Twin values cannot be arrays and keys cannot hold '$' or '.'; `health` obeys both.
        if case .object(var o) = h { o["reportedAt"] = .string(WallClock.iso8601(milliseconds: now)); h = .object(o) }
        do throws(UplinkError) {
            try await uplink.report(["gateway": h], for: configuration.deviceID)
            state.withLock { $0.lastHealth = h; $0.lastHealthMs = now; $0.failure = nil }
        } catch {
            // Tried again when something changes or at the interval, not at every turn of the loop.
            let repeated = state.withLock { s -> Bool in
                defer { s.lastHealth = h; s.lastHealthMs = now; s.failure = error.message }
                return s.failure == error.message
            }
            if !repeated { logger.error("gateway health not reported: \(error)") }
        }
    }
}

/// Sends the gateway's own identity to `GatewayIdentity` and every leaf to the adapter that owns it.
public struct GatewayRouter: LeafRouter {
    public let gateway: GatewayIdentity
    private let owner: @Sendable (String) -> (any LeafRouter)?

    /// `owners`: device id → its adapter; `fallback` takes leaves no adapter claims (tests use one adapter).
    public init(gateway: GatewayIdentity, owners: [String: any LeafRouter] = [:], fallback: (any LeafRouter)? = nil) {
        self.init(gateway: gateway) { owners[$0] ?? fallback }
    }

    /// `owner` looks a leaf's adapter up at each call, so the daemon can change adapters on reload.
    public init(gateway: GatewayIdentity, owner: @escaping @Sendable (String) -> (any LeafRouter)?) {
        self.gateway = gateway
        self.owner = owner
    }

    private func route(_ deviceID: String) -> (any LeafRouter)? {
        deviceID == gateway.configuration.deviceID ? gateway : owner(deviceID)
    }

    public func cloudToDevice(_ message: C2DMessage) async -> C2DOutcome {
        await route(message.deviceID)?.cloudToDevice(message) ?? .reject("no adapter owns \(message.deviceID)")
    }

    public func invoke(_ call: MethodCall) async -> MethodResponse? {
        await route(call.deviceID)?.invoke(call)
    }

    public func desiredProperties(_ desired: JSONValue, version: Int64, deviceID: String) async -> JSONValue? {
        await route(deviceID)?.desiredProperties(desired, version: version, deviceID: deviceID)
    }
}
