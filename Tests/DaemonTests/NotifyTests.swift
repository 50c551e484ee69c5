import FieldgateCore
import HubEmulator
import HubServiceClient
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

/// fieldgated under a supervisor, over a fake NOTIFY_SOCKET (issue 8, test 7), with a real hub.
@Suite("fieldgated and systemd's notify protocol", .serialized, .timeLimit(.minutes(3)))
struct NotifyTests {
    @Test("READY without waiting for the hub, STATUS, WATCHDOG cadence, RELOADING then READY, a frozen loop stops the pings, a hub outage does not, STOPPING")
    func notifyProtocol() async throws {
        let hub = try await TestHub.start()
        let daemon = try await DaemonUnderTest.start(hub: hub, leaves: ["notify-leaf"])
        defer { daemon.cleanUp() }
        let n = daemon.notify

        #expect(await n.wait(for: "READY=1"), "READY=1 never came: \(daemon.stderr)")
        let ready = n.all.first { $0.text.contains("READY=1") }
        #expect(ready?.text.contains("STATUS=hub:") == true, "READY carries a status line")
        // Watchdog cadence: WATCHDOG_USEC = 2 s → a ping about every second.
        let t0 = MonotonicClock.milliseconds()
        try await Task.sleep(for: .seconds(3.5))
        let pings = n.times(of: "WATCHDOG=1", since: t0)
        #expect(pings.count >= 3, "pings in 3.5 s: \(pings.count)")
        // Healthy gaps stay well under the frozen one below (≥ 3 s), even on a loaded machine.
        #expect(zip(pings, pings.dropFirst()).allSatisfy { $1 - $0 < 2500 }, "no gap over 2.5 s while healthy: \(pings)")

        // fieldgatectl's view, over the control socket.
        let status = try daemon.control(["command": "status"])
        #expect(status["summary"]?.stringValue?.contains("leaves online") == true)
        #expect(status["stuck"]?.arrayValue?.isEmpty == true)
        // The leaf and the gateway attached: one or both of them at once.
        let attaching = status["connections"]?.arrayValue?.first?["most_attaching_at_once"]?.intValue
        #expect(attaching.map { (1...2).contains($0) } == true, "\(String(describing: status["connections"]))")
        // Prometheus metrics on loopback ([control] metrics).
        let metrics = daemon.httpGet("/metrics")
        #expect(metrics.hasPrefix("HTTP/1.1 200 OK"), "\(metrics.prefix(300))")
        #expect(metrics.contains("# TYPE fieldgate_spool_records gauge"))
        #expect(metrics.contains("fieldgate_leaves{state=\"ready\"} 2"))
        #expect(metrics.contains("fieldgate_hub_connection_open{connection=\"0\"} 1"))
        #expect(metrics.contains("fieldgate_hub_most_attaching_at_once{connection=\"0\"} \(attaching ?? -1)"))
        #expect(metrics.contains("fieldgate_components_stuck 0"))
        #expect(daemon.httpGet("/other").hasPrefix("HTTP/1.1 404"))
        // The gateway's own `status` method answers the same, through the hub (issue 5, part 4).
        let method = try await HubServiceClient(host: "127.0.0.1", port: hub.running.httpPort, authorization: nil)
            .request("POST", "/twins/gw-under-test/methods", body: ["methodName": "status", "payload": nil, "responseTimeoutInSeconds": 10])
        #expect(method.json?["status"]?.intValue == 200)
        #expect(method.json?["payload"]?["summary"]?.stringValue?.contains("leaves online") == true, "\(String(describing: method.json))")

        // SIGHUP: RELOADING=1, then READY=1 again.
        let t1 = MonotonicClock.milliseconds()
        daemon.signal(SIGHUP)
        #expect(await n.wait(for: "RELOADING=1", since: t1, seconds: 5))
        #expect(await n.wait(for: "READY=1", since: t1, seconds: 5))

        // A frozen component: the UDP loop blocks for 5 s. Stall threshold 2 s → a gap in the pings, a "stuck"
        // status, then the pings resume.
        let t2 = MonotonicClock.milliseconds()
        let frozen = try daemon.control(["command": "debug-freeze", "component": .string("udp:\(daemon.udpPort)"), "seconds": 5])
        #expect(frozen["frozen"] != nil, "\(frozen)")
        try await Task.sleep(for: .seconds(7))
        let during = [t2] + n.times(of: "WATCHDOG=1", since: t2)
        let longestGap = zip(during, during.dropFirst()).map { $1 - $0 }.max() ?? 0
        // Pings every second: the last one before the 2 s stall comes by t2+2 s, the next after the 5 s freeze
        // at t2+5 s or later.
        #expect(longestGap >= 2900, "the pings stopped while the UDP loop was frozen (longest gap \(longestGap) ms)")
        #expect(n.all.contains { $0.ms >= t2 && $0.text.contains("STATUS=stuck: udp:\(daemon.udpPort)") })
        #expect(n.times(of: "WATCHDOG=1", since: MonotonicClock.milliseconds() - 1500).count >= 1, "pings resumed")

        // A hub outage stops no loop: the pings go on.
        await hub.stop()
        let t3 = MonotonicClock.milliseconds()
        try await Task.sleep(for: .seconds(3.5))
        #expect(n.times(of: "WATCHDOG=1", since: t3).count >= 3, "the watchdog is fed during a hub outage")

        // SIGTERM: STOPPING=1 and a clean exit, hub or no hub.
        let t4 = MonotonicClock.milliseconds()
        daemon.signal(SIGTERM)
        let exit = await daemon.waitForExit(seconds: 15)
        #expect(exit == 0, "exit status \(String(describing: exit)): \(daemon.stderr.suffix(2000))")
        #expect(!n.times(of: "STOPPING=1", since: t4).isEmpty)
        let statusUpdates = n.all.filter { $0.text.hasPrefix("STATUS=hub:") }
        #expect(statusUpdates.count >= 2, "STATUS= is refreshed every few seconds (\(statusUpdates.count) updates)")
    }

    @Test("no hub at all: READY=1 still comes (the hub is never waited for) and the watchdog is fed")
    func readyWithoutHub() async throws {
        let hub = try await TestHub.start()
        let daemon = try await DaemonUnderTest.start(hub: hub, leaves: ["lonely-leaf"], stopHubFirst: true)
        defer { daemon.cleanUp() }
        #expect(await daemon.notify.wait(for: "READY=1", seconds: 10), "\(daemon.stderr)")
        #expect(await daemon.notify.wait(for: "WATCHDOG=1", seconds: 3))
        let status = try daemon.control(["command": "status"])
        #expect(status["leaves_by_state"]?["ready"] == nil, "nothing is ready without a hub: \(status)")
        daemon.signal(SIGTERM)
        #expect(await daemon.waitForExit(seconds: 15) == 0)
    }

    @Test("an invalid configuration: exit 78 and file:line messages on stderr, nothing sent to systemd")
    func invalidConfigurationExits78() async throws {
        let dir = "/tmp/fieldgated-bad-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(dir, 0o755)
        defer { _ = system("rm -rf '\(dir)'") }
        let text = "[hub]\nhost = \"h\"\n[gateway]\ndevice_id = \"gw\"\nkey = \"inline\"\n"
        FileManager.default.createFile(atPath: dir + "/fieldgate.toml", contents: Data(text.utf8))
        let status = system("'\(productPath("fieldgated"))' run --config '\(dir)/fieldgate.toml' 2>'\(dir)/err' >/dev/null")
        #expect((status >> 8) & 0xFF == 78)
        let err = (try? String(contentsOfFile: dir + "/err", encoding: .utf8)) ?? ""
        #expect(err.contains("\(dir)/fieldgate.toml:5: unknown key key in [gateway]. Keys never go in the configuration"), "\(err)")
        let check = system("'\(productPath("fieldgatectl"))' config check --config '\(dir)/fieldgate.toml' 2>/dev/null >/dev/null")
        #expect((check >> 8) & 0xFF == 78, "fieldgatectl config check runs the same validation")
    }
}
