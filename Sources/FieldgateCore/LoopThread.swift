import Dispatch
import Synchronization

/// A blocking loop on a dispatch thread of its own (never the cooperative pool) that `stop()` asks to end and
/// awaits: the shape of every southbound port or bus loop. The body polls `isStopping`.
public final class LoopThread: Sendable {
    private let stopping = Atomic<Bool>(false)
    private let done = Mutex<(finished: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, nil))

    public init() {}

    public var isStopping: Bool { stopping.load(ordering: .acquiring) }

    public func start(label: String, _ body: @escaping @Sendable () -> Void) {
        DispatchQueue(label: label).async { [self] in
            body()
            let waiter = done.withLock { d in d.finished = true; defer { d.waiter = nil }; return d.waiter }
            waiter?.resume()
        }
    }

    /// Asks the loop to end, lets `wake` interrupt a wait it may sit in, and returns once the body returned.
    public func stop(wake: () -> Void = {}) async {
        stopping.store(true, ordering: .releasing)
        wake()
        await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
            let finished = done.withLock { d -> Bool in
                if d.finished { return true }
                d.waiter = cont
                return false
            }
            if finished { cont.resume() }
        }
    }
}

/// Runs one blocking call (fdatasync, waitpid) on a dispatch thread and awaits its result, so the cooperative pool
/// never blocks on it.
public func offCooperativePool<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { cont in DispatchQueue.global().async { cont.resume(returning: body()) } }
}
