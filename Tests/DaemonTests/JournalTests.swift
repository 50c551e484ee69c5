import Dispatch
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

/// Logging under systemd (issue 8, part 3): with stderr connected to the journal (JOURNAL_STREAM), every line goes
/// to journald with structured fields. journald is replaced by a listener on /run/systemd/journal/socket inside a
/// private mount namespace (docs/toolchain.md §4), so the host is untouched.
@Suite("fieldgated logs to the journal", .serialized, .timeLimit(.minutes(2)))
struct JournalTests {
    @Test("structured fields (component, priority, adapter, leaf, reason); no key in any field")
    func journalFields() async throws {
        guard getuid() == 0, access("/usr/bin/unshare", X_OK) == 0 else {
            print("JournalTests: skipped: needs root and unshare(1) for a private mount namespace")
            return
        }
        let hub = try await TestHub.start()
        let daemon = try await DaemonUnderTest.start(hub: hub, leaves: ["journal-leaf"], prepareOnly: true)
        defer { daemon.cleanUp() }
        let dir = daemon.directory
        let listener = """
            import socket, sys
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.bind('/run/systemd/journal/socket')
            out = open(sys.argv[1], 'ab')
            while True:
                out.write(s.recv(65536) + b'\\n\\x1e\\n'); out.flush()
            """
        try listener.write(toFile: dir + "/listener.py", atomically: true, encoding: .utf8)
        // Sends until the daemon's rejection reaches the journal (its start-up time varies with the load), ≤ 15 s.
        let sender = """
            import socket, sys, time
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for _ in range(75):
                s.sendto(b'{"device":"stranger","values":{}}', ('127.0.0.1', int(sys.argv[1])))
                time.sleep(0.2)
                try:
                    if b'UDP datagram rejected' in open(sys.argv[2], 'rb').read(): break
                except OSError:
                    pass
            """
        try sender.write(toFile: dir + "/sender.py", atomically: true, encoding: .utf8)
        let script = """
            set -e
            mkdir -p /run/systemd
            mount -t tmpfs tmpfs /run/systemd
            mkdir -p /run/systemd/journal
            python3 '\(dir)/listener.py' '\(dir)/journal.bin' & LISTENER=$!
            for i in $(seq 50); do [ -S /run/systemd/journal/socket ] && break; sleep 0.1; done
            exec 2>'\(dir)/stderr.log'
            export JOURNAL_STREAM=$(stat -c %d:%i '\(dir)/stderr.log')
            timeout -s TERM 30 '\(productPath("fieldgated"))' run --config '\(dir)/fieldgate.toml' & DAEMON=$!
            python3 '\(dir)/sender.py' \(daemon.udpPort) '\(dir)/journal.bin' || true
            kill -TERM $DAEMON; wait $DAEMON || true
            kill $LISTENER
            """
        try script.write(toFile: dir + "/run.sh", atomically: true, encoding: .utf8)
        let status = await blockingSystem("unshare --mount --propagation private bash '\(dir)/run.sh'")
        #expect(status == 0)
        let journal = String(decoding: (FileManager.default.contents(atPath: dir + "/journal.bin") ?? Data()), as: UTF8.self)
        let entries = journal.components(separatedBy: "\n\u{1e}\n").filter { !$0.isEmpty }
        let ready = entries.first { $0.contains("MESSAGE=ready\n") }
        #expect(ready?.contains("PRIORITY=5") == true, "\(journal.prefix(3000))")
        #expect(ready?.contains("FIELDGATE_COMPONENT=fieldgated") == true)
        #expect(ready?.contains("STALL_MS=") == true)
        let rejected = entries.first { $0.contains("MESSAGE=UDP datagram rejected: unknownLeaf") }
        #expect(rejected?.contains("ADAPTER=udp:\(daemon.udpPort)") == true, "\(journal.prefix(3000))")
        #expect(rejected?.contains("REASON=unknownLeaf") == true)
        #expect(rejected?.contains("FIELDGATE_COMPONENT=UDPAdapter") == true, "the module that logged it (issue 19)")
        #expect(rejected?.contains("PRIORITY=4") == true)
        let keys = (try? String(contentsOfFile: dir + "/secrets.toml", encoding: .utf8))?.split(separator: "\"").filter { $0.count > 30 } ?? []
        #expect(!keys.isEmpty && keys.allSatisfy { !journal.contains($0) }, "no device key reaches the journal")
        #expect(!journal.contains("SharedAccessSignature"), "no SAS token reaches the journal")
        let stderr = (try? String(contentsOfFile: dir + "/stderr.log", encoding: .utf8)) ?? ""
        #expect(!stderr.contains("MESSAGE"), "nothing went to stderr but the journal: \(stderr.prefix(500))")
        await hub.stop()
    }
}

/// `system()` off the cooperative pool (it blocks); the exit status.
func blockingSystem(_ command: String) async -> Int32 {
    await withCheckedContinuation { cont in
        DispatchQueue(label: "fieldgate.tests.system").async { cont.resume(returning: (system(command) >> 8) & 0xFF) }
    }
}
