import FieldgateCore
import Gateway
import Logging
import ServiceLifecycle
import Systemd
import UnixSignals

/// The daemon's conversation with systemd (issue 8, part 2):
/// - `READY=1` once every component loop runs (config valid, spool recovered, adapters started) — the hub is not
///   waited for;
/// - `STATUS=` a one-line summary every few seconds;
/// - `WATCHDOG=1` only while no component is stuck (`Liveness`); a hub outage stops no loop, so it never stops it;
/// - `SIGHUP` → `RELOADING=1`, reload, `READY=1` (an invalid configuration keeps the running one);
/// - graceful shutdown → `STOPPING=1` first (this service is last in the group, so it is shut down first).
struct Supervisor: Service {
    let notifier: SystemdNotifier
    let heartbeats: @Sendable () -> [Heartbeat]
    let statusLine: @Sendable () async -> String
    /// Re-reads the configuration and applies it (SIGHUP).
    let reloader: Reloader
    let logger: Logger
    /// Which components are stuck (its stall threshold is already capped below WatchdogSec).
    let liveness: Liveness
    var statusIntervalMs: Int64 = 5000

    func run() async throws {
        let pingMs = notifier.watchdogPingMilliseconds
        // Trapped before READY=1: SIGHUP's default action ends the process, and a reload asked for the moment the
        // unit is up (`systemctl reload` right after start) came before the trap and stopped the daemon. One that
        // arrives before the loop below waits in the sequence and reloads once ready.
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        // Ready once every loop has gone round: until then systemd keeps the unit "activating".
        while !heartbeats().allSatisfy(\.hasBeaten) {
            guard !Task.isShuttingDownGracefully else { return }
            try? await Task.sleep(for: .milliseconds(20))
        }
        notifier.ready(status: await statusLine())
        logger.notice("ready", metadata: ["watchdog_ping_ms": "\(pingMs.map(String.init) ?? "off")", "stall_ms": "\(liveness.stallMilliseconds)"])
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await watch(liveness: liveness, pingMs: pingMs) }
            group.addTask { await reloadOnHangup(hangups) }
            await group.next()
            group.cancelAll()
        }
        notifier.stopping(status: "stopping: adapters stop, the spool is flushed, the hub connection closes")
        logger.notice("stopping")
    }

    private func watch(liveness: Liveness, pingMs: Int64?) async {
        try? await cancelWhenGracefulShutdown {
            var lastStatus = MonotonicClock.milliseconds()
            var wasStuck = false
            while !Task.isCancelled {
                let now = MonotonicClock.milliseconds()
                let stuck = liveness.stuck(heartbeats().map(Liveness.Reading.init), nowMs: now)
                if stuck.isEmpty {
                    notifier.watchdog()
                    if wasStuck { logger.notice("every component makes progress again; watchdog pings resumed") }
                } else {
                    let names = stuck.map { "\($0.name) (\($0.forMs / 1000) s)" }.joined(separator: ", ")
                    logger.error("no progress from \(names): watchdog pings withheld", metadata: ["stuck": "\(stuck.map(\.name).joined(separator: ","))"])
                    notifier.status("stuck: \(names)")
                }
                wasStuck = !stuck.isEmpty
                if stuck.isEmpty, now - lastStatus >= statusIntervalMs {
                    notifier.status(await statusLine())
                    lastStatus = now
                }
                try await Task.sleep(for: .milliseconds(min(pingMs ?? 1000, 1000)))
            }
        }
    }

    private func reloadOnHangup(_ hangups: UnixSignalsSequence) async {
        await cancelWhenGracefulShutdown {
            for await _ in hangups {
                _ = await reloader.reload(trigger: "SIGHUP")
            }
        }
    }
}

struct ConfigReloadError: Error, CustomStringConvertible {
    var description: String
}
