#if canImport(Glibc)
import Glibc
#endif

/// Programs run on the host (systemctl, timedatectl, dpkg), found on PATH. Blocking: not on the cooperative pool.
public enum HostCommand {
    /// Runs `argv` with its stdout captured (stderr discarded, or captured with it when `withStderr`); nil when it
    /// cannot be started.
    public static func capture(_ argv: [String], withStderr: Bool = false) -> (status: Int32, output: String)? {
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else { return nil }
        // Neither end may leak into the child beyond its stdout (pipe2 is not in Swift's Glibc module).
        for fd in pipeFDs { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
        if withStderr { posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 2) } else {
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        }
        let status = spawn(argv, actions: &actions)
        close(pipeFDs[1])
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(pipeFDs[0], &buffer, buffer.count)
            if n <= 0 { break }
            output += buffer[..<n]
        }
        close(pipeFDs[0])
        guard let pid = status else { return nil }
        return (wait(pid), String(decoding: output, as: UTF8.self).trimmed())
    }

    /// Runs `argv` with the terminal's stdout and stderr; its exit status, or nil when it cannot be started.
    public static func run(_ argv: [String]) -> Int32? {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        return spawn(argv, actions: &actions).map(wait)
    }

    private static func spawn(_ argv: [String], actions: inout posix_spawn_file_actions_t) -> pid_t? {
        closeInheritedDescriptors(&actions)
        var pid: pid_t = 0
        let cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for a in cArgs { free(a) } }
        return posix_spawnp(&pid, argv[0], &actions, nil, cArgs, environ) == 0 ? pid : nil
    }

    private static func wait(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }
}
