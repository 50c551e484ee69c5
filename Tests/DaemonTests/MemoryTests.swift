import FieldgateCore
import HubEmulator
import HubTestSupport
import Testing

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// The daemon gives its start-up pages back (issue 21, memory) and keeps working: the code it needs afterwards is
/// mapped again as it runs.
@Suite("fieldgated memory housekeeping", .serialized, .timeLimit(.minutes(2)))
struct MemoryTests {
    @Test("once started, the code pages the start left mapped go back; readings still flow and status answers")
    func startupPagesGoBack() async throws {
        try await withHub { hub in
            let daemon = try await DaemonUnderTest.start(hub: hub, leaves: ["memory-leaf"])
            defer { daemon.cleanUp() }
            #expect(await daemon.notify.wait(for: "READY=1"), "\(daemon.stderr)")
            #expect(await daemon.eventually { daemon.devices(in: "ready") == ["gw-under-test", "memory-leaf"] }, "\(daemon.stderr.suffix(1500))")
            let before = residentFileKB(daemon.pid)
            #expect(await daemon.eventually(seconds: 40) { daemon.stderr.contains("start-up over:") }, "\(daemon.stderr.suffix(1500))")
            let after = residentFileKB(daemon.pid)
            #expect(after < before, "file-backed RSS \(before) kB → \(after) kB")
            let line = daemon.stderr.split(separator: "\n").first { $0.contains("start-up over:") } ?? ""
            #expect(line.contains("MB of code and read-only data pages unmapped"), "\(line)")

            daemon.sendUDP(#"{"device":"memory-leaf","values":{"t":1}}"#)
            #expect(await daemon.eventually { ((try? await hub.events()) ?? []).contains { $0.deviceId == "memory-leaf" } }, "\(daemon.stderr.suffix(1500))")
            #expect(try daemon.control(["command": "status"])["summary"]?.stringValue?.contains("leaves online 2/2") == true)
        }
    }

    /// Each reload parses the configuration again. TOMLKit never frees a parsed document, so every reload used to
    /// keep one more copy of every file in memory; the load now frees them when it is done. A secrets file of 3000
    /// keys makes it plain: ten reloads kept 11.8 MB before, 3.8 MB now. What is still kept is TOMLKit's own: it
    /// returns each key list and string it reads in memory it never frees (~130 B a key here).
    @Test("reloading the configuration does not keep the parsed files")
    func reloadsDoNotKeepParsedFiles() async throws {
        let unusedKeys = (0..<3000).map { "\"unused-\($0)\" = \"c2VjcmV0LWtleS1udW1iZXItcGFkZGluZy1wYWRkaW5n\"\n" }.joined()
        try await withHub { hub in
            let daemon = try await DaemonUnderTest.start(hub: hub, leaves: ["reload-memory-leaf"], secrets: unusedKeys)
            defer { daemon.cleanUp() }
            #expect(await daemon.notify.wait(for: "READY=1"), "\(daemon.stderr)")
            func reload() async -> Bool {
                let t0 = MonotonicClock.milliseconds()
                daemon.signal(SIGHUP)
                return await daemon.notify.wait(for: "READY=1", since: t0, seconds: 10)
            }
            #expect(await reload(), "\(daemon.stderr.suffix(1500))")  // the reload path's own first allocations
            let before = status(daemon.pid, "RssAnon:")
            for _ in 0..<10 { #expect(await reload(), "\(daemon.stderr.suffix(1500))") }
            let grownKB = status(daemon.pid, "RssAnon:") - before
            #expect(grownKB < 6000, "anonymous memory grew \(grownKB) kB over ten reloads")
            #expect(!daemon.stderr.contains("reload refused"), "\(daemon.stderr.suffix(1500))")
        }
    }

    private func residentFileKB(_ pid: Int32) -> Int { status(pid, "RssFile:") }

    /// A kB figure of /proc/PID/status.
    private func status(_ pid: Int32, _ field: String) -> Int {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = text.split(separator: "\n").first { $0.hasPrefix(field) } ?? ""
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
    }
}
