import Spool
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Runs `body` with a 256 KiB tmpfs mounted at a fresh directory (root only: the tests below say so as a trait, so
/// without root they show as skipped instead of passing silently).
func withSmallFilesystem(_ body: (String) throws -> Void) throws {
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
    try body(dir + "/spool")
}

extension CrashTests {
    @Test("drop-oldest: the disk fills up, no crash, the oldest segments go (counted), appends keep working",
          .enabled(if: getuid() == 0, "needs root to mount a tmpfs"))
    func dropOldestOnFullDisk() throws {
        try withSmallFilesystem { dir in
            var config = SpoolConfiguration(directory: dir)
            config.segmentBytes = 32 * 1024
            config.capBytes = 10 * 1024 * 1024  // far above the filesystem: the disk fills first
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
        try withSmallFilesystem { dir in
            var config = SpoolConfiguration(directory: dir)
            config.segmentBytes = 32 * 1024
            config.capBytes = 10 * 1024 * 1024
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
}
