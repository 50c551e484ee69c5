import IoTHub
import ProtonAMQP

/// Counters of one leaf, kept across reconnects.
public struct LeafCounters: Sendable, Equatable {
    /// Messages handed to the hub (each attempt counts).
    public var sent = 0
    /// Spool records the hub accepted.
    public var acceptedRecords = 0
    /// Spool records the hub rejected for good (dead-lettered).
    public var rejectedRecords = 0
    /// Telemetry rejections for throttling or quota.
    public var throttled = 0
    /// Times the leaf's links were lost or refused.
    public var linkFailures = 0
    /// Put-token answers other than 2xx (refused, throttled, failed).
    public var tokenFailures = 0
    /// Tokens renewed in place (links kept).
    public var tokenRenewals = 0
    public var cloudToDeviceReceived = 0
    public var cloudToDeviceCompleted = 0
    public var cloudToDeviceRejected = 0
    /// Given back to the hub (released) after the hold budget: it comes back later (one delivery counted).
    public var cloudToDeviceAbandoned = 0
    /// Attempts that found the leaf unreachable (the message was kept).
    public var cloudToDeviceUnreachable = 0
    /// Expired on arrival: rejected without reaching the adapter.
    public var cloudToDeviceExpired = 0
    /// Redeliveries settled from the remembered outcome.
    public var cloudToDeviceDuplicates = 0
    public var methodCalls = 0
    /// Method calls answered 504 because the handler missed the local deadline.
    public var methodTimeouts = 0
    /// Heartbeat messages sent, and those the hub accepted.
    public var heartbeatsSent = 0
    public var heartbeatsAccepted = 0
    /// Desired-property versions applied.
    public var desiredApplied = 0
    /// Reported patches the hub accepted.
    public var reportedPatches = 0
}

/// The links a leaf may have (docs/iothub-protocol.md §4–7).
enum LeafLink: String, CaseIterable, Sendable {
    case telemetry, cloudToDevice = "c2d", methodRequests = "methods-rx", methodResponses = "methods-tx"
    case twinRequests = "twin-tx", twinResponses = "twin-rx"

    var isSender: Bool { self == .telemetry || self == .methodResponses || self == .twinRequests }

    var endpoint: DeviceEndpoint {
        switch self {
        case .telemetry: .events
        case .cloudToDevice: .deviceBound
        case .methodRequests, .methodResponses: .methods
        case .twinRequests, .twinResponses: .twin
        }
    }

    /// Method responses and twin requests go pre-settled, as the SDKs send them.
    var presettled: Bool { self == .methodResponses || self == .twinRequests }

    /// Attach properties: client version everywhere; method and twin pairs share a channel correlation id
    /// (`methods:{uuid}`, `twin:{uuid}`) and carry the API version.
    func properties(channel: String, clientVersion: String) -> [AMQPValue: AMQPValue] {
        var p: [AMQPValue: AMQPValue] = [.symbol(IoTHubAMQP.clientVersionProperty): .string(clientVersion)]
        switch self {
        case .methodRequests, .methodResponses:
            p[.symbol(IoTHubAMQP.channelCorrelationIDProperty)] = .string("methods:\(channel)")
            p[.symbol(IoTHubAMQP.apiVersionProperty)] = .string(IoTHubAMQP.apiVersion)
        case .twinRequests, .twinResponses:
            p[.symbol(IoTHubAMQP.channelCorrelationIDProperty)] = .string("twin:\(channel)")
            p[.symbol(IoTHubAMQP.apiVersionProperty)] = .string(IoTHubAMQP.apiVersion)
        case .telemetry, .cloudToDevice:
            break
        }
        return p
    }

    static func wanted(for capabilities: LeafCapabilities) -> Set<LeafLink> {
        var s: Set<LeafLink> = [.telemetry]
        if capabilities.contains(.cloudToDevice) { s.insert(.cloudToDevice) }
        if capabilities.contains(.methods) { s.formUnion([.methodRequests, .methodResponses]) }
        if capabilities.contains(.twin) { s.formUnion([.twinRequests, .twinResponses]) }
        return s
    }
}

/// One leaf on its shard connection: the lifecycle, its links, the telemetry it holds, its twin. Reactor thread
/// only.
final class LeafRuntime {
    let configuration: LeafConfiguration
    var machine: LeafMachine
    var counters = LeafCounters()
    var dedupe: C2DDedupe
    /// Hub order, one message at a time, held (not burnt) while the leaf cannot take it.
    var flow: CloudToDeviceFlow
    var lastCloudToDeviceLogMs: Int64 = .min / 2
    var lastThrottleLogMs: Int64 = .min / 2
    var twin: TwinSync
    /// nil: no heartbeat messages for this leaf.
    var heartbeat: HeartbeatSchedule?
    /// The links its capabilities call for.
    let configuredLinks: Set<LeafLink>
    /// The links it attaches on this connection: the configured ones less what the hub's tier refuses.
    var wantedLinks: Set<LeafLink>
    /// The uuid in this leaf's `methods:` and `twin:` channel correlation ids.
    let channel = AMQPUUID.random().description

    var links: [LeafLink: AMQPLink] = [:]
    var attachedLinks: Set<LeafLink> = []

    /// Fetched from the spool, waiting for link credit (in order).
    var pending: [OutgoingMessage] = []
    var pendingHead = 0
    /// Telemetry deliveries the hub has not settled.
    var unsettled = 0

    init(configuration: LeafConfiguration, machine: LeafMachine, dedupeCapacity: Int, capabilities: LeafCapabilities,
         reportedIntervalMilliseconds: Int64, cloudToDevicePolicy: CloudToDeviceFlow.Policy, heartbeatIntervalMilliseconds: Int64? = nil) {
        self.configuration = configuration
        self.machine = machine
        self.dedupe = C2DDedupe(capacity: dedupeCapacity)
        self.flow = CloudToDeviceFlow(policy: cloudToDevicePolicy)
        if let interval = heartbeatIntervalMilliseconds, interval > 0 { heartbeat = HeartbeatSchedule(intervalMilliseconds: interval) }
        self.configuredLinks = LeafLink.wanted(for: capabilities)
        self.wantedLinks = configuredLinks
        self.twin = TwinSync(minPatchIntervalMilliseconds: reportedIntervalMilliseconds, correlationPrefix: configuration.deviceID)
    }

    var deviceID: String { configuration.deviceID }
    var pendingCount: Int { pending.count - pendingHead }
    /// Messages this leaf holds that the spool counts as in flight.
    var outstanding: Int { pendingCount + unsettled }
    var linksAttached: Bool { attachedLinks == wantedLinks }
    var canTakeTelemetry: Bool { attachedLinks.contains(.telemetry) }
    /// How the hub's tier limits this leaf (status): nil when it has every link it is configured for.
    var tierLimitation: String? {
        let missing = configuredLinks.subtracting(wantedLinks)
        guard !missing.isEmpty else { return nil }
        if wantedLinks == [.telemetry] { return "telemetry-only (hub tier)" }
        let features = HubTierLimits.Feature.allCases.filter { !$0.links.isDisjoint(with: missing) }
        return "without \(features.map(\.rawValue).joined(separator: ", ")) (hub tier)"
    }

    func popPending() -> OutgoingMessage? {
        guard pendingHead < pending.count else { return nil }
        let m = pending[pendingHead]
        pendingHead += 1
        if pendingHead == pending.count { pending.removeAll(keepingCapacity: true); pendingHead = 0 }
        return m
    }

    /// Counts the times this leaf's records went back to the spool (`takePending`). A fetch that was under way
    /// then may bring records that come after the ones given back: they must go back too, or they would overtake.
    private(set) var releaseGeneration = 0

    /// Empties the pending queue, returning its sequences: every caller gives them (and whatever failed with them)
    /// back to the spool, which hands them out again in order.
    func takePending() -> [UInt64] {
        releaseGeneration += 1
        defer { pending.removeAll(keepingCapacity: true); pendingHead = 0 }
        return pending[pendingHead...].flatMap(\.sequences)
    }
}
