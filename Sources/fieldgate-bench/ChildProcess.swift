import FieldgateCore
#if canImport(Glibc)
import Glibc
#endif

/// A child process started with posix_spawn, with its CPU time and RSS read from /proc.
struct ChildProcess {
    let pid: pid_t

    static func spawn(_ path: String, _ arguments: [String]) throws -> ChildProcess {
        switch spawnProcess([path] + arguments, searchPath: false) {
        case .success(let pid): return ChildProcess(pid: pid)
        case .failure(let e): throw BenchError("cannot start \(path): errno \(e.errno)")
        }
    }

    /// False once the child has exited (it is reaped then).
    func isRunning() -> Bool {
        var status: Int32 = 0
        return waitpid(pid, &status, WNOHANG) == 0
    }

    /// Waits for the child to exit by itself.
    func wait() {
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }

    /// SIGTERM, and SIGKILL if the child is still there after `grace` seconds. Under valgrind a SIGTERM can get
    /// lost: libdispatch forwards a signal caught on a thread that does not block it to its manager thread, for
    /// its signalfd, and valgrind keeps signals it emulates where no signalfd sees them (a daemon under callgrind
    /// went on running for 25 minutes after two SIGTERMs).
    func terminate(grace: Double = 30) {
        kill(pid, SIGTERM)
        var status: Int32 = 0
        let deadline = MonotonicClock.milliseconds() + Int64(grace * 1000)
        while waitpid(pid, &status, WNOHANG) == 0 {
            if MonotonicClock.milliseconds() >= deadline {
                kill(pid, SIGKILL)
                waitpid(pid, &status, 0)
                return
            }
            usleep(50_000)
        }
    }

    /// utime + stime of the child, in seconds.
    func cpuSeconds() -> Double { Self.cpuSeconds(statPath: "/proc/\(pid)/stat") }

    static func selfCPUSeconds() -> Double { cpuSeconds(statPath: "/proc/self/stat") }

    private static func cpuSeconds(statPath: String) -> Double {
        guard let text = readFile(statPath), let close = text.lastIndex(of: ")") else { return 0 }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // After ")": state(0) ... utime is field 14 overall = index 11 here, stime index 12.
        guard fields.count > 12, let u = Double(fields[11]), let s = Double(fields[12]) else { return 0 }
        return (u + s) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    func rssMB() -> Double { memory().rssKB / 1024 }

    /// Resident memory from /proc/<pid>/status: all of it, anonymous, file-backed (kB).
    struct Memory {
        var rssKB = 0.0, anonKB = 0.0, fileKB = 0.0
    }

    func memory() -> Memory {
        var m = Memory()
        for line in (Self.readFile("/proc/\(pid)/status") ?? "").split(separator: "\n") {
            let kB = line.split(separator: " ").compactMap { Double($0) }.first ?? 0
            if line.hasPrefix("VmRSS:") { m.rssKB = kB }
            if line.hasPrefix("RssAnon:") { m.anonKB = kB }
            if line.hasPrefix("RssFile:") { m.fileKB = kB }
        }
        return m
    }

    /// Writes (or with `append`, appends) `text` to `path`.
    static func writeFile(_ path: String, _ text: String, append: Bool = false) throws {
        guard let f = fopen(path, append ? "a" : "w") else { throw BenchError("cannot write \(path)") }
        fputs(text, f)
        fclose(f)
    }

    static func readFile(_ path: String) -> String? {
        guard let f = fopen(path, "r") else { return nil }
        defer { fclose(f) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&buf, 1, buf.count, f)
            if n <= 0 { break }
            out.append(contentsOf: buf[0..<n])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
