import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Proof of progress for the systemd watchdog (docs/contracts.md §5): a loop `beat()`s every
/// iteration, and a blocking operation runs inside `busy {}`. The health monitor reads both: a loop that has not
/// beaten lately, or an operation that has not returned, is stuck. A hub outage stops no loop, so it never
/// stops the watchdog; a hung disk or a blocked thread does.
public final class Heartbeat: Sendable {
    public let name: String
    /// False for a component that only runs operations on demand (no loop to beat): only `busy` is watched.
    public let isLoop: Bool
    private let lastBeat: Atomic<Int64>
    private let busySince = Atomic<Int64>(0)
    private let frozenUntil = Atomic<Int64>(0)
    private let beaten = Atomic<Bool>(false)

    public init(_ name: String, isLoop: Bool = true) {
        self.name = name
        self.isLoop = isLoop
        lastBeat = Atomic(MonotonicClock.milliseconds())
    }

    /// A loop went round.
    public func beat() {
        if frozenUntil.load(ordering: .relaxed) != 0 { holdWhileFrozen() }
        lastBeat.store(MonotonicClock.milliseconds(), ordering: .relaxed)
        beaten.store(true, ordering: .relaxed)
    }

    /// True once the loop has gone round at least once: the component is running.
    public var hasBeaten: Bool { !isLoop || beaten.load(ordering: .relaxed) }

    /// Runs a blocking operation that must return for the component to count as alive.
    public func busy<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        let outermost = enterBusy()
        defer { leaveBusy(outermost) }
        return try body()
    }

    /// `busy` in two halves, for callers that must return a `sending` result: pass `enterBusy()`'s answer to
    /// `leaveBusy` (nested operations count from the outermost).
    public func enterBusy() -> Bool {
        busySince.compareExchange(expected: 0, desired: MonotonicClock.milliseconds(), ordering: .relaxed).exchanged
    }

    public func leaveBusy(_ outermost: Bool) {
        if outermost { busySince.store(0, ordering: .relaxed) }
    }

    /// What the monitor reads: when the loop last beat, and since when an operation has been running (nil: none).
    public var reading: (lastBeatMs: Int64, busySinceMs: Int64?) {
        let b = busySince.load(ordering: .relaxed)
        return (lastBeat.load(ordering: .relaxed), b == 0 ? nil : b)
    }

    /// Operators' and tests' "freeze this component on purpose" (fieldgatectl debug freeze): the next `beat()`
    /// blocks the loop itself for `milliseconds`, exactly like a real hang would.
    public func freeze(milliseconds: Int64) {
        frozenUntil.store(MonotonicClock.milliseconds() + milliseconds, ordering: .relaxed)
    }

    private func holdWhileFrozen() {
        while true {
            let until = frozenUntil.load(ordering: .relaxed)
            let now = MonotonicClock.milliseconds()
            guard until != 0, now < until else { break }
            usleep(UInt32(min(until - now, 100) * 1000))
        }
        frozenUntil.store(0, ordering: .relaxed)
    }
}

/// CLOCK_MONOTONIC in milliseconds (never jumps with the wall clock).
public enum MonotonicClock {
    public static func milliseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }
}
