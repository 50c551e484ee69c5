import FieldgateCore

#if canImport(Glibc)
import Glibc
#endif

/// Runs an external command (reboot, restart) and waits for it off the cooperative pool.
public struct CommandRunner: Sendable {
    public enum Failure: Error, Sendable, CustomStringConvertible {
        case spawn(String, errno: Int32)
        case exit(String, status: Int32)
        public var description: String {
            switch self {
            case .spawn(let c, let e): "cannot start \(c): errno \(e)"
            case .exit(let c, let s): "\(c) exited with status \(s)"
            }
        }
    }

    public init() {}

    /// Runs `argv` (searched on PATH) and returns when it exits; throws unless it exited with 0.
    public func run(_ argv: [String]) async throws(Failure) {
        try await offCooperativePool { Self.spawnAndWait(argv) }.get()
    }

    private static func spawnAndWait(_ argv: [String]) -> Result<Void, Failure> {
        guard let command = argv.first else { return .failure(.spawn("(empty command)", errno: EINVAL)) }
        let pid: pid_t
        switch spawnProcess(argv, searchPath: true) {
        case .success(let p): pid = p
        case .failure(let e): return .failure(.spawn(command, errno: e.errno))
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let exited = status & 0x7f == 0
        let code = (status >> 8) & 0xff
        return exited && code == 0 ? .success(()) : .failure(.exit(argv.joined(separator: " "), status: exited ? code : 128 + (status & 0x7f)))
    }
}
