import CMalloc
import Dispatch

/// Keeps the daemon's resident memory flat under steady load (issue 18.8). Measured with `fieldgate-bench soak`:
/// the live heap stays level (heaptrack), yet RSS crept by a few hundred KB a minute. That was glibc keeping freed
/// pages in per-thread arenas (one per thread that ever allocated: the reactor, the spool writer, Dispatch
/// workers, the cooperative pool). So there are at most two arenas, and once a minute the free pages go back to
/// the kernel. The trim is a blocking call of a few milliseconds; it runs on a utility queue of its own, never on
/// the cooperative pool.
enum MemoryHousekeeping {
    /// Before any thread allocates much: arenas are created lazily, on contention.
    static func limitArenas() {
        _ = fg_malloc_limit_arenas(2)
    }

    /// Starts the periodic trim; the returned timer lives as long as it is referenced.
    static func startTrimming(every seconds: Int = 60) -> any DispatchSourceTimer {
        let timer = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "fieldgate.memory", qos: .utility))
        timer.schedule(deadline: .now() + .seconds(seconds), repeating: .seconds(seconds), leeway: .seconds(5))
        timer.setEventHandler { _ = fg_malloc_trim() }
        timer.resume()
        return timer
    }
}
