import FieldgateCore
import IoTHub
import Logging
import ProtonAMQP

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The emulated hub's state and rules. Confined to the reactor thread: AMQP handlers call it directly, the
/// service API through `HubCore.perform`. No locks because there is one thread.
public final class HubCore: @unchecked Sendable {
    public let configuration: HubConfiguration
    public let reactor: AMQPReactor
    let logger: Logger

    var registry: Registry
    var twins: [String: TwinDocument] = [:]
    var queues: [String: CloudToDeviceQueue] = [:]
    var feedback = FeedbackQueue()
    var events: EventLog
    var eventWaiters: [(from: Int64, deliver: ([ReceivedEvent]) -> Void)] = []
    var pendingMethods: [AMQPUUID: PendingMethod] = [:]
    /// Which connection holds each device's links (for C2D, methods, desired pushes and link-creation conflicts).
    var deviceOwners: [String: HubConnection] = [:]
    var connections: [ObjectIdentifier: HubConnection] = [:]
    /// Every connection accepted since the hub started (a reconnect counts again).
    public private(set) var connectionsAccepted = 0
    /// Faults: devices whose telemetry is rejected as throttled until the given time (ms).
    var throttledUntil: [String: Int64] = [:]
    /// Fault injection: the next N telemetry messages of a device are rejected for good (argument error).
    var rejectTelemetry: [String: Int] = [:]
    var authenticationWindow: (second: Int64, count: Int) = (0, 0)
    /// The daily message quota: units used on `quotaDay` (UTC days since 1970), and the fault that spends it for
    /// the rest of a day.
    var quotaUsed = 0
    var quotaDay: Int64 = 0
    var quotaSpentOnDay: Int64?
    /// The tier (from the configuration; tests move a hub between tiers as an operator would).
    public var tier: HubTier
    /// Link attaches refused since the start, for any reason.
    public internal(set) var refusedLinks = 0
    /// File upload: outstanding SAS URIs and notifications; the blob store they write to.
    var fileUploads = FileUploads()
    let blobs: BlobStore
    /// `host[:port]` of the blob endpoint devices upload to (the hub's HTTPS port); nil: file upload not configured.
    public internal(set) var blobEndpoint: String?
    private var saveScheduled = false
    private var tickTimer: AMQPTimer?

    struct PendingMethod {
        let deviceId: String
        let complete: (MethodResult) -> Void
        let timer: AMQPTimer
    }

    public init(configuration: HubConfiguration, reactor: AMQPReactor, logger: Logger) throws {
        self.configuration = configuration
        self.reactor = reactor
        self.logger = logger
        self.events = EventLog(capacity: configuration.eventLogCapacity)
        self.tier = configuration.tier
        self.blobs = BlobStore(stateDirectory: configuration.stateDirectory)
        self.registry = Registry.withDefaultPolicies()
        if let dir = configuration.stateDirectory { try load(from: dir) }
    }

    /// Runs `body` on the reactor thread with the core.
    public func perform<T: Sendable>(_ body: @escaping @Sendable (HubCore) throws -> T) async throws -> T {
        try await reactor.perform { [self] in try body(self) }
    }

    /// Starts the periodic housekeeping (token expiry, C2D locks and TTLs). Call once.
    func startTicking() {
        reactor.execute { [self] in scheduleTick() }
    }

    func stopTicking() { tickTimer?.cancel() }

    private func scheduleTick() {
        tickTimer = reactor.schedule(after: .milliseconds(200)) { [self] in
            tick()
            scheduleTick()
        }
    }

    var now: Int64 { WallClock.nowMilliseconds() }

    private func tick() {
        let t = now
        for connection in connections.values { connection.expireTokens(now: t) }
        for (deviceId, var queue) in queues where (queue.nextDeadline ?? .max) <= t {
            let ended = queue.expire(now: t)
            queues[deviceId] = queue
            for (message, outcome) in ended { recordFeedback(deviceId: deviceId, message: message, outcome: outcome) }
            markDirty()
            // Timer context, not the owner's event batch: go through its inbox so Proton flushes the transfer.
            if let owner = deviceOwners[deviceId] { owner.ref?.execute { _ in owner.pumpCloudToDevice(deviceId) } }
        }
        throttledUntil = throttledUntil.filter { $0.value > t }
    }

    // MARK: the device directory

    func register(_ connection: HubConnection) {
        connections[ObjectIdentifier(connection)] = connection
        connectionsAccepted += 1
    }

    func unregister(_ connection: HubConnection) {
        connections[ObjectIdentifier(connection)] = nil
        for (deviceId, owner) in deviceOwners where owner === connection {
            deviceOwners[deviceId] = nil
            setConnectionState(deviceId, connected: false)
        }
    }

    /// `connection` now holds links of `deviceId`; a previous holder loses them with link-creation-conflict (409002).
    func claim(_ deviceId: String, by connection: HubConnection) {
        if let previous = deviceOwners[deviceId], previous !== connection {
            previous.evict(deviceId, because: AMQPCondition(
                name: IoTHubAMQP.linkCreationConflict,
                description: hubErrorJSON(409002, "LinkCreationConflict: a new connection opened links for device \(deviceId)")))
        }
        if deviceOwners[deviceId] !== connection {
            deviceOwners[deviceId] = connection
            setConnectionState(deviceId, connected: true)
        }
    }

    func release(_ deviceId: String, by connection: HubConnection) {
        if deviceOwners[deviceId] === connection {
            deviceOwners[deviceId] = nil
            setConnectionState(deviceId, connected: false)
        }
    }

    private func setConnectionState(_ deviceId: String, connected: Bool) {
        guard var d = registry.devices[deviceId] else { return }
        d.connectionState = connected ? "Connected" : "Disconnected"
        d.lastActivityTime = WallClock.iso8601(milliseconds: now)
        registry.devices[deviceId] = d
    }

    /// Counts one device authentication against the hub's device-connection throttle; false when over it.
    func admitAuthentication() -> Bool {
        guard let limit = configuration.deviceAuthenticationsPerSecond else { return true }
        let second = now / 1000
        if authenticationWindow.second != second { authenticationWindow = (second, 0) }
        authenticationWindow.count += 1
        return authenticationWindow.count <= limit
    }

    // MARK: telemetry

    func recordEvent(_ event: StoredEvent) {
        events.append(event)
        guard !eventWaiters.isEmpty else { return }
        let waiters = eventWaiters
        eventWaiters = []
        for w in waiters { w.deliver(readEvents(from: w.from, limit: 1000)) }
    }

    /// A twin change notification as IoT Hub routes one (`opType` updateTwin, schema twinChangeNotification): the
    /// reported patch with the twin's new version.
    func recordTwinChange(deviceId: String, reported patch: JSONValue, version: Int64) {
        var reported = patch
        if case .object(var o) = patch { o["$version"] = .int(version); reported = .object(o) }
        var m = AMQPMessage()
        m.messageID = .string(AMQPUUID.random().description)
        m.contentType = "application/json"
        m.contentEncoding = "utf-8"
        m.applicationProperties = [
            "hubName": .string(configuration.hubName), "deviceId": .string(deviceId), "opType": .string("updateTwin"),
            "operationTimestamp": .string(WallClock.iso8601(milliseconds: now)), "iothub-message-schema": .string("twinChangeNotification"),
        ]
        m.body = .data([JSONValue.object(["version": .int(version), "properties": ["reported": reported]]).bytes])
        recordEvent(StoredEvent(deviceId: deviceId, generationId: "", enqueuedMs: now, hubScope: false,
                                encoded: AMQPMessageCodec.encode(m), source: "twinChangeEvents"))
    }

    func readEvents(from: Int64, limit: Int) -> [ReceivedEvent] {
        events.read(from: from, limit: limit) { stored, seq in HubConnection.render(stored, sequence: seq) }
    }

    func isThrottled(_ deviceId: String) -> Bool { (throttledUntil[deviceId] ?? 0) > now }

    // MARK: C2D feedback

    func recordFeedback(deviceId: String, message: CloudToDeviceMessage, outcome: CloudToDeviceOutcome) {
        let wanted = outcome.isPositive ? message.ack.wantsPositive : message.ack.wantsNegative
        guard wanted else { return }
        let record = FeedbackRecord(
            originalMessageId: message.messageId, deviceId: deviceId,
            deviceGenerationId: registry.devices[deviceId]?.generationId ?? "",
            statusCode: outcome.rawValue, description: outcome.rawValue,
            enqueuedTimeUtc: WallClock.iso8601(milliseconds: now))
        feedback.append(record)
        markDirty()
        dispatchFeedback()
    }

    /// Hands the records waiting to the oldest consumer waiting for them.
    func dispatchFeedback() {
        guard let (deliver, records) = feedback.nextHandOff() else { return }
        markDirty()
        deliver(records)
    }

    func takeFeedback() -> [FeedbackRecord] {
        let records = feedback.takeAll()
        if !records.isEmpty { markDirty() }
        return records
    }

    // MARK: methods

    func completeMethod(_ id: AMQPUUID, with result: MethodResult) {
        guard let pending = pendingMethods.removeValue(forKey: id) else {
            logger.notice("method response for unknown or timed-out request \(id) dropped")
            return
        }
        pending.timer.cancel()
        pending.complete(result)
    }

    // MARK: persistence

    struct PersistentState: Codable {
        var registry: Registry
        var twins: [String: TwinDocument]
        var queues: [String: CloudToDeviceQueue]
        var feedback: [FeedbackRecord]
    }

    func markDirty() {
        guard configuration.stateDirectory != nil, !saveScheduled else { return }
        saveScheduled = true
        reactor.schedule(after: .milliseconds(100)) { [self] in
            saveScheduled = false
            save()
        }
    }

    /// Writes the state atomically (temp file + rename).
    func save() {
        guard let dir = configuration.stateDirectory else { return }
        var queuesUnlocked = queues
        for key in queuesUnlocked.keys {
            // Locks do not survive a restart: locked messages are redelivered.
            let tokens = Set(queuesUnlocked[key]!.messages.compactMap(\.lockToken))
            queuesUnlocked[key]!.releaseLocks(tokens)
        }
        let state = PersistentState(registry: registry, twins: twins, queues: queuesUnlocked, feedback: feedback.records)
        do {
            let data = try JSONEncoder().encode(state)
            try data.write(to: URL(fileURLWithPath: dir + "/hub-state.json"), options: .atomic)
        } catch {
            logger.error("cannot save hub state to \(dir): \(error)")
        }
    }

    private func load(from dir: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = dir + "/hub-state.json"
        guard FileManager.default.fileExists(atPath: path) else { return }
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let state = try JSONDecoder().decode(PersistentState.self, from: data)
        registry = state.registry
        twins = state.twins
        queues = state.queues
        feedback = FeedbackQueue(records: state.feedback)
        for key in registry.devices.keys { registry.devices[key]?.connectionState = "Disconnected" }
    }
}

/// The answer to a direct-method call: the device's status and payload, or the hub's error status.
public struct MethodResult: Sendable, Codable, Equatable {
    public var status: Int
    public var payload: JSONValue

    public init(status: Int, payload: JSONValue) {
        self.status = status
        self.payload = payload
    }
}

extension HubCore {
    /// Starts a new count at 00:00 UTC, as IoT Hub resets `dailyMessage.QuotaUsed`.
    private func rollQuotaDay() {
        let day = now / 86_400_000
        guard day != quotaDay else { return }
        quotaDay = day
        quotaUsed = 0
        if quotaSpentOnDay != day { quotaSpentOnDay = nil }
    }

    /// Why telemetry is refused for the daily quota now (the hub's 403002 error as JSON), or nil.
    func quotaRefusal() -> String? {
        quotaExceededMessage().map { hubErrorJSON(403002, $0) }
    }

    /// The hub's 403002 message while the daily quota is spent, or nil.
    func quotaExceededMessage() -> String? {
        guard isQuotaSpent else { return nil }
        let limit = configuration.dailyMessageQuota
        return "IotHubQuotaExceeded: Total number of messages on IotHub '\(configuration.hubName)' exceeded the allocated quota. "
            + "Max allowed message count: \(limit.map(String.init) ?? "\(quotaUsed)"), current message count: \(quotaUsed). "
            + "The quota resets at 00:00 UTC."
    }

    /// Spent by use or by the fault, for the current UTC day.
    private var isQuotaSpent: Bool {
        rollQuotaDay()
        return quotaSpentOnDay == quotaDay || configuration.dailyMessageQuota.map { quotaUsed >= $0 } == true
    }

    /// Bills accepted D2C messages: a unit per started 4 KB of each.
    func chargeQuota(messageSizes: [Int]) {
        rollQuotaDay()
        quotaUsed += messageSizes.reduce(0) { $0 + max(1, ($1 + 4095) / 4096) }
    }

    /// Fault: the quota counts as spent until the next 00:00 UTC; `reset` is that midnight's reset, now.
    public func spendQuota(reset: Bool) {
        rollQuotaDay()
        if reset {
            quotaSpentOnDay = nil
            quotaUsed = 0
        } else {
            quotaSpentOnDay = quotaDay
        }
    }

    public var quotaJSON: JSONValue {
        rollQuotaDay()
        return ["used": .int(Int64(quotaUsed)), "limit": configuration.dailyMessageQuota.map { .int(Int64($0)) } ?? .null,
                "spent": .bool(isQuotaSpent)]
    }
}

/// The JSON error descriptions the real hub puts into conditions and API bodies.
func hubErrorJSON(_ code: Int, _ message: String) -> String {
    JSONValue.object([
        "errorCode": .int(Int64(code)), "message": .string(message),
        "trackingId": .string(AMQPUUID.random().description),
        "timestampUtc": .string(WallClock.iso8601Now()),
    ]).serialized
}
