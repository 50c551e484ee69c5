import Dispatch
import FieldgateCore
import Spool
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Every valid record of a small spool, as (sequence → payload), by reopening and reading everything.
func survivors(_ config: SpoolConfiguration) throws -> (records: [UInt64: String], stats: SpoolStatistics) {
    let spool = try Spool(configuration: config)
    defer { spool.close() }
    var out: [UInt64: String] = [:]
    while true {
        let batch = try spool.next(max: 100_000)
        if batch.isEmpty { break }
        let before = out.count
        for r in batch { out[r.sequence] = String(decoding: r.payload, as: UTF8.self) }
        if out.count == before { break }  // released records come back first: nothing new means all seen
    }
    return (out, spool.statistics())
}

/// The crash child (Sources/spool-harness) next to the test binary.
func harnessExecutable() throws -> String {
    let dir = CommandLine.arguments[0].split(separator: "/").dropLast().joined(separator: "/")
    let candidates = ["/" + dir + "/spool-harness", "/" + dir.split(separator: "/").dropLast().joined(separator: "/") + "/spool-harness"]
    guard let exe = candidates.first(where: { access($0, X_OK) == 0 }) else { throw HarnessError("spool-harness not built next to the tests") }
    return exe
}

struct HarnessError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

func monotonicMilliseconds() -> Int64 {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Int64(t.tv_sec) * 1000 + Int64(t.tv_nsec) / 1_000_000
}

/// Runs the harness child on `dir` for `microseconds`, SIGKILLs it and returns what it printed and when it died
/// (CLOCK_MONOTONIC ms, taken just before the kill).
func runHarness(dir: String, sync: String, tag: String, microseconds: UInt32) throws -> (output: String, killedAtMs: Int64) {
    let exe = try harnessExecutable()
    var fds: [Int32] = [0, 0]
    // CLOEXEC: a child spawned concurrently elsewhere in the test process must not inherit the ends (dup2
    // onto the child's stdout clears the flag there). The read end is non-blocking, and it is read only
    // after the child is reaped, so a write end leaked through a concurrent fork cannot hang the test.
    pipe(&fds)
    for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    _ = fcntl(fds[0], F_SETFL, O_NONBLOCK)
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
    closeInheritedDescriptors(&actions)  // the read end too, and other tests' sockets (a hub listener a harness kept)
    var pid: pid_t = 0
    let words: [String] = [exe, dir, sync, tag]
    let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
    posix_spawn(&pid, exe, &actions, nil, argv, environ)
    for a in argv { free(a) }
    posix_spawn_file_actions_destroy(&actions)
    close(fds[1])
    usleep(microseconds)
    let killedAt = monotonicMilliseconds()
    kill(pid, SIGKILL)
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    var output: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(fds[0], &buf, buf.count)
        if n <= 0 { break }
        output += buf[0..<n]
    }
    close(fds[0])
    return (String(decoding: output, as: UTF8.self), killedAt)
}

/// What the harness children confirmed, over a whole test.
struct HarnessLog {
    var confirmed: [UInt64: (payload: String, atMs: Int64)] = [:]
    var acknowledged: Set<UInt64> = []
    /// Sequences confirmed twice with different payloads: a message id naming two records (contract 2).
    var reused: [UInt64] = []
    /// What `checkIdentity` found wrong.
    var identityFailures: [String] = []

    /// Takes the complete lines of one child's output (a cut line was not confirmed before the kill).
    mutating func read(_ text: String) {
        let lines = text.hasSuffix("\n") ? text.split(separator: "\n") : text.split(separator: "\n").dropLast()
        for line in lines {
            let f = line.split(separator: " ")
            if f.first == "A", f.count == 6, let first = UInt64(f[1]), let n = Int(f[2]), let round = Int(f[3]), let at = Int64(f[5]) {
                for i in 0..<n {
                    let payload = "payload-\(f[4])-\(round)-\(i)"
                    if let earlier = confirmed[first + UInt64(i)], earlier.payload != payload { reused.append(first + UInt64(i)) }
                    confirmed[first + UInt64(i)] = (payload, at)
                }
            } else if f.first == "K" || f.first == "N" {
                // N: the acknowledgement may have landed before the kill, so absence is not a loss.
                for s in f.dropFirst() { if let v = UInt64(s) { acknowledged.insert(v) } }
            }
        }
    }

    /// Ids are never reused: a sequence a child confirmed maps to the payload it confirmed; records appended after
    /// the last confirmation may exist too, and must be well-formed. Runs where `#expect` cannot report (off the
    /// cooperative pool): what fails goes to `identityFailures`.
    mutating func checkIdentity(_ records: [UInt64: String]) {
        if !reused.isEmpty { identityFailures.append("sequences confirmed for two payloads, e.g. \(reused.prefix(5))") }
        reused = []
        for (seq, payload) in records {
            if let c = confirmed[seq] {
                if c.payload != payload { identityFailures.append("sequence \(seq) changed payload") }
            } else if !payload.hasPrefix("payload-") {
                identityFailures.append("sequence \(seq) holds a payload no child wrote")
            }
        }
    }
}

/// Expectations checked on a thread of its own (`offCooperativePool`), where `#expect` has no test to report to:
/// the failures come back to the test, which expects there are none.
struct Checks {
    var failures: [String] = []
    mutating func expect(_ condition: Bool, _ message: @autoclosure () -> String) {
        if !condition { failures.append(message()) }
    }
}

/// Runs blocking work (waitpid, pipe reads, sleeps) on a dispatch thread, not on Swift's cooperative pool, which
/// other suites' async code (a hub's HTTP handlers) needs meanwhile.
func offCooperativePool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { cont in
        DispatchQueue(label: "fieldgate.tests.blocking").async { cont.resume(with: Result { try body() }) }
    }
}

@Suite("spool corruption and crashes", .serialized, .timeLimit(.minutes(5)))
struct CrashTests {
    @Test("truncating a spool at every byte offset: it always opens and keeps every record before the cut")
    func truncateEverywhere() async throws {
        // Seconds of file I/O: off the cooperative pool, which the other suites' hubs need meanwhile.
        let failures = try await offCooperativePool { try Self.truncateEverywhereFailures() }
        #expect(failures.isEmpty, "\(failures.count) failed checks, e.g. \(failures.prefix(5))")
    }

    static func truncateEverywhereFailures() throws -> [String] {
        var checks = Checks()
        let dir = temporarySpoolDirectory()
        defer { removeTree(dir) }
        var config = SpoolConfiguration(directory: dir)
        config.segmentBytes = 1 << 20
        do {
            let spool = try Spool(configuration: config)
            for i in 0..<12 { try spool.append([entry("leaf\(i % 3)", "record-\(i)")]) }
            spool.close()
        }
        let segment = dir + "/segments/" + (try listDirectory(dir + "/segments")).first!
        let original = try readFile(segment)
        var frameEnds: [Int] = []
        var at = 0
        while case .record(_, let size) = RecordCodec.decode(original, at: at) {
            at += size
            frameEnds.append(at)
        }
        checks.expect(frameEnds.count == 12, "12 frames written, \(frameEnds.count) found")
        for cut in 0...original.count {
            writeFile(segment, Array(original[..<cut]))
            let (records, stats) = try survivors(config)
            let complete = frameEnds.filter { $0 <= cut }.count
            checks.expect(records.count == complete, "cut at \(cut): \(records.count) records, \(complete) expected")
            checks.expect(stats.corruptRegions == 0, "cut at \(cut): corrupt regions counted")
            checks.expect(try readFile(segment).count == (frameEnds.last { $0 <= cut } ?? 0), "torn tail not truncated at \(cut)")
        }
        return checks.failures
    }

    @Test("random bit flips in records and ledger: the spool opens, salvages every intact record and counts the rest")
    func bitFlips() async throws {
        let failures = try await offCooperativePool { try Self.bitFlipFailures() }
        #expect(failures.isEmpty, "\(failures.count) failed checks, e.g. \(failures.prefix(5))")
    }

    static func bitFlipFailures() throws -> [String] {
        var checks = Checks()
        var g = SystemRandomNumberGenerator()
        for trial in 0..<200 {
            let dir = temporarySpoolDirectory()
            defer { removeTree(dir) }
            var config = SpoolConfiguration(directory: dir)
            config.segmentBytes = 1 << 20
            var acked: Set<UInt64> = []
            do {
                let spool = try Spool(configuration: config)
                for i in 0..<30 { try spool.append([entry("leaf\(i % 4)", "payload-\(i)-" + String(repeating: "z", count: i))]) }
                let some = try spool.next(max: 5)
                try spool.acknowledge(some.map(\.sequence))
                acked = Set(some.map(\.sequence))
                spool.close()
            }
            let segment = dir + "/segments/" + (try listDirectory(dir + "/segments")).first!
            var bytes = try readFile(segment)
            var frames: [(range: Range<Int>, seq: UInt64)] = []
            var at = 0
            while case .record(let r, let size) = RecordCodec.decode(bytes, at: at) {
                frames.append((at..<(at + size), r.sequence))
                at += size
            }
            // Distinct bits: the same bit flipped twice is no damage at all (CI once drew that: a "damaged" record
            // came back intact).
            let flips = Int.random(in: 1...3, using: &g)
            var bits: Set<Int> = []
            while bits.count < flips { bits.insert(Int.random(in: 0..<(bytes.count * 8), using: &g)) }
            var hit: Set<UInt64> = []
            for bit in bits {
                bytes[bit / 8] ^= UInt8(1 << (bit % 8))
                if let f = frames.first(where: { $0.range.contains(bit / 8) }) { hit.insert(f.seq) }
            }
            writeFile(segment, bytes)
            if trial % 4 == 0 {  // also damage the ledger now and then: acknowledged records may come back
                var ledger = try readFile(dir + "/ledger")
                if !ledger.isEmpty { ledger[Int.random(in: 0..<ledger.count, using: &g)] ^= 0x10 }
                writeFile(dir + "/ledger", ledger)
            }
            let (records, stats) = try survivors(config)
            let intactUnacked = Set(frames.map(\.seq)).subtracting(hit).subtracting(acked)
            checks.expect(intactUnacked.isSubset(of: Set(records.keys)), "trial \(trial): lost intact records")
            checks.expect(records.keys.allSatisfy { !hit.contains($0) }, "trial \(trial): a damaged record came back")
            // A flip in the last record's length makes it look torn (nothing valid follows): counted as a torn tail.
            checks.expect(stats.corruptRegions + stats.tornTails >= 1 || hit.isEmpty || trial % 4 == 0, "trial \(trial): corruption not counted")
        }
        return checks.failures
    }

    /// SIGKILLs a child that appends (sync always or interval) at random instants, `iterations` times, and checks
    /// that no appended-and-confirmed, unacknowledged record is lost and every record keeps its id and payload.
    func crashLoop(sync: String, iterations: Int) throws -> (kills: Int, lost: Int, redelivered: Int, identityFailures: [String]) {
        let dir = temporarySpoolDirectory()
        defer { removeTree(dir) }
        var g = SystemRandomNumberGenerator()
        var log = HarnessLog()
        var lost = 0, redelivered = 0
        for iteration in 0..<iterations {
            let run = try runHarness(dir: dir, sync: sync, tag: String(iteration), microseconds: UInt32.random(in: 2_000...40_000, using: &g))
            log.read(run.output)
            let (records, _) = try survivors(SpoolConfiguration(directory: dir))
            for (seq, confirmation) in log.confirmed where !log.acknowledged.contains(seq) {
                if records[seq] != confirmation.payload { lost += 1 }  // a changed payload under the same id is a loss too
            }
            redelivered += records.keys.filter { log.acknowledged.contains($0) }.count
            log.checkIdentity(records)
        }
        return (iterations, lost, redelivered, log.identityFailures)
    }

    @Test("crash harness, sync=always: SIGKILL at random points ≥ 200 times loses no acknowledged record")
    func crashAlways() async throws {
        let r = try await offCooperativePool { try crashLoop(sync: "always", iterations: 200) }
        print("spool crash harness (always): \(r.kills) kills, \(r.lost) confirmed records lost, \(r.redelivered) acknowledged records redelivered")
        #expect(r.lost == 0)
        #expect(r.identityFailures.isEmpty, "\(r.identityFailures.prefix(5))")
    }

    @Test("crash harness, sync=interval: a process crash loses nothing either (the loss window is power loss only)")
    func crashInterval() async throws {
        let r = try await offCooperativePool { try crashLoop(sync: "interval", iterations: 50) }
        print("spool crash harness (interval): \(r.kills) kills, \(r.lost) confirmed records lost, \(r.redelivered) redelivered")
        #expect(r.lost == 0)
        #expect(r.identityFailures.isEmpty, "\(r.identityFailures.prefix(5))")
    }
}
