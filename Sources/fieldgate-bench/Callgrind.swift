import FieldgateCore

#if canImport(Glibc)
import Glibc
#endif

/// A program run under callgrind, counted between points the benchmark chooses (`zero`, then `total`).
struct Callgrind {
    let profile: String

    /// valgrind and its arguments to put before `binary`'s own. Valgrind 3.19 cannot read the DWARF 5 that Swift
    /// writes, so it runs a copy without it, in `dir` (symbols stay, for profiles).
    static func prefix(running binary: String, profile: String, dir: String) throws -> (valgrind: String, arguments: [String]) {
        let stripped = dir + "/" + (binary.split(separator: "/").last.map(String.init) ?? "program") + "-nodebug"
        guard system("mkdir -p '\(dir)'; rm -f '\(profile)'*; strip --strip-debug -o '\(stripped)' '\(binary)'") == 0 else {
            throw BenchError("strip --strip-debug \(binary) failed")
        }
        return ("/usr/bin/valgrind", ["--tool=callgrind", "--callgrind-out-file=\(profile)", stripped])
    }

    /// Counting starts over now.
    static func zero(pid: pid_t) throws {
        guard system("callgrind_control -z \(pid) >/dev/null 2>&1") == 0 else { throw BenchError("callgrind_control -z failed") }
    }

    /// Instructions since the start (or the last `zero`): a dump, read back from `<profile>.1`.
    static func total(pid: pid_t, profile: String) async throws -> Double {
        guard system("callgrind_control -d \(pid) >/dev/null 2>&1") == 0 else { throw BenchError("callgrind_control -d failed") }
        for _ in 0..<600 {
            for line in (ChildProcess.readFile(profile + ".1") ?? "").split(separator: "\n") where line.hasPrefix("totals:") || line.hasPrefix("summary:") {
                if let total = Double(line.split(separator: " ").last ?? "") { return total }
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw BenchError("no callgrind dump in \(profile).1")
    }
}
