@testable import ProtonAMQP
import Synchronization
import Testing

/// The reactor's timer heap: due jobs in deadline order, the first scheduled first among equal deadlines,
/// cancelled ones never run, and nothing due before its time.
@Suite("Reactor timers")
struct TimerQueueTests {
    @Test func dueJobsComeOutInDeadlineOrderAndFirstScheduledFirst() {
        var queue = TimerQueue()
        let ran = Mutex<[Int]>([])
        let start = ContinuousClock.now
        var generator = SystemRandomNumberGenerator()
        var expected: [(ms: Int, id: Int)] = []
        var cancelled = Set<Int>()
        for id in 0..<2000 {
            let ms = Int.random(in: 0..<50, using: &generator) * 10  // many equal deadlines
            let timer = AMQPTimer()
            queue.insert(deadline: start + .milliseconds(ms), timer: timer) { ran.withLock { $0.append(id) } }
            if id % 7 == 0 { timer.cancel(); cancelled.insert(id) } else { expected.append((ms, id)) }
        }
        #expect(queue.nextDeadline() == start + .milliseconds(expected.map(\.ms).min()!))

        for job in queue.popDue(now: start + .milliseconds(245)) { job() }
        let firstHalf = expected.filter { $0.ms <= 245 }.sorted { ($0.ms, $0.id) < ($1.ms, $1.id) }.map(\.id)
        #expect(ran.withLock { $0 } == firstHalf)
        #expect(queue.nextDeadline()! > start + .milliseconds(245))

        for job in queue.popDue(now: start + .seconds(10)) { job() }
        #expect(ran.withLock { $0 } == expected.sorted { ($0.ms, $0.id) < ($1.ms, $1.id) }.map(\.id))
        #expect(ran.withLock { $0 }.allSatisfy { !cancelled.contains($0) })
        #expect(queue.nextDeadline() == nil && queue.count == 0)
    }

    /// A timer cancelled long before its deadline does not stay in the heap (with its job's captures) until then:
    /// 100,000 holds of a minute, each answered in time, next to 50 live timers, keep the heap at most twice what
    /// is live (the sweep comes before the insert that would pass that), and the live ones still come out in order.
    @Test func timersCancelledLongBeforeTheirDeadlineAreSweptOut() {
        var queue = TimerQueue()
        let start = ContinuousClock.now
        let ran = Mutex<[Int]>([])
        for id in 0..<50 {
            queue.insert(deadline: start + .seconds(3600 - id), timer: AMQPTimer()) { ran.withLock { $0.append(id) } }
        }
        var largest = 0
        for _ in 0..<100_000 {
            let hold = AMQPTimer()
            queue.insert(deadline: start + .seconds(60), timer: hold) { Issue.record("a cancelled timer ran") }
            hold.cancel()
            largest = max(largest, queue.count)
        }
        #expect(largest == max(TimerQueue.smallestSweep, 2 * 50))
        #expect(queue.nextDeadline() == start + .seconds(3600 - 49))
        for job in queue.popDue(now: start + .seconds(7200)) { job() }
        #expect(ran.withLock { $0 } == Array((0..<50).reversed()))
        #expect(queue.count == 0)
    }

    /// After a peak of live timers (a thousand leaves connecting) the sweep threshold follows the heap down, so
    /// cancelled timers pile up to twice what is live now, not twice the peak.
    @Test func theSweepThresholdFollowsTheHeapDown() {
        var queue = TimerQueue()
        let start = ContinuousClock.now
        for i in 0..<1000 { queue.insert(deadline: start + .milliseconds(i), timer: AMQPTimer()) {} }
        _ = queue.popDue(now: start + .milliseconds(989))  // 10 left
        var largest = 0
        for _ in 0..<10_000 {
            let hold = AMQPTimer()
            queue.insert(deadline: start + .seconds(60), timer: hold) {}
            hold.cancel()
            largest = max(largest, queue.count)
        }
        #expect(largest == TimerQueue.smallestSweep)
    }

    @Test func cancelledTimersAtTheTopDoNotHoldTheNextDeadline() {
        var queue = TimerQueue()
        let start = ContinuousClock.now
        let early = AMQPTimer(), late = AMQPTimer()
        queue.insert(deadline: start + .seconds(1), timer: early) {}
        queue.insert(deadline: start + .seconds(120), timer: late) {}
        early.cancel()
        #expect(queue.nextDeadline() == start + .seconds(120))
        #expect(queue.count == 1)
        #expect(queue.popDue(now: start + .seconds(60)).isEmpty)
    }
}
