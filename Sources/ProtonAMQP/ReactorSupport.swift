internal import CProton
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Moves a non-Sendable value into a job that runs on the reactor thread; the sender never touches it again.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// A scheduled reactor job; `cancel()` from any thread.
public final class AMQPTimer: Sendable {
    private let cancelled = Atomic<Bool>(false)
    public func cancel() { cancelled.store(true, ordering: .relaxed) }
    var isCancelled: Bool { cancelled.load(ordering: .relaxed) }
}

/// The reactor's timers: a binary min-heap by deadline, first scheduled first among equal deadlines. A sorted array
/// made every insert a scan: a thousand leaves each scheduling a deadline two minutes out cost ~475 M instructions
/// at connect. Cancelled timers are dropped when they come up or reach the top, and by a sweep whenever the heap has
/// grown to twice its smallest size since the last one: a timer cancelled long before its deadline (a C2D hold
/// answered in time, a method deadline met) would otherwise keep its job, and everything the job captured, until then.
struct TimerQueue {
    private struct Entry {
        var deadline: ContinuousClock.Instant
        var order: UInt64
        var timer: AMQPTimer
        var job: @Sendable () -> Void

        func precedes(_ other: Entry) -> Bool { deadline < other.deadline || (deadline == other.deadline && order < other.order) }
    }

    private var heap: [Entry] = []
    private var scheduled: UInt64 = 0
    /// The heap's smallest size since the last sweep: the next one comes at twice this (at least `smallestSweep`),
    /// so every sweep follows at least as many inserts as it keeps, and costs O(1) a timer.
    private var sweptAt = 0
    static let smallestSweep = 64

    var count: Int { heap.count }

    mutating func insert(deadline: ContinuousClock.Instant, timer: AMQPTimer, job: @escaping @Sendable () -> Void) {
        if heap.count >= Swift.max(Self.smallestSweep, 2 * sweptAt) { sweepCancelled() }
        scheduled &+= 1
        heap.append(Entry(deadline: deadline, order: scheduled, timer: timer, job: job))
        siftUp(heap.count - 1)
    }

    /// Drops every cancelled timer and rebuilds the heap (bottom-up, linear).
    private mutating func sweepCancelled() {
        heap.removeAll { $0.timer.isCancelled }
        sweptAt = heap.count
        var parent = heap.count / 2 - 1
        while parent >= 0 {
            siftDown(parent)
            parent -= 1
        }
    }

    private mutating func siftUp(_ index: Int) {
        var child = index
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].precedes(heap[parent]) else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    /// The jobs due by `now`, earliest first; cancelled ones are dropped.
    mutating func popDue(now: ContinuousClock.Instant) -> [@Sendable () -> Void] {
        var due: [@Sendable () -> Void] = []
        while let first = heap.first, first.deadline <= now {
            let entry = removeFirst()
            if !entry.timer.isCancelled { due.append(entry.job) }
        }
        return due
    }

    /// The deadline of the earliest timer not cancelled (cancelled ones at the top are dropped on the way).
    mutating func nextDeadline() -> ContinuousClock.Instant? {
        while let first = heap.first, first.timer.isCancelled { _ = removeFirst() }
        return heap.first?.deadline
    }

    mutating func removeAll() {
        heap.removeAll()
        sweptAt = 0
    }

    private mutating func removeFirst() -> Entry {
        let first = heap[0]
        let last = heap.removeLast()
        sweptAt = Swift.min(sweptAt, heap.count)
        guard !heap.isEmpty else { return first }
        heap[0] = last
        siftDown(0)
        return first
    }

    private mutating func siftDown(_ index: Int) {
        var parent = index
        while true {
            let left = 2 * parent + 1, right = left + 1
            var smallest = parent
            if left < heap.count, heap[left].precedes(heap[smallest]) { smallest = left }
            if right < heap.count, heap[right].precedes(heap[smallest]) { smallest = right }
            guard smallest != parent else { break }
            heap.swapAt(parent, smallest)
            parent = smallest
        }
    }
}

final class ListenerContext: @unchecked Sendable {
    // @unchecked: all mutable fields are used on the reactor thread only.
    let configuration: AMQPListenerConfiguration
    let sslDomain: SendablePointer?
    let makeHandler: @Sendable () -> any AMQPConnectionHandler
    /// The space-separated mechanism list handed to Proton; it must outlive every SASL exchange.
    let mechanismList: UnsafeMutablePointer<CChar>
    var raw: SendablePointer?
    var opened: ((Result<Int, any Error>) -> Void)?
    private let closedWaiters = Mutex<(closed: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    init(configuration: AMQPListenerConfiguration, sslDomain: SendablePointer?, makeHandler: @escaping @Sendable () -> any AMQPConnectionHandler) {
        self.configuration = configuration
        self.sslDomain = sslDomain
        self.makeHandler = makeHandler
        self.mechanismList = strdup(configuration.saslMechanisms.joined(separator: " "))!
    }

    func closed() {
        let waiters = closedWaiters.withLock { state in
            state.closed = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for w in waiters { w.resume() }
    }

    func waitClosed() async {
        await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
            let done = closedWaiters.withLock { state -> Bool in
                if state.closed { return true }
                state.waiters.append(cont)
                return false
            }
            if done { cont.resume() }
        }
    }

    deinit {
        free(mechanismList)
        if let sslDomain { pn_ssl_domain_free(sslDomain.raw) }
    }
}

/// A listening socket.
public struct AMQPListener: Sendable {
    let reactor: AMQPReactor
    let context: ListenerContext
    /// The bound port (useful when listening on port 0).
    public let port: Int

    /// Stops accepting; existing connections stay.
    public func close() async {
        reactor.closeListener(context)
        await context.waitClosed()
    }
}

final class ConnectionContext: @unchecked Sendable {
    // @unchecked: `handler`, `saslMechanism` and `transportError` are reactor-thread state; `shared` is locked.
    let handler: any AMQPConnectionHandler
    let listener: ListenerContext?
    var saslMechanism = ""
    var transportError: AMQPError?
    private let shared = Mutex<Shared>(Shared())

    private struct Shared {
        var jobs: [@Sendable (AMQPConnection) -> Void] = []
        var connection: SendablePointer?
        var wake: (@Sendable () -> Void)?
        var closed = false
    }

    init(handler: any AMQPConnectionHandler, listener: ListenerContext?) {
        self.handler = handler
        self.listener = listener
    }

    /// Binds the context to its Proton connection and how to wake it; jobs queued before now are woken.
    func attach(_ connection: SendablePointer, wake: @escaping @Sendable () -> Void) {
        shared.withLock { s in
            s.connection = connection
            s.wake = wake
            if !s.jobs.isEmpty { wake() }
        }
    }

    /// After this no job runs and no wake is sent: Proton frees the connection once the batch ends.
    func detach() {
        shared.withLock { s in
            s.closed = true
            s.connection = nil
            s.wake = nil
            s.jobs = []
        }
    }

    /// Queues `job` and wakes the connection; false when the connection is gone.
    func enqueue(_ job: @escaping @Sendable (AMQPConnection) -> Void) -> Bool {
        shared.withLock { s -> Bool in
            guard !s.closed else { return false }
            s.jobs.append(job)
            // Waking under the lock: `detach` cannot run, so the connection cannot be freed meanwhile.
            if let wake = s.wake, s.jobs.count == 1 { wake() }
            return true
        }
    }

    func takeJobs() -> [@Sendable (AMQPConnection) -> Void] {
        shared.withLock { s in
            defer { s.jobs = [] }
            return s.jobs
        }
    }

    var isClosed: Bool { shared.withLock { $0.closed } }
}

/// A Sendable handle to a connection, usable from any thread.
public struct AMQPConnectionRef: Sendable, Hashable {
    let context: ConnectionContext

    /// Runs `job` on the reactor thread with the live connection. Returns false if the connection is gone.
    @discardableResult
    public func execute(_ job: @escaping @Sendable (AMQPConnection) -> Void) -> Bool {
        context.enqueue(job)
    }

    /// Closes the connection (AMQP close, then the socket).
    public func close(_ condition: AMQPCondition? = nil) {
        execute { $0.close(condition) }
    }

    public var isClosed: Bool { context.isClosed }

    public static func == (a: Self, b: Self) -> Bool { a.context === b.context }
    public func hash(into h: inout Hasher) { h.combine(ObjectIdentifier(context)) }
}
