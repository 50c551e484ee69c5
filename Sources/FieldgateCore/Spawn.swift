import CSpawn

#if canImport(Glibc)
import Glibc
#endif

/// Has the child close every descriptor from 3 up (after the actions added so far): it gets its standard streams and
/// nothing else of this process — not Proton's sockets, which are opened without close-on-exec.
public func closeInheritedDescriptors(_ actions: inout posix_spawn_file_actions_t) {
    _ = fg_spawn_close_from(&actions, 3)
}

/// Starts a program with no signals blocked and default dispositions, and no descriptor of ours but its standard
/// streams. The calling thread may block signals (dispatch and cooperative-pool threads do) and a plain posix_spawn
/// would pass that mask on, so the child could ignore SIGTERM. `searchPath`: look `argv[0]` up on PATH. Returns the
/// pid, or the errno.
public func spawnProcess(_ argv: [String], searchPath: Bool) -> Result<pid_t, SpawnFailure> {
    guard let command = argv.first else { return .failure(SpawnFailure(errno: EINVAL)) }
    var pid: pid_t = 0
    let cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
    defer { for a in cArgs { free(a) } }
    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    var empty = sigset_t(), all = sigset_t()
    sigemptyset(&empty)
    sigfillset(&all)
    posix_spawnattr_setsigmask(&attr, &empty)
    posix_spawnattr_setsigdefault(&attr, &all)
    posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    closeInheritedDescriptors(&actions)
    let rc = searchPath ? posix_spawnp(&pid, command, &actions, &attr, cArgs, environ) : posix_spawn(&pid, command, &actions, &attr, cArgs, environ)
    return rc == 0 ? .success(pid) : .failure(SpawnFailure(errno: rc))
}

public struct SpawnFailure: Error, Sendable {
    public var errno: Int32
}

/// The path of `name` in `executable`'s directory (by default the running program's, absolute: see
/// `runningExecutable`), so siblings resolve whatever the current directory and however the program was started.
public func siblingExecutable(_ name: String, of executable: String = runningExecutable()) -> String {
    guard let slash = executable.lastIndex(of: "/") else { return "./" + name }
    return String(executable[...slash]) + name
}

/// The running program's absolute path from /proc/self/exe; argv[0] where /proc is not mounted.
public func runningExecutable() -> String {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard length > 0 else { return CommandLine.arguments.first ?? "" }
    return String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
