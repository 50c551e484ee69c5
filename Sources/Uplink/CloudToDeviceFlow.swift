import FieldgateCore

/// How a leaf's C2D messages are held while it cannot take them (see `CloudToDeviceFlow`).
public struct CloudToDevicePolicy: Sendable, Equatable {
    /// How long a message may stay unsettled here (the hub's lock is 60 s). Default: 50 s.
    public var holdMilliseconds: Int64 = 50_000
    /// Retries of a held message. Default: 1 s → 8 s.
    public var retry = Backoff(initialMilliseconds: 1000, maximumMilliseconds: 8000)
    /// No credit for this long after a transient failure outlasted the hold (the adapter gives no signal when
    /// it recovers). Default: 30 s.
    public var pauseAfterAbandonMilliseconds: Int64 = 30_000
    /// No credit for this long after an unreachable leaf outlasted the hold, unless the adapter says it is back
    /// sooner; then one probe delivery. Default: 5 min.
    public var pauseWhileUnreachableMilliseconds: Int64 = 300_000

    public init() {}
}

/// One leaf's cloud-to-device flow (contract 4; docs/cloud-to-device.md): the hub hands a device its messages in
/// queue order, so the leaf gets them one at a time in that order. The receiver's credit is the lever: one while
/// the leaf can take a message, none while it cannot, so the leaf's messages wait in the hub's queue (no lock
/// held, no delivery count spent) instead of being burnt in a hot redelivery loop.
///
/// A message the adapter cannot hand over now (`abandon`: transient, `unreachable`: the leaf cannot be reached)
/// is held, unsettled, and retried — at once when the adapter says the leaf is back — while its lock allows
/// (`holdMilliseconds` from arrival, under the hub's 60 s). When the budget is spent it is released (the hub
/// re-enqueues it at its place, one delivery counted) and no credit is given until the leaf is back or a pause
/// ends. Pure: the time comes in, actions go out; the shard performs them.
struct CloudToDeviceFlow: Equatable {
    typealias Policy = CloudToDevicePolicy

    struct Held: Equatable {
        var token: Int
        var arrivedAtMs: Int64
        var attempts = 1
    }

    enum State: Equatable {
        /// Nothing held; credit is out (or goes out when the link attaches).
        case waiting
        /// The adapter works on the head of the queue.
        case working
        /// The head waits for a retry at `retryAtMs`, or for the leaf to be reachable.
        case holding(retryAtMs: Int64, unreachable: Bool)
        /// No credit until `untilMs` (or until the leaf is reachable): the hub keeps the leaf's messages.
        case paused(untilMs: Int64, unreachable: Bool)
    }

    enum Action: Equatable {
        /// Give the C2D receiver one credit.
        case grantCredit
        /// Hand the message behind `token` to the adapter; the uplink abandons it at `deadlineMs` if unanswered.
        case dispatch(token: Int, deadlineMs: Int64)
        /// Settle the delivery: complete, reject, or release (`.abandon`) back to the hub's queue.
        case settle(token: Int, C2DOutcome)
    }

    let policy: Policy
    private(set) var state: State = .waiting
    /// Deliveries in hub order; the head is the one being worked on or held. With one credit there is at most one.
    private(set) var queue: [Held] = []

    init(policy: Policy) { self.policy = policy }

    // MARK: link

    /// The C2D link attached: credit, unless paused.
    mutating func attached(nowMs: Int64) -> [Action] {
        queue = []
        if case .paused(let until, _) = state, nowMs < until { return [] }
        state = .waiting
        return [.grantCredit]
    }

    /// The link is gone, and with it every delivery (the hub re-enqueues them when their locks go).
    mutating func detached() {
        queue = []
        if case .paused = state { return }
        state = .waiting
    }

    // MARK: messages

    /// A delivery arrived (in hub order).
    mutating func arrived(token: Int, nowMs: Int64) -> [Action] {
        queue.append(Held(token: token, arrivedAtMs: nowMs))
        guard queue.count == 1 else { return [] }
        state = .working
        return [.dispatch(token: token, deadlineMs: nowMs + policy.holdMilliseconds)]
    }

    /// The adapter's outcome for the delivery behind `token` (ignored unless it is the head).
    mutating func finished(token: Int, outcome: C2DOutcome, nowMs: Int64) -> [Action] {
        guard let head = queue.first, head.token == token, state == .working else { return [] }
        switch outcome {
        case .complete, .reject:
            queue.removeFirst()
            return [.settle(token: token, outcome)] + next(nowMs: nowMs)
        case .abandon, .unreachable:
            let unreachable = if case .unreachable = outcome { true } else { false }
            let retryAt = nowMs + policy.retry.delay(attempt: head.attempts, random: 0.5)
            if retryAt < head.arrivedAtMs + policy.holdMilliseconds {
                state = .holding(retryAtMs: retryAt, unreachable: unreachable)
                return []
            }
            return releaseAll(nowMs: nowMs, unreachable: unreachable, why: outcome)
        }
    }

    /// The adapter says the leaf can be reached again: retry the held message, or end a pause.
    mutating func reachable(nowMs: Int64) -> [Action] {
        switch state {
        case .holding:
            return retryHead(nowMs: nowMs)
        case .paused:
            state = .waiting
            return [.grantCredit]
        case .waiting, .working:
            return []
        }
    }

    /// Retries, the end of the hold budget, the end of a pause.
    mutating func tick(nowMs: Int64) -> [Action] {
        switch state {
        case .holding(let retryAt, let unreachable):
            guard let head = queue.first else { state = .waiting; return [.grantCredit] }
            if nowMs >= head.arrivedAtMs + policy.holdMilliseconds {
                return releaseAll(nowMs: nowMs, unreachable: unreachable,
                                  why: .abandon("held \(policy.holdMilliseconds / 1000) s without reaching the leaf"))
            }
            return nowMs >= retryAt ? retryHead(nowMs: nowMs) : []
        case .paused(let until, _):
            guard nowMs >= until else { return [] }
            state = .waiting
            return [.grantCredit]
        case .waiting, .working:
            return []
        }
    }

    var isHolding: Bool { if case .holding = state { true } else { false } }
    var isPaused: Bool { if case .paused = state { true } else { false } }

    // MARK: helpers

    private mutating func retryHead(nowMs: Int64) -> [Action] {
        guard !queue.isEmpty else { state = .waiting; return [.grantCredit] }
        queue[0].attempts += 1
        state = .working
        return [.dispatch(token: queue[0].token, deadlineMs: queue[0].arrivedAtMs + policy.holdMilliseconds)]
    }

    /// The next queued delivery, or credit for one.
    private mutating func next(nowMs: Int64) -> [Action] {
        guard let head = queue.first else {
            state = .waiting
            return [.grantCredit]
        }
        state = .working
        return [.dispatch(token: head.token, deadlineMs: head.arrivedAtMs + policy.holdMilliseconds)]
    }

    /// Everything held goes back to the hub in order (so it comes back in order), and the credit stays at zero.
    private mutating func releaseAll(nowMs: Int64, unreachable: Bool, why: C2DOutcome) -> [Action] {
        let reason: String = switch why {
        case .abandon(let s), .unreachable(let s), .reject(let s): s
        case .complete: ""
        }
        let actions = queue.map { Action.settle(token: $0.token, .abandon(reason)) }
        queue = []
        let pause = unreachable ? policy.pauseWhileUnreachableMilliseconds : policy.pauseAfterAbandonMilliseconds
        state = .paused(untilMs: nowMs + pause, unreachable: unreachable)
        return actions
    }
}
