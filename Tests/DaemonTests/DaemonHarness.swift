import ControlSocket
import Dispatch
import FieldgateCore
import HubEmulator
import HubTestSupport
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#endif

/// A built executable of this package (next to the test bundle).
func productPath(_ name: String) -> String {
    let dir = CommandLine.arguments[0].split(separator: "/").dropLast().joined(separator: "/")
    let candidates = ["/" + dir + "/" + name, "/" + dir.split(separator: "/").dropLast().joined(separator: "/") + "/" + name]
    return candidates.first { access($0, X_OK) == 0 } ?? name
}

/// A fake `NOTIFY_SOCKET`: what the daemon tells systemd, with arrival times (sd_notify(3) datagrams).
final class NotifyListener: Sendable {
    let path: String
    private let fd: Int32
    private let messages = Mutex<[(ms: Int64, text: String)]>([])
    private let stopped = Atomic<Bool>(false)

    init(path: String) {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { p in for (i, b) in path.utf8.enumerated() { p[i] = b } }
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        // The loop owns the socket and closes it when it ends: closed by `stop` while the loop still polled it, its
        // number could name another test's file by the next poll (and a second `stop` would close that file).
        DispatchQueue(label: "notify-listener").async { [self] in
            var buffer = [UInt8](repeating: 0, count: 4096)
            while !stopped.load(ordering: .acquiring) {
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&p, 1, 100) > 0 else { continue }
                let n = recv(fd, &buffer, buffer.count, 0)
                guard n > 0 else { continue }
                let text = String(decoding: buffer[0..<n], as: UTF8.self)
                messages.withLock { $0.append((MonotonicClock.milliseconds(), text)) }
            }
            close(fd)
        }
    }

    /// Ends the listener; calling it again does nothing.
    func stop() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        unlink(path)
    }

    var all: [(ms: Int64, text: String)] { messages.withLock { $0 } }

    /// Times of the messages carrying `field` (e.g. `WATCHDOG=1`) since `ms`.
    func times(of field: String, since ms: Int64 = 0) -> [Int64] {
        all.filter { $0.ms >= ms && $0.text.split(separator: "\n").contains(Substring(field)) }.map(\.ms)
    }

    /// Waits (without blocking the cooperative pool) until a message carries `field`.
    func wait(for field: String, since ms: Int64 = 0, seconds: Double = 20) async -> Bool {
        let deadline = MonotonicClock.milliseconds() + Int64(seconds * 1000)
        while MonotonicClock.milliseconds() < deadline {
            if !times(of: field, since: ms).isEmpty { return true }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return false
    }
}

/// fieldgated as a child process with a configuration directory of its own, against a test hub.
final class DaemonUnderTest: Sendable {
    let directory: String
    let pid: pid_t
    let controlSocket: String
    let notify: NotifyListener
    let udpPort: Int

    static func start(hub: TestHub, leaves: [String], watchdogUsec: Int = 2_000_000, extraMain: String = "", stopHubFirst: Bool = false,
                      otherDevices: [String] = [], files: [String: String] = [:], secrets: String = "", plainAMQP: Bool = false,
                      prepareOnly: Bool = false) async throws -> DaemonUnderTest {
        let dir = FileManager.default.temporaryDirectory.path + "/fieldgated-test-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir + "/devices.d", withIntermediateDirectories: true)
        var keys = "[keys]\n"
        for id in ["gw-under-test"] + leaves + otherDevices {
            let record = try await hub.createDevice(id)
            keys += "\"\(id)\" = \"\(record.authentication.symmetricKey.primaryKey)\"\n"
        }
        let udpPort = Int.random(in: 40_000...59_000)
        try """
            [hub]
            host = "\(hub.hostName)"
            address = "127.0.0.1"
            port = \(plainAMQP ? hub.running.amqpPort! : hub.running.amqpsPort!)
            \(plainAMQP ? "insecure_plain_amqp = true" : "ca_file = \"\(hub.certificates.caCertificate)\"")
            [gateway]
            device_id = "gw-under-test"
            reboot_command = ["true"]
            [spool]
            directory = "\(dir)/spool"
            [udp]
            bind = "127.0.0.1"
            port = \(udpPort)
            [control]
            socket = "\(dir)/control.sock"
            allow_debug = true
            metrics = "127.0.0.1:\(udpPort + 1)"
            \(extraMain)
            """.write(toFile: dir + "/fieldgate.toml", atomically: true, encoding: .utf8)
        try writeLeaves(leaves, in: dir)
        for (name, text) in files {
            try FileManager.default.createDirectory(atPath: directoryOf(dir + "/" + name), withIntermediateDirectories: true)
            try text.write(toFile: dir + "/" + name, atomically: true, encoding: .utf8)
        }
        FileManager.default.createFile(atPath: dir + "/secrets.toml", contents: Data((keys + secrets).utf8), attributes: [.posixPermissions: 0o600])
        if stopHubFirst { await hub.stop() }
        let notify = NotifyListener(path: dir + "/notify.sock")
        // prepareOnly: the configuration is written, the caller starts fieldgated its own way.
        if prepareOnly { return DaemonUnderTest(directory: dir, pid: 0, controlSocket: dir + "/control.sock", notify: notify, udpPort: udpPort) }
        let pid = try launch(directory: dir, notify: notify, watchdogUsec: watchdogUsec)
        return DaemonUnderTest(directory: dir, pid: pid, controlSocket: dir + "/control.sock", notify: notify, udpPort: udpPort)
    }

    private static func launch(directory dir: String, notify: NotifyListener, watchdogUsec: Int) throws -> pid_t {
        let argv = ["/usr/bin/env", "NOTIFY_SOCKET=\(notify.path)", "WATCHDOG_USEC=\(watchdogUsec)", "/bin/sh", "-c",
                    "exec '\(productPath("fieldgated"))' run --config '\(dir)/fieldgate.toml' --log-level info 2>>'\(dir)/stderr.log'"]
        guard case .success(let pid) = spawnProcess(argv, searchPath: false) else { throw DaemonTestError("cannot start fieldgated") }
        return pid
    }

    /// fieldgated on a directory whose fieldgate.toml (and devices.d, secrets.toml) the caller wrote: its control socket
    /// at `<dir>/control.sock`, its UDP adapter on `udpPort`, its notify socket at `<dir>/notify.sock`.
    static func start(preparedDirectory dir: String, udpPort: Int, watchdogUsec: Int = 2_000_000) throws -> DaemonUnderTest {
        let notify = NotifyListener(path: dir + "/notify.sock")
        let pid = try launch(directory: dir, notify: notify, watchdogUsec: watchdogUsec)
        return DaemonUnderTest(directory: dir, pid: pid, controlSocket: dir + "/control.sock", notify: notify, udpPort: udpPort)
    }

    /// fieldgated again on the same directory and state (call after this one exited).
    func restarted(watchdogUsec: Int = 2_000_000) throws -> DaemonUnderTest {
        let pid = try Self.launch(directory: directory, notify: notify, watchdogUsec: watchdogUsec)
        return DaemonUnderTest(directory: directory, pid: pid, controlSocket: controlSocket, notify: notify, udpPort: udpPort)
    }

    private init(directory: String, pid: pid_t, controlSocket: String, notify: NotifyListener, udpPort: Int) {
        self.directory = directory
        self.pid = pid
        self.controlSocket = controlSocket
        self.notify = notify
        self.udpPort = udpPort
    }

    /// devices.d/leaves.toml: UDP leaves.
    static func writeLeaves(_ leaves: [String], in dir: String) throws {
        try leaves.map { "[[leaf]]\ndevice_id = \"\($0)\"\nadapter = \"udp\"\n" }.joined(separator: "\n")
            .write(toFile: dir + "/devices.d/leaves.toml", atomically: true, encoding: .utf8)
    }

    func writeLeaves(_ leaves: [String]) throws { try Self.writeLeaves(leaves, in: directory) }

    /// A datagram to the daemon's UDP adapter, as a leaf sends it.
    func sendUDP(_ text: String) {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd) }
        var to = sockaddr_in()
        to.sin_family = sa_family_t(AF_INET)
        to.sin_port = in_port_t(UInt16(udpPort).bigEndian)
        inet_pton(AF_INET, "127.0.0.1", &to.sin_addr)
        let bytes = Array(text.utf8)
        _ = withUnsafePointer(to: &to) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, bytes, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }

    /// GET http://127.0.0.1:<udpPort + 1><path>: the metrics endpoint; the whole response, headers included.
    func httpGet(_ path: String) -> String {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var to = sockaddr_in()
        to.sin_family = sa_family_t(AF_INET)
        to.sin_port = in_port_t(UInt16(udpPort + 1).bigEndian)
        inet_pton(AF_INET, "127.0.0.1", &to.sin_addr)
        let connected = withUnsafePointer(to: &to) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard connected == 0 else { return "" }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: localhost\r\n\r\n".utf8)
        _ = send(fd, request, request.count, 0)
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            guard n > 0 else { break }
            response += buffer[0..<n]
        }
        return String(decoding: response, as: UTF8.self)
    }

    /// Device ids in the given uplink state, from `fieldgatectl devices`.
    func devices(in state: String) -> Set<String> {
        guard let list = try? control(["command": "devices"]).arrayValue else { return [] }
        return Set(list.filter { $0["state"]?.stringValue == state }.compactMap { $0["device_id"]?.stringValue })
    }

    /// Waits until `condition` holds (polling, without blocking the cooperative pool).
    func eventually(seconds: Double = 15, _ condition: () async -> Bool) async -> Bool {
        let deadline = MonotonicClock.milliseconds() + Int64(seconds * 1000)
        while MonotonicClock.milliseconds() < deadline {
            if await condition() { return true }
            try? await Task.sleep(for: .milliseconds(100))
        }
        return false
    }

    func signal(_ s: Int32) { kill(pid, s) }

    /// The exit status once the process ended, waiting at most `seconds` (then SIGKILL, nil).
    func waitForExit(seconds: Double) async -> Int32? {
        let deadline = MonotonicClock.milliseconds() + Int64(seconds * 1000)
        var status: Int32 = 0
        while MonotonicClock.milliseconds() < deadline {
            if waitpid(pid, &status, WNOHANG) == pid {
                // Killed by a signal (an abort, a crash): 128 + its number, as a shell says, never 0.
                let signal = status & 0x7F
                return signal != 0 ? 128 + signal : (status >> 8) & 0xFF
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
        kill(pid, SIGKILL)
        _ = waitpid(pid, &status, 0)
        return nil
    }

    func control(_ body: JSONValue) throws -> JSONValue { try ControlClient.request(body, socketPath: controlSocket) }

    var stderr: String { (try? String(contentsOfFile: directory + "/stderr.log", encoding: .utf8)) ?? "" }

    func cleanUp() {
        if pid > 0 { kill(pid, SIGKILL) }
        var status: Int32 = 0
        _ = waitpid(pid, &status, WNOHANG)
        notify.stop()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

struct DaemonTestError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}
