import Spool
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Runs `body` with a spool configuration on a 256 KiB tmpfs mounted at a fresh directory: 32 KiB segments and a
/// cap far above the file system, so the disk fills first (root only: the tests below say so as a trait, so
/// without root they show as skipped instead of passing silently).
func withSmallFilesystem(_ body: (SpoolConfiguration) throws -> Void) throws {
    let dir = temporarySpoolDirectory()
    mkdir(dir, 0o755)
    defer {
        _ = system("umount '\(dir)' 2>/dev/null")
        removeTree(dir)
    }
    guard system("mount -t tmpfs -o size=256k tmpfs '\(dir)' 2>/dev/null") == 0 else {
        Issue.record("cannot mount a 256 KiB tmpfs at \(dir)")
        return
    }
    var config = SpoolConfiguration(directory: dir + "/spool")
    config.segmentBytes = 32 * 1024
    config.capBytes = 10 * 1024 * 1024
    try body(config)
}

extension CrashTests {
    @Test("drop-oldest: the disk fills up, no crash, the oldest segments go (counted), appends keep working",
          .enabled(if: getuid() == 0, "needs root to mount a tmpfs"))
    func dropOldestOnFullDisk() throws {
        try withSmallFilesystem { config in
            let spool = try Spool(configuration: config)
            let payload = String(repeating: "p", count: 900)
            for i in 0..<1000 { try spool.append([entry("leaf\(i % 4)", payload)]) }  // ~1 MB into 256 KiB
            let stats = spool.statistics()
            #expect((stats.dropped[.overflow]?.values.reduce(0, +) ?? 0) > 500)
            #expect(stats.depth > 100)
            #expect(stats.bytes <= 256 * 1024)
        }
    }

    @Test("reject-new: a full disk refuses with .full and recovers when delivery frees space",
          .enabled(if: getuid() == 0, "needs root to mount a tmpfs"))
    func rejectNewOnFullDisk() throws {
        try withSmallFilesystem { config in
            var config = config
            config.fullPolicy = .rejectNew
            let spool = try Spool(configuration: config)
            let payload = String(repeating: "q", count: 900)
            var appended = 0
            var refusal: SpoolError?
            for i in 0..<1000 {
                do throws(SpoolError) {
                    try spool.append([entry("leaf\(i % 4)", payload)])
                    appended += 1
                } catch {
                    refusal = error
                    break
                }
            }
            #expect(refusal?.code == .full)
            #expect(appended > 100)
            // Deliver everything: sealed segments are deleted, space returns, appends work again.
            while true {
                let batch = try spool.next(max: 100)
                if batch.isEmpty { break }
                try spool.acknowledge(batch.map(\.sequence))
            }
            try spool.append([entry("leaf0", payload)])
            spool.close()
            let reopened = try Spool(configuration: config)
            #expect(reopened.statistics().depth == 1)
        }
    }

    @Test("a full disk while the ledger is rewritten: acknowledgements wait in memory, no descriptor is closed twice, none leaks",
          .enabled(if: getuid() == 0, "needs root to mount a tmpfs"))
    func ledgerOnAFullDisk() throws {
        try withSmallFilesystem { config in
            let dir = config.directory
            let spool = try Spool(configuration: config)
            for i in 0..<200 { try spool.append([entry("leaf\(i % 4)", String(repeating: "r", count: 100))]) }
            // Fill what is left of the file system.
            let filler = open(dir + "/../filler", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            #expect(filler >= 0)
            var chunk = [UInt8](repeating: 0x55, count: 4096)
            while write(filler, &chunk, chunk.count) > 0 {}
            while write(filler, &chunk, 1) > 0 {}
            // Acknowledge one by one until the ledger can no longer grow, then a few more: each retries the rewrite
            // (a temporary file that cannot be written).
            let ledgerPath = dir + "/ledger"
            var acknowledged: [UInt64] = []
            var failedAppends = 0
            while failedAppends < 4, let record = try spool.next(max: 1).first {
                let before = (try? readFile(ledgerPath).count) ?? 0
                try spool.acknowledge([record.sequence])
                acknowledged.append(record.sequence)
                if (try? readFile(ledgerPath).count) ?? 0 == before { failedAppends += 1 }
            }
            #expect(failedAppends == 4, "the ledger stopped growing on the full disk")
            // Every failed rewrite closed its temporary file, and the spool still holds its ledger (not a number it
            // closed, which the next file opened anywhere in the process would take).
            let held = descriptorTargets().filter { $0.hasPrefix(dir + "/ledger") }
            // (The flusher may hold a second descriptor on the ledger for a moment, during a sync round.)
            #expect(!held.isEmpty && held.allSatisfy { $0 == dir + "/ledger" }, "descriptors on the ledger: \(held)")
            // A descriptor opened now takes the lowest free number: a stale ledger descriptor would be this one.
            let sentinel = open("/dev/null", O_RDONLY | O_CLOEXEC)
            for _ in 0..<3 {
                guard let record = try spool.next(max: 1).first else { break }
                try spool.acknowledge([record.sequence])
                acknowledged.append(record.sequence)
            }
            #expect(fcntl(sentinel, F_GETFD) >= 0, "the spool closed a descriptor it no longer owned")
            close(sentinel)
            // Space comes back: the next acknowledgement rewrites the ledger, and a reopen redelivers none of these.
            close(filler)
            unlink(dir + "/../filler")
            if let record = try spool.next(max: 1).first {
                try spool.acknowledge([record.sequence])
                acknowledged.append(record.sequence)
            }
            spool.close()
            let (records, _) = try survivors(config)
            #expect(Set(records.keys).isDisjoint(with: acknowledged), "acknowledged records came back")
            #expect(records.count == 200 - acknowledged.count)
        }
    }
}

/// Where this process's descriptors point (/proc/self/fd).
func descriptorTargets() -> [String] {
    guard let d = opendir("/proc/self/fd") else { return [] }
    defer { closedir(d) }
    var out: [String] = []
    while let e = readdir(d) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        guard Int(name) != nil else { continue }
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/fd/" + name, &buffer, buffer.count - 1)
        if n > 0 { out.append(String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)) }
    }
    return out
}
