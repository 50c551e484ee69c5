/// The hub's daily message quota is spent (`amqp:resource-limit-exceeded`, IoT Hub error 403002). IoT Hub resets it
/// at 00:00 UTC and refuses every D2C message before then, whoever sends it, so telemetry stops for the whole uplink
/// — every leaf, every connection — until then (plus up to a minute, so a fleet does not resume in the same second),
/// or earlier when a probe interval is configured (an operator may add units to the hub). The readings keep going
/// into the spool meanwhile. When the pause ends one message probes; the others follow once the hub accepted it.
/// Pure: the clock and the random number are parameters.
struct DailyQuotaPause: Sendable {
    enum State: Equatable, Sendable {
        case open
        case paused(sinceMs: Int64, untilMs: Int64)
        /// The pause is over: one message is allowed out to see whether the quota is back.
        case probing(sinceMs: Int64)
    }

    static let dayMilliseconds: Int64 = 86_400_000
    /// How far past midnight a gateway resumes, at most.
    static let midnightSpreadMilliseconds: Int64 = 60_000

    /// Probe before midnight this often (nil: at the reset only).
    let probeIntervalMilliseconds: Int64?
    private(set) var state: State = .open
    /// Counts the pauses and probes begun. A message carries the generation it was sent in: an outcome of one sent
    /// before the current pause or probe began says nothing about the quota now (a refusal of the window that was
    /// in flight when the quota ran out may come after the probe went; an acceptance of one the hub took just before
    /// it ran out may come after the pause began).
    private(set) var generation = 0
    /// The description of the hub's last refusal.
    private(set) var lastRefusal = ""

    init(probeIntervalMilliseconds: Int64? = nil) {
        self.probeIntervalMilliseconds = probeIntervalMilliseconds.flatMap { $0 > 0 ? $0 : nil }
    }

    static func nextUTCMidnight(after ms: Int64) -> Int64 {
        (ms / dayMilliseconds + 1) * dayMilliseconds
    }

    /// The hub refused a message (sent in `sentIn`, a `generation`) for the quota; returns true when this begins a
    /// pause (it was open).
    @discardableResult
    mutating func exceeded(description: String, sentIn: Int, nowMs: Int64, random: Double) -> Bool {
        let began = state == .open
        let since: Int64
        switch state {
        case .open:
            since = nowMs
        case .paused:
            // Nothing is sent while paused: a refusal now is of a message that was already on its way. The pause
            // stands as it is (its end may be due; the next tick probes).
            return false
        case .probing(let s):
            // Only the probe's own refusal says the quota is still spent.
            if sentIn < generation { return false }
            since = s
        }
        lastRefusal = description
        generation += 1
        let reset = Self.nextUTCMidnight(after: nowMs) + Int64(random * Double(Self.midnightSpreadMilliseconds))
        state = .paused(sinceMs: since, untilMs: min(reset, probeIntervalMilliseconds.map { nowMs + $0 } ?? reset))
        return began
    }

    /// Ends a pause whose time has come; true when it did (one message may go now).
    mutating func tick(nowMs: Int64) -> Bool {
        guard case .paused(let since, let until) = state, nowMs >= until else { return false }
        state = .probing(sinceMs: since)
        generation += 1
        return true
    }

    /// The hub accepted a message sent in `sentIn`: the quota is there, unless the message went before the current
    /// pause or probe began. True when this ends a pause or a probe.
    @discardableResult
    mutating func accepted(sentIn: Int) -> Bool {
        guard state != .open, sentIn >= generation else { return false }
        state = .open
        return true
    }

    /// Messages allowed in flight over the whole uplink: nil = no limit (open), 0 while paused, 1 while probing.
    var sendLimit: Int? {
        switch state {
        case .open: nil
        case .paused: 0
        case .probing: 1
        }
    }

    var isOpen: Bool { state == .open }

    /// As the uplink's status reports it; nil while open.
    var telemetryPause: UplinkStatus.TelemetryPause? {
        let reason = "daily quota spent: \(lastRefusal)"
        switch state {
        case .open: return nil
        case .paused(let since, let until): return .init(reason: reason, sinceMs: since, untilMs: until, probing: false)
        case .probing(let since): return .init(reason: reason, sinceMs: since, untilMs: nil, probing: true)
        }
    }
}
