import ArgumentParser
import FieldgateCore
import Spool

#if canImport(Glibc)
import Glibc
#endif

/// Spool figures against a raw baseline on the same disk in the same run (issue: spool benchmark).
struct SpoolBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "spool", abstract: "Spool append throughput, write amplification, reopen time and memory.")

    @Option(help: "Directory on the disk to measure (not a tmpfs).") var dir = "/var/tmp/fieldgate-spool-bench"
    @Option(help: "Records per append call (and per baseline write).") var batch = 64
    @Option(help: "Record sizes to run.") var sizes: [Int] = [200, 4096]
    @Option(help: "Sync policies to run: always, interval.") var syncs: [String] = ["always", "interval"]
    @Flag(help: "Only the append runs (no reopen and memory figures).") var appendOnly = false
    @Flag(help: "Only the memory figures.") var memoryOnly = false
    @Option(help: "Megabytes per throughput run.") var megabytes = 512
    /// The disk of a shared VM changes speed from one minute to the next (either loop alone varies 2–3× between
    /// runs here): raw and spool alternate, and the ratio of each pair is what counts.
    @Option(help: "Rounds per row (raw and spool alternate; the median ratio is reported).") var rounds = 3
    @Option(help: "Size of the spool reopened for the recovery figure, in MB.") var reopenMegabytes = 1024
    @Option(help: "Records buffered for the memory figure.") var memoryRecords = 1_000_000
    @Option(help: "Leaves the memory figure's records are spread over, round-robin (one figure each).") var memoryLeaves: [Int] = [100, 1000]

    func run() async throws {
        guard syncs.allSatisfy({ $0 == "always" || $0 == "interval" }) else { throw ValidationError("--syncs: always, interval") }
        if memoryOnly { return try memoryFigure() }
        print("spool benchmark in \(dir), \(batch) records per append, \(megabytes) MB per run, \(rounds) rounds (raw and spool alternate)")
        print("")
        print("record  sync        spool rec/s   spool MB/s   raw MB/s   ratio (rounds)           write amp.   raw write amp.")
        for size in sizes {
            for sync in [SpoolConfiguration.SyncPolicy.always, .interval(milliseconds: 100)] where syncs.contains(sync == .always ? "always" : "interval") {
                let count = megabytes * 1024 * 1024 / size
                var pairs: [(raw: (mbs: Double, amp: Double), spool: (rate: Double, mbs: Double, amp: Double))] = []
                for _ in 0..<max(1, rounds) {
                    pairs.append((try baseline(recordSize: size, count: count, sync: sync), try spoolRun(recordSize: size, count: count, sync: sync)))
                }
                // The row is the round with the median ratio; every round's ratio is beside it.
                let ratios = pairs.map { $0.spool.mbs / $0.raw.mbs }
                let median = pairs[ratios.indices.sorted { ratios[$0] < ratios[$1] }[ratios.count / 2]]
                let label = sync == .always ? "always    " : "interval  "
                let each = ratios.map { fixed($0, 2) }.joined(separator: " ")
                print(pad(String(size), 6) + "  " + label + pad(fixed(median.spool.rate, 0), 12) + "  " + pad(fixed(median.spool.mbs, 1), 11) + "  "
                      + pad(fixed(median.raw.mbs, 1), 9) + "  " + fixed(median.spool.mbs / median.raw.mbs, 2) + " (" + each + ")"
                      + String(repeating: " ", count: max(1, 18 - each.count)) + pad(fixed(median.spool.amp, 2), 11) + "  " + pad(fixed(median.raw.amp, 2), 15))
            }
        }
        print("targets: ratio ≥ 0.8, write amplification ≤ 1.2 (the raw loop's own, for the same bytes and syncs, is beside it)\n")
        guard !appendOnly else { return }
        try reopenFigure()
        try memoryFigure()
    }

    private func fresh(_ path: String) {
        _ = system("rm -rf '\(path)'")
        mkdir(dir, 0o755)
    }

    /// Plain write + fdatasync of the same payload bytes with the same batching: MB/s and its write amplification.
    private func baseline(recordSize: Int, count: Int, sync: SpoolConfiguration.SyncPolicy) throws -> (Double, Double) {
        let path = dir + "/baseline"
        fresh(path)
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0o644)
        defer { close(fd); unlink(path) }
        let chunk = [UInt8](repeating: 0x61, count: recordSize * batch)
        let written0 = ioWriteBytes()
        let start = ContinuousClock.now
        var lastSync = ContinuousClock.now
        for _ in 0..<(count / batch) {
            _ = chunk.withUnsafeBytes { write(fd, $0.baseAddress, chunk.count) }
            switch sync {
            case .always: fdatasync(fd)
            case .interval(let ms):
                if lastSync.duration(to: .now) >= .milliseconds(ms) { fdatasync(fd); lastSync = .now }
            }
        }
        fdatasync(fd)
        let payload = Double(count / batch * chunk.count)
        return (payload / 1_048_576 / secondsSince(start), Double(ioWriteBytes() - written0) / payload)
    }

    private func spoolRun(recordSize: Int, count: Int, sync: SpoolConfiguration.SyncPolicy) throws -> (Double, Double, Double) {
        let path = dir + "/spool"
        fresh(path)
        defer { _ = system("rm -rf '\(path)'") }
        var config = SpoolConfiguration(directory: path)
        config.sync = sync
        config.capBytes = Int.max / 2
        let spool = try Spool(configuration: config)
        let payload = [UInt8](repeating: 0x62, count: recordSize)
        let entries = (0..<batch).map { i in Spool.Entry(leaf: "leaf-\(i % 16)", acquiredAtMs: 1_700_000_000_000, payload: payload) }
        let written0 = ioWriteBytes()
        let start = ContinuousClock.now
        for _ in 0..<(count / batch) { try spool.append(entries) }
        try spool.sync()
        let elapsed = secondsSince(start)
        let written = Double(ioWriteBytes() - written0)
        spool.close()
        let records = Double(count / batch * batch)
        return (records / elapsed, records * Double(recordSize) / 1_048_576 / elapsed, written / (records * Double(recordSize)))
    }

    private func reopenFigure() throws {
        let path = dir + "/reopen"
        fresh(path)
        defer { _ = system("rm -rf '\(path)'") }
        let config = try fill(path, batches: reopenMegabytes * 1024 * 1024 / (256 * 4040), perBatch: 256, payloadBytes: 4000)
        _ = system("sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null")
        let start = ContinuousClock.now
        let reopened = try Spool(configuration: config)
        let cold = secondsSince(start)
        let depth = reopened.statistics().depth
        reopened.close()
        let start2 = ContinuousClock.now
        let again = try Spool(configuration: config)
        let warm = secondsSince(start2)
        again.close()
        print("reopen of a \(reopenMegabytes) MB spool (\(depth) records): \(fixed(cold, 2)) s cold cache, \(fixed(warm, 2)) s warm   (target ≤ 1 s)")
    }

    private func memoryFigure() throws {
        for leaves in memoryLeaves {
            let path = dir + "/memory"
            fresh(path)
            defer { _ = system("rm -rf '\(path)'") }
            _ = try fill(path, batches: memoryRecords / 1000, perBatch: 1000, payloadBytes: 200, leaves: leaves)
            // Opened in a fresh process: in this one, heap pages freed by the earlier runs would absorb the spool's
            // allocations and hide them from RSS.
            let child = try ChildProcess.spawn(CommandLine.arguments[0], ["spool-memory", "--path", path])
            child.wait()
            let figures = (ChildProcess.readFile(path + "/memory.txt") ?? "").split(separator: " ").compactMap { Int($0) }
            guard figures.count == 3 else { print("memory: the child process reported nothing"); return }
            print("memory with \(figures[2]) records buffered (\(leaves) leaves interleaved): RSS +\(fixed(Double(figures[1] - figures[0]) / 1024, 1)) MB after open, "
                  + "in a fresh process   (target ≤ 2 MB)")
        }
    }

    /// Writes `batches × perBatch` records round-robin over `leaves` leaves into a fresh spool at `path` and closes it.
    private func fill(_ path: String, batches: Int, perBatch: Int, payloadBytes: Int, leaves: Int = 100) throws -> SpoolConfiguration {
        var config = SpoolConfiguration(directory: path)
        config.sync = .interval(milliseconds: 1000)
        config.capBytes = Int.max / 2
        let spool = try Spool(configuration: config)
        let entries = (0..<perBatch).map { i in
            Spool.Entry(leaf: "leaf-\(i % leaves)", acquiredAtMs: 1, payload: [UInt8](repeating: 0x63, count: payloadBytes))
        }
        for _ in 0..<batches { try spool.append(entries) }
        spool.close()
        return config
    }

    private func ioWriteBytes() -> Int {
        guard let text = ChildProcess.readFile("/proc/self/io") else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("write_bytes:") {
            return Int(line.split(separator: " ").last ?? "0") ?? 0
        }
        return 0
    }

    static func rssKB() -> Int {
        guard let text = ChildProcess.readFile("/proc/self/status") else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.split(separator: " ").compactMap { Int($0) }.first ?? 0)
        }
        return 0
    }
}

/// The child of the spool benchmark's memory figure: opens the spool at `path` in a fresh process and writes
/// "<RSS before KB> <RSS after KB> <records>" to `path`/memory.txt.
struct SpoolMemoryChild: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "spool-memory", abstract: "(internal) the spool memory figure's child.", shouldDisplay: false)
    @Option var path: String

    func run() throws {
        var config = SpoolConfiguration(directory: path)
        config.capBytes = Int.max / 2
        // An empty spool first: the code and runtime pages every open touches are not the buffered records' cost.
        let warmup = path + "-warmup"
        try Spool(configuration: SpoolConfiguration(directory: warmup)).close()
        _ = system("rm -rf '\(warmup)'")
        let before = SpoolBench.rssKB()
        let spool = try Spool(configuration: config)
        let after = SpoolBench.rssKB()
        let depth = spool.statistics().depth
        spool.close()
        let text = "\(before) \(after) \(depth)"
        try? ChildProcess.writeFile(path + "/memory.txt", text)
    }
}
