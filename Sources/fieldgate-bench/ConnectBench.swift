import ArgumentParser
import ControlSocket
import FieldgateCore
import HubServiceClient

#if canImport(Glibc)
import Glibc
#endif

/// From exec to work: the real daemon (`fieldgated`, a statically linked build as shipped) with 1000 leaves of six
/// links each and the gateway, against fieldgate-hub over TLS. Prints the time from exec to READY=1 (a notify socket
/// of our own, as systemd's), from exec to every identity attached, and the instructions of that whole start
/// (callgrind, counted from exec until the status says every leaf is ready).
struct ConnectBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "connect", abstract: "fieldgated from exec to READY=1 and to 1000 identities attached: seconds and instructions.")

    @Option(help: "Leaves (six links each).") var leaves = 1000
    @Option(help: "Runs for the times (median).") var rounds = 3
    @Option(help: "fieldgated binary; valgrind 3.19 runs only a statically linked one (README). Default: next to this one.") var daemon: String?
    @Option(help: "Directory for the daemon's state.") var dir = "/var/tmp/fieldgate-connect-bench"
    @Flag(help: "Skip the callgrind run.") var noCallgrind = false
    @Option(help: ArgumentHelp("Keep the callgrind run's profile here (for callgrind_annotate).", valueName: "file")) var profile: String?

    func run() async throws {
        let daemon = self.daemon ?? siblingExecutable("fieldgated")
        let hub = try await BenchHub.start(binary: siblingExecutable("fieldgate-hub"), devices: leaves)
        defer { hub.stop() }
        let gateway = try await hub.service.request("PUT", "/devices/bench-gateway", body: [:])
        let gatewayKey = gateway.json?["authentication"]?["symmetricKey"]?["primaryKey"]?.stringValue ?? ""
        print("fieldgated start: \(leaves) leaves × 6 links + the gateway, TLS to fieldgate-hub on loopback, attaches unpaced (1000/s)")
        var ready: [Double] = [], attached: [Double] = []
        for _ in 0..<rounds {
            let r = try await start(daemon: daemon, hub: hub, gatewayKey: gatewayKey, callgrind: false)
            ready.append(r.readySeconds)
            attached.append(r.attachedSeconds)
        }
        print("exec → READY=1            " + fixed(median(ready) * 1000, 0) + " ms   (runs: " + ready.map { fixed($0 * 1000, 0) }.joined(separator: " ") + ")")
        print("exec → all attached       " + fixed(median(attached), 2) + " s    (runs: " + attached.map { fixed($0, 2) }.joined(separator: " ") + ")")
        if !noCallgrind {
            let r = try await start(daemon: daemon, hub: hub, gatewayKey: gatewayKey, callgrind: true)
            print("instructions exec → all attached: " + fixed(r.instructions / 1e6, 0) + " M (callgrind)")
            if let profile, system("cp '\(dir)/callgrind.out.1' '\(profile)'") == 0 { print("profile: \(profile)") }
        }
        print("targets: READY=1 ≤ 300 ms; ≤ 2,000 M instructions to 1000 identities × 6 links attached")
        _ = system("rm -rf '\(dir)'")
    }

    struct Start { var readySeconds = 0.0, attachedSeconds = 0.0, instructions = 0.0 }

    private func start(daemon: String, hub: BenchHub, gatewayKey: String, callgrind: Bool) async throws -> Start {
        _ = system("rm -rf '\(dir)'; mkdir -p '\(dir)/devices.d'")
        _ = try await DaemonMemoryBench.writeConfiguration(dir: dir, hub: hub, gatewayKey: gatewayKey, leaves: leaves, telemetryOnly: false)
        let notify = try NotifySocket(path: dir + "/notify.sock")
        defer { notify.close() }
        setenv("NOTIFY_SOCKET", notify.path, 1)
        defer { unsetenv("NOTIFY_SOCKET") }
        var binary = daemon, arguments = ["run", "--config", dir + "/fieldgate.toml", "--log-level", "error"]
        let profile = dir + "/callgrind.out"
        if callgrind {
            let (valgrind, prefix) = try Callgrind.prefix(running: daemon, profile: profile, dir: dir)
            arguments = prefix + arguments
            binary = valgrind
        }
        let started = ContinuousClock.now
        let child = try ChildProcess.spawn(binary, arguments)
        defer { child.terminate() }
        var result = Start()
        let deadline = ContinuousClock.now + .seconds(callgrind ? 1200 : 120)
        var isReady = false
        while ContinuousClock.now < deadline {
            guard child.isRunning() else { throw BenchError("fieldgated exited") }
            if !isReady, notify.received(timeoutMilliseconds: 2).contains("READY=1") {
                isReady = true
                result.readySeconds = secondsSince(started)
            }
            let status = try? ControlClient.request(["command": "status"], socketPath: dir + "/control.sock")
            if status?["leaves_by_state"]?["ready"]?.intValue == Int64(leaves + 1) {
                result.attachedSeconds = secondsSince(started)
                break
            }
            try await Task.sleep(for: .milliseconds(callgrind ? 200 : 5))
        }
        guard result.attachedSeconds > 0 else { throw BenchError("the leaves did not attach in time") }
        if callgrind { result.instructions = try await Callgrind.total(pid: child.pid, profile: profile) }
        return result
    }
}

/// A notify socket as systemd gives one (AF_UNIX datagrams), to see when the daemon says READY=1.
final class NotifySocket {
    let path: String
    private let fd: Int32

    init(path: String) throws {
        self.path = path
        unlink(path)
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in path.utf8.prefix(raw.count - 1).enumerated() { raw[i] = b }
        }
        let rc = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard fd >= 0, rc == 0 else { throw BenchError("cannot bind the notify socket \(path)") }
    }

    /// What arrived within the timeout (all datagrams waiting, joined).
    func received(timeoutMilliseconds: Int32) -> String {
        var out = ""
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while poll(&p, 1, out.isEmpty ? timeoutMilliseconds : 0) > 0 {
            var buffer = [UInt8](repeating: 0, count: 4096)
            let n = recv(fd, &buffer, buffer.count, 0)
            guard n > 0 else { break }
            out += String(decoding: buffer[..<n], as: UTF8.self) + "\n"
        }
        return out
    }

    func close() {
        Glibc.close(fd)
        unlink(path)
    }
}
