/// Exponential back-off with jitter: the n-th retry (n ≥ 1) waits between half and all of
/// min(initial × 2^(n−1), maximum). The jitter spreads many leaves that failed together.
public struct Backoff: Sendable, Equatable {
    public var initialMilliseconds: Int64
    public var maximumMilliseconds: Int64

    public init(initialMilliseconds: Int64, maximumMilliseconds: Int64) {
        self.initialMilliseconds = max(1, initialMilliseconds)
        self.maximumMilliseconds = max(self.initialMilliseconds, maximumMilliseconds)
    }

    /// The delay before retry number `attempt` (1-based); `random` is uniform in [0, 1).
    public func delay(attempt: Int, random: Double) -> Int64 {
        let doublings = min(max(attempt, 1) - 1, 40)
        let ceiling = min(maximumMilliseconds, initialMilliseconds.multipliedReportingOverflow(by: 1 << doublings).overflow
            ? maximumMilliseconds : initialMilliseconds << doublings)
        let half = ceiling / 2
        return half + Int64(Double(ceiling - half) * min(max(random, 0), 1))
    }
}

/// A token bucket: `rate` tokens per second, holding at most `burst`. Pure; the caller passes the time.
public struct TokenBucket: Sendable {
    public let rate: Double
    public let burst: Double
    private var tokens: Double
    private var lastMs: Int64?

    public init(ratePerSecond: Double, burst: Double? = nil) {
        self.rate = max(ratePerSecond, 0.001)
        self.burst = max(burst ?? ratePerSecond, 1)
        self.tokens = self.burst
    }

    private mutating func refill(_ nowMs: Int64) {
        if let lastMs, nowMs > lastMs { tokens = min(burst, tokens + Double(nowMs - lastMs) * rate / 1000) }
        // A clock stepped back (NTP, an operator) counts as no time passed, and the bucket goes on from the new
        // reading: keeping the old one stalled sending for as long as the step (found at 23:xx UTC by a test whose
        // clock is set to an hour before midnight, i.e. back).
        lastMs = nowMs
    }

    /// Whole tokens available now.
    public mutating func available(nowMs: Int64) -> Int {
        refill(nowMs)
        return Int(tokens)
    }

    /// Takes one token if there is one.
    public mutating func take(nowMs: Int64) -> Bool { take(1, nowMs: nowMs) == 1 }

    /// Puts back tokens taken but not used (never above the burst).
    public mutating func refund(_ count: Int) { tokens = min(burst, tokens + Double(max(count, 0))) }

    /// Takes up to `count` tokens; returns how many were taken.
    public mutating func take(_ count: Int, nowMs: Int64) -> Int {
        refill(nowMs)
        let n = max(0, min(count, Int(tokens)))
        tokens -= Double(n)
        return n
    }

    /// Takes one token even when none is left: the balance goes below zero (one burst at most) and what comes next
    /// waits that much longer, so the rate holds on average. For the rare message that must not queue behind a bulk;
    /// the caller bounds how often (the uplink gives heartbeats half the rate).
    public mutating func borrow(nowMs: Int64) -> Bool {
        refill(nowMs)
        guard tokens - 1 >= -burst else { return false }
        tokens -= 1
        return true
    }
}
