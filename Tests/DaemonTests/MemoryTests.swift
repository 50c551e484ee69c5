import FieldgateCore
import HubEmulator
import HubTestSupport
import Testing

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
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

    private func residentFileKB(_ pid: Int32) -> Int {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = text.split(separator: "\n").first { $0.hasPrefix("RssFile:") } ?? ""
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
    }
}
