import FieldgateCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Programs we start get their standard streams and none of our other descriptors: Proton opens its sockets without
/// close-on-exec, and a child that held a listener kept its port bound after the hub closed it (a reopen then failed
/// with EADDRINUSE while the child accepted connections it never served).
@Suite struct SpawnTests {
    /// A socket opened the way Proton opens them (no SOCK_CLOEXEC), listening.
    private func inheritableListener() throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try #require(fd >= 0)
        #expect(fcntl(fd, F_GETFD) & FD_CLOEXEC == 0, "the descriptor a plain spawn would pass on")
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        try #require(bound == 0 && listen(fd, 4) == 0)
        return fd
    }

    @Test func hostCommandsInheritNoDescriptorOfOurs() throws {
        let fd = try inheritableListener()
        defer { close(fd) }
        // The shell lists its own descriptors (`$$`, not ls's, which has the directory open).
        let listed = try #require(HostCommand.capture(["sh", "-c", "ls /proc/$$/fd"]))
        #expect(listed.status == 0)
        let descriptors = Set(listed.output.split(separator: "\n").map(String.init))
        #expect(descriptors.contains("1"), "its stdout is the capture pipe: \(descriptors)")
        #expect(!descriptors.contains(String(fd)), "the listener (\(fd)) stayed here: \(descriptors)")
        #expect(descriptors.allSatisfy { (Int($0) ?? 0) < 3 || (Int($0) ?? 0) == 10 }, "only stdio (and dash's own 10): \(descriptors)")
    }

    @Test func spawnedProgramsInheritNoDescriptorOfOurs() throws {
        let fd = try inheritableListener()
        defer { close(fd) }
        let out = "/tmp/fieldgate-spawn-\(getpid())"
        defer { unlink(out) }
        let started = spawnProcess(["/bin/sh", "-c", "ls /proc/$$/fd > \(out)"], searchPath: false)
        guard case .success(let pid) = started else { Issue.record("cannot start sh: \(started)"); return }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let listed = try #require(HostCommand.capture(["cat", out]))
        let descriptors = Set(listed.output.split(separator: "\n").map(String.init))
        #expect(!descriptors.isEmpty && !descriptors.contains(String(fd)), "the listener (\(fd)) stayed here: \(descriptors)")
    }
}
