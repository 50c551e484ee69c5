import FieldgateCore
import IoTHub

/// The twin of one identity (docs/contracts.md §4): on every (re)attach subscribe to desired updates and GET
/// the twin; apply desired properties by `$version`, each version once; fold reported patches made while they
/// cannot be sent into one patch (last write wins per path) and send them rate-limited. Pure: requests and
/// applications go out as actions; the shard sends them and feeds the answers back.
struct TwinSync {
    enum Request: Equatable {
        case subscribe
        case get
        case patch(JSONValue)
    }

    enum Action: Equatable {
        case send(Request, correlation: String)
        /// Hand the whole desired document (without `$version`) to the leaf's router.
        case applyDesired(JSONValue, version: Int64)
        /// The hub took these reported patches (ids from `report`).
        case reportedAccepted([Int])
        /// The hub refused them for good.
        case reportedRefused([Int], String)
        /// The twin's desired `$version` is below the one applied last (the device was deleted and re-created):
        /// the remembered version is dropped and the twin's document applied.
        case desiredVersionWentBack(from: Int64, to: Int64)
    }

    enum Phase: Equatable { case detached, syncing, synced }

    let minPatchIntervalMilliseconds: Int64
    private(set) var phase: Phase = .detached
    /// The desired `$version` applied last; survives reattaches, so a version is never applied twice. A GET
    /// answering a lower version (a re-created device) resets it.
    private(set) var appliedVersion: Int64?
    private(set) var desired: JSONValue = .object([:])
    private var getDone = false
    private var subscribed = false
    /// Desired notifications that arrived before the GET answer.
    private var buffered: [(JSONValue, Int64)] = []
    /// Reported patches waiting to be sent, folded into one, with the ids of the callers waiting for them.
    private(set) var pendingReported: JSONValue?
    private var pendingIDs: [Int] = []
    private var inFlightReported: (patch: JSONValue, ids: [Int], correlation: String)?
    /// Requests without an answer yet, by correlation id, with when they went. Storage is dropped when the last
    /// answer comes: each idle leaf of a thousand otherwise kept its emptied tables (two, ~400 bytes, before they
    /// were one).
    private var outstanding: [String: (request: Request, sentAtMs: Int64)] = [:]
    /// A request without an answer this long is treated as failed (transient) and retried.
    static let requestTimeoutMilliseconds: Int64 = 30_000
    private var lastPatchMs: Int64 = .min / 2
    private var nextCorrelation = 0
    private let correlationPrefix: String

    init(minPatchIntervalMilliseconds: Int64, correlationPrefix: String) {
        self.minPatchIntervalMilliseconds = minPatchIntervalMilliseconds
        self.correlationPrefix = correlationPrefix
    }

    private mutating func correlation() -> String {
        nextCorrelation += 1
        return "\(correlationPrefix)-\(nextCorrelation)"
    }

    private mutating func send(_ r: Request, nowMs: Int64) -> Action {
        let c = correlation()
        outstanding[c] = (r, nowMs)
        return .send(r, correlation: c)
    }

    /// Requests the hub never answered are retried (as if it had answered with a transient failure).
    mutating func expireRequests(nowMs: Int64) -> [Action] {
        let expired = outstanding.filter { nowMs - $0.value.sentAtMs >= Self.requestTimeoutMilliseconds }.map(\.key).sorted()
        var actions: [Action] = []
        for c in expired { actions += response(correlation: c, status: 0, body: nil, nowMs: nowMs) }
        return actions
    }

    // MARK: links

    /// The twin links are attached: subscribe first, then GET (the documented reconnect order).
    mutating func attached(nowMs: Int64) -> [Action] {
        phase = .syncing
        getDone = false
        subscribed = false
        buffered = []
        return [send(.subscribe, nowMs: nowMs), send(.get, nowMs: nowMs)]
    }

    /// The links are gone: whatever was in flight is unknown; a reported patch in flight is folded back under the
    /// newer pending one and sent again later.
    mutating func detached() {
        phase = .detached
        outstanding = [:]
        buffered = []
        if let f = inFlightReported {
            pendingReported = pendingReported.map { TwinRules.compose(f.patch, then: $0) } ?? f.patch
            pendingIDs = f.ids + pendingIDs
            inFlightReported = nil
        }
    }

    // MARK: hub messages

    /// A response to one of our requests. `body` is the JSON body (GET: the twin).
    mutating func response(correlation: String, status: Int, body: JSONValue?, nowMs: Int64) -> [Action] {
        guard let request = outstanding.removeValue(forKey: correlation)?.request else { return [] }
        if outstanding.isEmpty { outstanding = [:] }
        let ok = (200..<300).contains(status)
        switch request {
        case .subscribe:
            // Without the subscription desired changes would be missed: a transient failure is retried; any other
            // leaves the leaf without desired updates until its next attach (the shard logs it).
            guard ok else { return Self.isTransient(status) && phase != .detached ? [send(.subscribe, nowMs: nowMs)] : [] }
            subscribed = true
            return []
        case .get:
            guard ok, let twinDesired = body?["desired"] else {
                if Self.isTransient(status) && phase != .detached { return [send(.get, nowMs: nowMs)] }
                // The twin cannot be read: reported patches still flow; desired waits for the next attach.
                phase = .synced
                getDone = true
                return flush(nowMs: nowMs)
            }
            getDone = true
            phase = .synced
            var actions: [Action] = []
            let version = twinDesired["$version"]?.intValue ?? 0
            if let applied = appliedVersion, version < applied {
                actions.append(.desiredVersionWentBack(from: applied, to: version))
                appliedVersion = nil
            }
            desired = Self.strippingVersion(twinDesired)
            if appliedVersion.map({ version > $0 }) ?? true {
                appliedVersion = version
                actions.append(.applyDesired(desired, version: version))
            }
            let early = buffered
            buffered = []
            for (patch, v) in early { actions += desiredPatch(patch, version: v) }
            return actions + flush(nowMs: nowMs)
        case .patch:
            guard let f = inFlightReported, f.correlation == correlation else { return [] }
            inFlightReported = nil
            if ok {
                lastPatchMs = nowMs
                return [.reportedAccepted(f.ids)] + flush(nowMs: nowMs)
            }
            if Self.isTransient(status) {
                // Transient: fold back and retry after the interval.
                pendingReported = pendingReported.map { TwinRules.compose(f.patch, then: $0) } ?? f.patch
                pendingIDs = f.ids + pendingIDs
                lastPatchMs = nowMs
                return []
            }
            return [.reportedRefused(f.ids, "the hub refused the reported patch: \(status) \(body?.serialized ?? "")")] + flush(nowMs: nowMs)
        }
    }

    /// A desired-property notification (a patch carrying its `$version`).
    mutating func desiredNotification(_ patch: JSONValue) -> [Action] {
        guard let version = patch["$version"]?.intValue else { return [] }
        guard getDone else {
            buffered.append((patch, version))
            return []
        }
        return desiredPatch(patch, version: version)
    }

    private mutating func desiredPatch(_ patch: JSONValue, version: Int64) -> [Action] {
        // Versions at or below what was applied are old news (the GET already covered them, or a replay).
        guard appliedVersion.map({ version > $0 }) ?? true else { return [] }
        desired = TwinRules.merge(Self.strippingVersion(patch), into: desired)
        appliedVersion = version
        return [.applyDesired(desired, version: version)]
    }

    // MARK: reported

    /// Queues a reported patch (validated by the caller). Sent at once when possible, else folded with others.
    mutating func report(_ patch: JSONValue, id: Int, nowMs: Int64) -> [Action] {
        pendingReported = pendingReported.map { TwinRules.compose($0, then: patch) } ?? patch
        pendingIDs.append(id)
        return flush(nowMs: nowMs)
    }

    /// What the pending patch would be with `patch` folded in (to check its size before accepting it).
    func pendingAfter(_ patch: JSONValue) -> JSONValue {
        let base = inFlightReported.map { f in pendingReported.map { TwinRules.compose(f.patch, then: $0) } ?? f.patch } ?? pendingReported
        return base.map { TwinRules.compose($0, then: patch) } ?? patch
    }

    /// Sends the pending patch when synced, nothing is in flight and the interval has passed.
    mutating func flush(nowMs: Int64) -> [Action] {
        guard phase == .synced, inFlightReported == nil, let patch = pendingReported,
              nowMs - lastPatchMs >= minPatchIntervalMilliseconds
        else { return [] }
        let action = send(.patch(patch), nowMs: nowMs)
        guard case .send(_, let c) = action else { return [] }
        inFlightReported = (patch, pendingIDs, c)
        pendingReported = nil
        pendingIDs = []
        return [action]
    }

    var hasPendingReported: Bool { pendingReported != nil }

    /// Statuses worth retrying: throttled, timeouts, server errors, and no answer at all (0).
    static func isTransient(_ status: Int) -> Bool { status == 0 || status == 408 || status == 429 || status >= 500 }

    /// The document without the hub's `$version` and `$metadata`.
    private static func strippingVersion(_ v: JSONValue) -> JSONValue {
        guard case .object(var o) = v else { return v }
        o["$version"] = nil
        o["$metadata"] = nil
        // An empty document shares the empty table: the stripped copy kept its storage, per leaf.
        return .object(o.isEmpty ? [:] : o)
    }
}
