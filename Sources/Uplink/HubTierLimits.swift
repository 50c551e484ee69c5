import IoTHub

/// What the hub refuses as not in its tier, learnt from its refusals (a Basic-tier IoT Hub has no C2D, methods or
/// twin, and answers their links with error 403010). While a feature is refused, leaves attach without its links
/// and carry on telemetry-only; it is asked for again rarely, by one leaf, and comes back for every leaf when that
/// leaf's links attach. A pure state machine: the shard feeds it refusals, attaches and the time.
struct HubTierLimits: Equatable {
    enum Feature: String, CaseIterable, Sendable {
        case cloudToDevice = "C2D", methods, twin

        init?(_ link: LeafLink) {
            switch link {
            case .telemetry: return nil
            case .cloudToDevice: self = .cloudToDevice
            case .methodRequests, .methodResponses: self = .methods
            case .twinRequests, .twinResponses: self = .twin
            }
        }

        var links: LeafLinks {
            switch self {
            case .cloudToDevice: [.cloudToDevice]
            case .methods: [.methodRequests, .methodResponses]
            case .twin: [.twinRequests, .twinResponses]
            }
        }
    }

    /// How long a refused feature stays refused before one leaf asks again.
    let recheckMilliseconds: Int64

    private(set) var refused: Set<Feature> = []
    /// When one leaf asks for the refused features again.
    private(set) var recheckAtMs: Int64?

    /// Whether a link refusal says "not in this hub's tier": IoT Hub's 403010 in the error's JSON description,
    /// or AMQP's own not-implemented.
    static func isTierRefusal(condition: String?, description: String) -> Bool {
        condition == "amqp:not-implemented" || description.contains("403010")
    }

    var isLimited: Bool { !refused.isEmpty }

    /// Links a leaf that wants `configured` attaches now.
    func links(from configured: LeafLinks) -> LeafLinks {
        refused.reduce(configured) { $0.subtracting($1.links) }
    }

    /// The hub refused `feature` as not in its tier. True when it was not refused before (say so, once).
    mutating func refused(_ feature: Feature, nowMs: Int64) -> Bool {
        recheckAtMs = nowMs + recheckMilliseconds
        return refused.insert(feature).inserted
    }

    /// Whether one leaf should ask for the refused features now. The next recheck is set at once: if the answer
    /// never comes (the leaf left, the connection dropped), that one asks again.
    mutating func recheckDue(nowMs: Int64) -> Bool {
        guard isLimited, let due = recheckAtMs, nowMs >= due else { return false }
        recheckAtMs = nowMs + recheckMilliseconds
        return true
    }

    /// A link of `feature` attached: the hub has it (again). True when it was refused until now.
    mutating func attached(_ feature: Feature) -> Bool {
        guard refused.remove(feature) != nil else { return false }
        if refused.isEmpty { recheckAtMs = nil }
        return true
    }
}
