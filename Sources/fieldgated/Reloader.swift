import FieldgateCore
import Logging
import Synchronization
import Systemd

/// Reloads the configuration, whoever asks (SIGHUP, or `fieldgatectl reload` over the control socket, which is what
/// the unit's ExecReload runs so `systemctl reload` waits for the answer and fails with the reason). One at a time;
/// the last outcome stays visible in `status` until the next reload.
final class Reloader: Sendable {
    struct Outcome: Sendable {
        var ok: Bool
        /// What changed, or why the reload was refused.
        var detail: String
        var atMs: Int64
        var trigger: String
    }

    private let apply: @Sendable () async throws(ConfigReloadError) -> String
    private let notifier: SystemdNotifier
    private let statusLine: @Sendable () async -> String
    private let logger: Logger
    private let last = Mutex<Outcome?>(nil)
    private let turn = AsyncGate()

    init(notifier: SystemdNotifier, statusLine: @escaping @Sendable () async -> String, logger: Logger,
         apply: @escaping @Sendable () async throws(ConfigReloadError) -> String) {
        self.apply = apply
        self.notifier = notifier
        self.statusLine = statusLine
        self.logger = logger
    }

    var lastOutcome: Outcome? { last.withLock { $0 } }

    /// Re-reads the configuration and applies it; a refused reload keeps the running configuration. Reloads queue:
    /// one asked for while another runs waits for it, then reads the files as they are by then.
    func reload(trigger: String) async -> Outcome {
        await turn.acquire()
        defer { turn.release() }
        notifier.reloading(status: "reloading the configuration")
        var outcome: Outcome
        do throws(ConfigReloadError) {
            let what = try await apply()
            logger.notice("configuration reloaded: \(what)", metadata: ["trigger": "\(trigger)"])
            outcome = Outcome(ok: true, detail: what, atMs: WallClock.nowMilliseconds(), trigger: trigger)
        } catch {
            // Error priority: a refused reload leaves the gateway on a configuration the operator no longer has.
            logger.error("reload refused, the running configuration stays: \(error)", metadata: ["trigger": "\(trigger)"])
            outcome = Outcome(ok: false, detail: error.description, atMs: WallClock.nowMilliseconds(), trigger: trigger)
        }
        last.withLock { $0 = outcome }
        notifier.ready(status: outcome.ok ? await statusLine() : "reload refused: \(outcome.detail.prefix(200))")
        return outcome
    }

    /// For `status`: the last reload, when there was one.
    var json: JSONValue {
        guard let o = lastOutcome else { return .null }
        return ["result": .string(o.ok ? "applied" : "refused"), "detail": .string(o.detail),
                "at": .string(WallClock.iso8601(milliseconds: o.atMs)), "trigger": .string(o.trigger)]
    }
}

/// One holder at a time; the others wait their turn in order (without blocking a thread).
final class AsyncGate: Sendable {
    private struct State {
        var held = false
        var waiting: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())

    func acquire() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.held { s.waiting.append(c); return false }
                s.held = true
                return true
            }
            if now { c.resume() }
        }
    }

    func release() {
        let next = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if s.waiting.isEmpty { s.held = false; return nil }
            return s.waiting.removeFirst()  // stays held: handed over
        }
        next?.resume()
    }
}
