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
    /// Desired-property documents handed to the adapter (one replaced while waiting is not counted).
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

    static func wanted(for capabilities: LeafCapabilities) -> LeafLinks {
        var s: LeafLinks = [.telemetry]
        if capabilities.contains(.cloudToDevice) { s.insert(.cloudToDevice) }
        if capabilities.contains(.methods) { s.formUnion([.methodRequests, .methodResponses]) }
        if capabilities.contains(.twin) { s.formUnion([.twinRequests, .twinResponses]) }
        return s
    }
}

/// A set of a leaf's links, as bits: a leaf holds three such sets, and `Set<LeafLink>` made each a heap
/// allocation (~100 bytes with malloc's own) for at most six members.
struct LeafLinks: SetAlgebra, Sequence, Hashable, Sendable {
    typealias Element = LeafLink
    private var bits: UInt8

    init() { bits = 0 }

    private static func bit(_ link: LeafLink) -> UInt8 {
        switch link {
        case .telemetry: 1
        case .cloudToDevice: 2
        case .methodRequests: 4
        case .methodResponses: 8
        case .twinRequests: 16
        case .twinResponses: 32
        }
    }

    private init(bits: UInt8) { self.bits = bits }

    var isEmpty: Bool { bits == 0 }
    func contains(_ member: LeafLink) -> Bool { bits & Self.bit(member) != 0 }
    func union(_ other: LeafLinks) -> LeafLinks { LeafLinks(bits: bits | other.bits) }
    func intersection(_ other: LeafLinks) -> LeafLinks { LeafLinks(bits: bits & other.bits) }
    func symmetricDifference(_ other: LeafLinks) -> LeafLinks { LeafLinks(bits: bits ^ other.bits) }
    func subtracting(_ other: LeafLinks) -> LeafLinks { LeafLinks(bits: bits & ~other.bits) }
    mutating func formUnion(_ other: LeafLinks) { bits |= other.bits }
    mutating func formIntersection(_ other: LeafLinks) { bits &= other.bits }
    mutating func formSymmetricDifference(_ other: LeafLinks) { bits ^= other.bits }

    @discardableResult
    mutating func insert(_ newMember: LeafLink) -> (inserted: Bool, memberAfterInsert: LeafLink) {
        let had = contains(newMember)
        bits |= Self.bit(newMember)
        return (!had, newMember)
    }

    @discardableResult
    mutating func remove(_ member: LeafLink) -> LeafLink? {
        guard contains(member) else { return nil }
        bits &= ~Self.bit(member)
        return member
    }

    @discardableResult
    mutating func update(with newMember: LeafLink) -> LeafLink? {
        let had = contains(newMember)
        bits |= Self.bit(newMember)
        return had ? newMember : nil
    }

    /// Members in `LeafLink.allCases` order.
    func makeIterator() -> IndexingIterator<[LeafLink]> { LeafLink.allCases.filter(contains).makeIterator() }
}

/// A leaf's open links by kind, inline: a `Dictionary` was a heap allocation per leaf for at most six pointers.
struct LeafLinkTable {
    private var slots: (AMQPLink?, AMQPLink?, AMQPLink?, AMQPLink?, AMQPLink?, AMQPLink?) = (nil, nil, nil, nil, nil, nil)

    subscript(_ kind: LeafLink) -> AMQPLink? {
        get {
            switch kind {
            case .telemetry: slots.0
            case .cloudToDevice: slots.1
            case .methodRequests: slots.2
            case .methodResponses: slots.3
            case .twinRequests: slots.4
            case .twinResponses: slots.5
            }
        }
        set {
            switch kind {
            case .telemetry: slots.0 = newValue
            case .cloudToDevice: slots.1 = newValue
            case .methodRequests: slots.2 = newValue
            case .methodResponses: slots.3 = newValue
            case .twinRequests: slots.4 = newValue
            case .twinResponses: slots.5 = newValue
            }
        }
    }

    /// The kinds with a link.
    var keys: LeafLinks {
        var k = LeafLinks()
        for kind in LeafLink.allCases where self[kind] != nil { k.insert(kind) }
        return k
    }

    var values: [AMQPLink] { LeafLink.allCases.compactMap { self[$0] } }

    mutating func removeValue(forKey kind: LeafLink) -> AMQPLink? {
        defer { self[kind] = nil }
        return self[kind]
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
    let configuredLinks: LeafLinks
    /// The links it attaches on this connection: the configured ones less what the hub's tier refuses.
    var wantedLinks: LeafLinks
    /// The uuid in this leaf's `methods:` and `twin:` channel correlation ids.
    private let channelID = AMQPUUID.random()
    /// Formatted when links attach: a 36-character string kept per leaf was another heap allocation.
    var channel: String { channelID.description }

    var links = LeafLinkTable()
    var attachedLinks: LeafLinks = []

    /// Fetched from the spool, waiting for link credit (in order).
    var pending = PendingQueue()
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
    var pendingCount: Int { pending.count }
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

    func popPending() -> OutgoingMessage? { pending.popFirst() }

    /// Counts the times this leaf's records went back to the spool (`takePending`). A fetch that was under way
    /// then may bring records that come after the ones given back: they must go back too, or they would overtake.
    private(set) var releaseGeneration = 0

    /// Empties the pending queue, returning its sequences: every caller gives them (and whatever failed with them)
    /// back to the spool, which hands them out again in order.
    func takePending() -> [UInt64] {
        releaseGeneration += 1
        return pending.removeAll()
    }
}
