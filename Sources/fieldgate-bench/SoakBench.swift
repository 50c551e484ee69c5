import ArgumentParser
import ControlSocket
import FieldgateCore
import HubServiceClient

#if canImport(Glibc)
import Glibc
#endif

/// Steady-state memory of the real daemon (issue 18.8): fieldgated with `leaves` UDP leaves receiving `rate`
/// readings/s for `minutes`, delivered to fieldgate-hub over TLS. Prints RSS every sample, the growth over the
/// run's last three quarters, and the loss (sent − accepted by the hub).
struct SoakBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "soak", abstract: "fieldgated RSS under steady load: the series, its growth, and the loss.")

    @Option(help: "Minutes of load.") var minutes = 60
    @Option(help: "Readings per second, all leaves together.") var rate = 1000
    @Option(help: "UDP leaves.") var leaves = 100
    @Option(help: "Seconds between RSS samples.") var sample = 60
    @Option(help: "Directory for the daemon's state.") var dir = "/var/tmp/fieldgate-soak-bench"
    @Option(help: "fieldgated binary. Default: next to this one.") var daemon: String?

    func run() async throws {
        let hub = try await BenchHub.start(binary: siblingExecutable("fieldgate-hub"), devices: leaves)
        defer { hub.stop() }
        _ = system("rm -rf '\(dir)'; mkdir -p '\(dir)/devices.d'")
        defer { _ = system("rm -rf '\(dir)'") }
        let gateway = try await hub.service.request("PUT", "/devices/bench-gateway", body: [:])
        let gatewayKey = gateway.json?["authentication"]?["symmetricKey"]?["primaryKey"]?.stringValue ?? ""
        let port = try await DaemonMemoryBench.writeConfiguration(dir: dir, hub: hub, gatewayKey: gatewayKey, leaves: leaves, telemetryOnly: false)
        let child = try ChildProcess.spawn(daemon ?? siblingExecutable("fieldgated"), ["run", "--config", dir + "/fieldgate.toml", "--log-level", "warning"])
        defer { child.terminate() }
        let deadline = ContinuousClock.now + .seconds(60)
        while true {
            guard child.isRunning() else { throw BenchError("fieldgated exited (its log is on this terminal)") }
            let status = try? ControlClient.request(["command": "status"], socketPath: dir + "/control.sock")
            if status?["leaves_by_state"]?["ready"]?.intValue == Int64(leaves + 1) { break }
            guard ContinuousClock.now < deadline else { throw BenchError("the leaves did not attach within 60 s") }
            try await Task.sleep(for: .milliseconds(100))
        }
        printFlushed("soak: fieldgated with \(leaves) UDP leaves (six links each) over one TLS connection, \(rate) readings/s of 200 B for \(minutes) min, spool sync always")
        printFlushed("minute  VmRSS MB  anonymous MB  delivered   spooled")
        let sender = try ChildProcess.spawn(CommandLine.arguments[0], ["udp-sender", "--port", String(port), "--senders", String(leaves), "--rate", String(rate),
                                                                       "--seconds", String(minutes * 60), "--prefix", "bench-"])
        let started = ContinuousClock.now
        var series: [(minute: Double, memory: ChildProcess.Memory)] = []
        func record() async throws {
            let m = child.memory()
            let minute = secondsSince(started) / 60
            series.append((minute, m))
            let delivered = try await hub.acceptedEvents()
            let depth = (try? ControlClient.request(["command": "spool-stats"], socketPath: dir + "/control.sock"))?["depth"]?.intValue ?? -1
            printFlushed(pad(fixed(minute, 1), 6) + "  " + pad(fixed(m.rssKB / 1024, 2), 8) + "  " + pad(fixed(m.anonKB / 1024, 2), 12) + "  "
                  + pad(String(delivered), 9) + "  " + pad(String(depth), 8))
        }
        try await record()
        while sender.isRunning() {
            guard child.isRunning() else { throw BenchError("fieldgated exited during the soak") }
            try await Task.sleep(for: .seconds(1))
            if secondsSince(started) >= Double(series.count * sample) { try await record() }
        }
        let sent = rate * minutes * 60
        var delivered = 0
        let drainDeadline = ContinuousClock.now + .seconds(120)
        while ContinuousClock.now < drainDeadline {
            delivered = try await hub.acceptedEvents()
            if delivered >= sent { break }
            try await Task.sleep(for: .milliseconds(500))
        }
        try await record()
        // Growth over the last three quarters of the run (the first quarter is warm-up: buffers, caches, arenas).
        let quarter = series.first { $0.minute >= Double(minutes) / 4 } ?? series[0]
        let last = series[series.count - 1]
        let growth = (last.memory.rssKB - quarter.memory.rssKB) / 1024
        let peak = series.map(\.memory.rssKB).max() ?? 0
        print("sent \(sent), accepted by the hub \(delivered), lost \(max(0, sent - delivered))")
        print("RSS \(fixed(quarter.memory.rssKB / 1024, 2)) MB at minute \(fixed(quarter.minute, 1)) → \(fixed(last.memory.rssKB / 1024, 2)) MB at the end: growth \(fixed(growth, 2)) MB over the last \(fixed(last.minute - quarter.minute, 0)) min; peak \(fixed(peak / 1024, 2)) MB")
        print("target: growth < 1 MB over the last 45 of 60 minutes, 0 lost")
    }
}

/// A line to stdout at once (the soak's series is watched live, often through a pipe).
private func printFlushed(_ line: String) {
    var bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeMutableBytes { write(1, $0.baseAddress, $0.count) }
}
