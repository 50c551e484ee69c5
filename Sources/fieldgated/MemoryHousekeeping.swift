import CMalloc
import Dispatch
import FieldgateCore
import Logging

/// Keeps the daemon's resident memory flat under steady load (issue 18.8). Measured with `fieldgate-bench soak`
/// (1000 readings/s, 100 leaves): the live heap stays level (heaptrack: 2.7 MB peak, 0.27 MB not freed after 8 min,
/// nearly all libdispatch's caches), yet RSS crept. First cause: glibc keeping freed pages in per-thread arenas
/// (one per thread that ever allocated); second: glibc's dynamic mmap threshold, which after the first large free
/// serves large buffers from the heap, where they fragment it (0.045 MB/min with two arenas and the trim; 0.022
/// with fixed thresholds). So: one arena, fixed thresholds, and once a minute the free pages go back to the kernel.
/// The trim is a blocking call of a few milliseconds; it runs on a utility queue of its own, never on the
/// cooperative pool.
enum MemoryHousekeeping {
    /// Before any thread allocates much: arenas are created lazily, on contention.
    static func limitArenas() {
        _ = fg_malloc_limit_arenas(1)
        fg_malloc_fix_thresholds()
    }

    private static let queue = DispatchQueue(label: "fieldgate.memory", qos: .utility)

    /// Starts the periodic trim; the returned timer lives as long as it is referenced.
    static func startTrimming(every seconds: Int = 60) -> any DispatchSourceTimer {
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now() + .seconds(seconds), repeating: .seconds(seconds), leeway: .seconds(5))
        timer.setEventHandler { _ = fg_malloc_trim() }
        timer.resume()
        return timer
    }
}

extension MemoryHousekeeping {
    /// Once the start's one-time work is over (at least 10 s after the start, when `settled` says so twice in a
    /// row a second apart, or after two minutes, e.g. while the hub is down), gives back the code pages it left
    /// mapped and the heap it freed (`ResidentCode`): about half of the daemon's resident memory with a thousand
    /// leaves. What runs later is mapped again on its first touch.
    static func releaseStartupPages(settled: @escaping @Sendable () async -> Bool, logger: Logger) async {
        let deadline = ContinuousClock.now + .seconds(120)
        var calmChecks = 0
        do {
            try await Task.sleep(for: .seconds(10))
            while ContinuousClock.now < deadline, calmChecks < 2 {
                calmChecks = await settled() ? calmChecks + 1 : 0
                try await Task.sleep(for: .seconds(1))
            }
        } catch { return }  // cancelled: the daemon is stopping
        let releasedKB = await withCheckedContinuation { (c: CheckedContinuation<Int, Never>) in
            queue.async {
                _ = fg_malloc_trim()
                c.resume(returning: ResidentCode.release())
            }
        }
        logger.info("start-up over: \(releasedKB / 1024) MB of code and read-only data pages unmapped (they stay in the page cache)")
    }
}
