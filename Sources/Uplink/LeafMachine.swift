import FieldgateCore
import IoTHub

/// Where a leaf stands on its connection (shown in its status).
public enum LeafPhase: String, Sendable, Equatable, CaseIterable {
    /// The connection is not open.
    case offline
    /// Waiting for its turn at the attach pacer.
    case queued
    case authenticating
    case attaching
    case ready
    /// A transient failure; retries after a back-off.
    case backingOff
    /// The hub refused the leaf (unknown, disabled, bad key): slow retry; the other leaves are unaffected.
    case refused
}

/// The lifecycle of one leaf identity on a shared connection: put-token, attach, renew, back off. A pure state
/// machine: events come in with the time and a random number, actions go out; the shard connection performs
/// them. (Contract 3: one leaf's failure touches only this machine.)
struct LeafMachine {
    enum KeySlot: Sendable { case primary, secondary }

    enum Action: Equatable {
        /// Put a token for the leaf on the CBS link, signed with this key.
        case putToken(KeySlot)
        case attachLinks
        /// Close the leaf's links (they are unusable); in-flight telemetry goes back to the spool.
        case detachLinks
    }

    struct Timing {
        var tokenTTLMilliseconds: Int64
        var renewFraction: Double
        var renewJitter: Double
        var leafBackoff: Backoff
        var throttleBackoff: Backoff
        var refusedBackoff: Backoff
        var operationTimeoutMilliseconds: Int64
    }

    let hasSecondaryKey: Bool
    let timing: Timing
    private(set) var phase: LeafPhase = .offline
    /// The key that signs this leaf's tokens: the one that worked last, kept across reconnects; it changes only
    /// when the hub refuses a token signed with it (401).
    private(set) var slot: KeySlot = .primary
    /// The other key was tried after a 401 and has not worked since.
    private var triedOtherSlot = false
    /// When the current phase gives up (authenticating/attaching) or ends (backingOff/refused).
    private(set) var deadlineMs: Int64 = 0
    private(set) var renewAtMs: Int64?
    private(set) var renewalPending = false
    /// Telemetry is paused until then (throttled); links stay attached.
    private(set) var pausedUntilMs: Int64 = 0
    /// After a throttle, and on new links, one message goes alone until the hub accepts one: with a full pipeline
    /// in flight, a hub that lifts its throttle midway would accept a later message before the rejected earlier
    /// ones.
    private(set) var probing = false
    private(set) var lastError: String?
    private var failures = 0
    private var throttles = 0
    private var refusals = 0

    /// The identity authenticates with its client certificate at TLS: no put-token, no renewals.
    let authenticatesAtTLS: Bool

    init(hasSecondaryKey: Bool, authenticatesAtTLS: Bool = false, timing: Timing) {
        self.hasSecondaryKey = hasSecondaryKey
        self.authenticatesAtTLS = authenticatesAtTLS
        self.timing = timing
    }

    func canSend(nowMs: Int64) -> Bool { phase == .ready && nowMs >= pausedUntilMs }

    /// Messages this leaf may have in flight now.
    func inFlightLimit(_ configured: Int) -> Int { probing ? 1 : configured }

    // MARK: connection

    mutating func connectionOpened() {
        phase = .queued
        renewAtMs = nil
        renewalPending = false
    }

    mutating func connectionLost() {
        phase = .offline
        renewAtMs = nil
        renewalPending = false
    }

    /// The pacer let this leaf authenticate.
    mutating func admitted(nowMs: Int64) -> [Action] {
        guard phase == .queued else { return [] }
        if authenticatesAtTLS {
            phase = .attaching
            deadlineMs = nowMs + timing.operationTimeoutMilliseconds
            return [.attachLinks]
        }
        phase = .authenticating
        deadlineMs = nowMs + timing.operationTimeoutMilliseconds
        return [.putToken(slot)]
    }

    // MARK: CBS

    mutating func tokenAnswered(status: Int, description: String, nowMs: Int64, random: Double) -> [Action] {
        if renewalPending && phase == .ready {
            renewalPending = false
            if (200..<300).contains(status) {
                scheduleRenewal(nowMs: nowMs, random: random)
                return []
            }
            if [401, 403, 404].contains(status) {
                return fail(status: status, description: "token renewal: \(description)", nowMs: nowMs, random: random) + [.detachLinks]
            }
            // Transient (throttled, timeout): the current token still covers the links for a while; retry soon.
            failures += 1
            lastError = "token renewal: \(status) \(description)"
            renewAtMs = nowMs + timing.leafBackoff.delay(attempt: failures, random: random)
            return []
        }
        guard phase == .authenticating else { return [] }
        if (200..<300).contains(status) {
            triedOtherSlot = false
            scheduleRenewal(nowMs: nowMs, random: random)
            phase = .attaching
            deadlineMs = nowMs + timing.operationTimeoutMilliseconds
            return [.attachLinks]
        }
        if status == 401 && hasSecondaryKey && !triedOtherSlot {
            // The hub accepts either key; a rotated key is not a refused leaf yet: try the other one at once.
            slot = slot == .primary ? .secondary : .primary
            triedOtherSlot = true
            lastError = "put-token \(status): \(description) (trying the \(slot) key)"
            phase = .queued
            return []
        }
        return fail(status: status, description: "put-token: \(description)", nowMs: nowMs, random: random)
    }

    private mutating func scheduleRenewal(nowMs: Int64, random: Double) {
        let fraction = timing.renewFraction + timing.renewJitter * (2 * random - 1)
        renewAtMs = nowMs + Int64(Double(timing.tokenTTLMilliseconds) * min(max(fraction, 0.1), 0.95))
    }

    /// 401/403/404 mean the hub refuses this identity: slow retry. Anything else is transient.
    private mutating func fail(status: Int, description: String, nowMs: Int64, random: Double) -> [Action] {
        lastError = "\(status) \(description)"
        switch status {
        case 401, 403, 404:
            refusals += 1
            // Only a refused signature says something about the key; disabled (403) or unknown (404) does not.
            if status == 401 { slot = .primary; triedOtherSlot = false }
            phase = .refused
            deadlineMs = nowMs + timing.refusedBackoff.delay(attempt: refusals, random: random)
        case 429:
            throttles += 1
            phase = .backingOff
            deadlineMs = nowMs + timing.throttleBackoff.delay(attempt: throttles, random: random)
        default:
            failures += 1
            phase = .backingOff
            deadlineMs = nowMs + timing.leafBackoff.delay(attempt: failures, random: random)
        }
        renewAtMs = nil
        renewalPending = false
        return []
    }

    // MARK: links

    /// Every link of the leaf is attached.
    mutating func linksAttached() {
        guard phase == .attaching else { return }
        phase = .ready
        // The first message on new links goes alone: a hub that throttles (or refuses) the leaf answers one
        // message, not a full window sent only to come back rejected (bandwidth, and ~2 kB of Proton delivery
        // state each that the connection keeps pooled for good). The first acceptance opens the window.
        probing = true
        failures = 0
        refusals = 0
        lastError = nil
    }

    /// The hub detached (or refused) one of the leaf's links.
    mutating func linkDetached(condition: String?, description: String, nowMs: Int64, random: Double) -> [Action] {
        guard phase == .attaching || phase == .ready else { return [] }
        let what = "link detached: \(condition ?? "no condition") \(description)"
        switch condition {
        case IoTHubAMQP.throttled:
            _ = fail(status: 429, description: what, nowMs: nowMs, random: random)
        case IoTHubAMQP.notFound:
            _ = fail(status: 404, description: what, nowMs: nowMs, random: random)
        case IoTHubAMQP.unauthorizedAccess where authenticatesAtTLS && phase == .attaching:
            // No token to renew: the hub refuses the certificate itself (unknown thumbprint, no chain to a verified CA).
            // A detach later on (the registration changed) is retried soon, and the attach then says which.
            _ = fail(status: 401, description: what, nowMs: nowMs, random: random)
        default:
            // Unauthorized is usually an expired token or a disabled device: re-authenticate after a short
            // back-off; the put-token answer tells a refused leaf from an expired token.
            _ = fail(status: 0, description: what, nowMs: nowMs, random: random)
        }
        return [.detachLinks]
    }

    /// The hub rejected a telemetry message as throttled (or over quota): pause this leaf only.
    mutating func throttled(description: String, nowMs: Int64, random: Double) {
        throttles += 1
        lastError = "throttled: \(description)"
        probing = true
        pausedUntilMs = max(pausedUntilMs, nowMs + timing.throttleBackoff.delay(attempt: throttles, random: random))
    }

    /// A message was accepted: the throttle back-off starts over.
    mutating func delivered() {
        if throttles > 0 && pausedUntilMs > 0 { throttles = 0; pausedUntilMs = 0 }
        probing = false
    }

    /// Something outside changed what the hub will say (the identity was provisioned again): a refused or
    /// backing-off leaf tries again at the next tick instead of at the end of its back-off.
    mutating func retrySoon(nowMs: Int64) {
        guard phase == .refused || phase == .backingOff else { return }
        deadlineMs = nowMs
    }

    // MARK: time

    mutating func tick(nowMs: Int64) -> [Action] {
        switch phase {
        case .backingOff, .refused:
            if nowMs >= deadlineMs { phase = .queued }
            return []
        case .authenticating:
            if nowMs >= deadlineMs { return fail(status: 0, description: "put-token: no answer in time", nowMs: nowMs, random: 0.5) }
            return []
        case .attaching:
            if nowMs >= deadlineMs { return fail(status: 0, description: "attach: no answer in time", nowMs: nowMs, random: 0.5) + [.detachLinks] }
            return []
        case .ready:
            if renewalPending {
                // No answer to the renewal: the old token still holds for a while; try again shortly.
                if nowMs >= deadlineMs { renewalPending = false; renewAtMs = nowMs + timing.leafBackoff.maximumMilliseconds / 10 }
                return []
            }
            guard let renewAtMs, nowMs >= renewAtMs else { return [] }
            renewalPending = true
            self.renewAtMs = nil
            deadlineMs = nowMs + timing.operationTimeoutMilliseconds
            return [.putToken(slot)]
        case .offline, .queued:
            return []
        }
    }
}
