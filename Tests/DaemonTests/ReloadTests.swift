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

/// SIGHUP with a live AMQP connection (issue 8, test 8).
@Suite("fieldgated reload", .serialized, .timeLimit(.minutes(3)))
struct ReloadTests {
    @Test("leaves added and removed on SIGHUP over the same single hub connection; an invalid file keeps the running configuration")
    func reloadKeepsTheConnection() async throws {
        let hub = try await TestHub.start()
        let daemon = try await DaemonUnderTest.start(hub: hub, leaves: ["reload-a"], otherDevices: ["reload-b", "reload-c"])
        defer { daemon.cleanUp() }
        #expect(await daemon.notify.wait(for: "READY=1"), "\(daemon.stderr)")
        #expect(await daemon.eventually { daemon.devices(in: "ready") == ["gw-under-test", "reload-a"] }, "\(daemon.stderr.suffix(1500))")
        #expect(try await hub.core.perform { $0.connectionsAccepted } == 1)

        // Remove reload-a, add reload-b and reload-c.
        try daemon.writeLeaves(["reload-b", "reload-c"])
        let t0 = MonotonicClock.milliseconds()
        daemon.signal(SIGHUP)
        #expect(await daemon.notify.wait(for: "RELOADING=1", since: t0, seconds: 5))
        #expect(await daemon.notify.wait(for: "READY=1", since: t0, seconds: 10))
        #expect(await daemon.eventually { daemon.devices(in: "ready") == ["gw-under-test", "reload-b", "reload-c"] },
                "now: \(daemon.devices(in: "ready")) \(daemon.stderr.suffix(1500))")
        #expect(try await hub.core.perform { $0.connectionsAccepted } == 1, "the hub saw one connection only")
        #expect(try await hub.core.perform { $0.connectionCount } == 1)

        // The new leaf's readings flow; the removed leaf's are refused by the adapter (not attributed).
        daemon.sendUDP(#"{"device":"reload-b","values":{"after":"reload"}}"#)
        daemon.sendUDP(#"{"device":"reload-a","values":{"after":"reload"}}"#)
        #expect(await daemon.eventually { ((try? await hub.events()) ?? []).contains { $0.deviceId == "reload-b" && $0.body?.contains("reload") == true } },
                "\(String(describing: try? daemon.control(["command": "status"]))) \(daemon.stderr.suffix(1500))")
        try await Task.sleep(for: .milliseconds(500))
        #expect(try await hub.events().allSatisfy { $0.deviceId != "reload-a" })

        // An invalid file: the reload is refused, the running leaves stay.
        try "[[leaf]]\ndevice_id = \"reload-b\"\nadapter = \"udp\"\ncolour = \"blue\"\n"
            .write(toFile: daemon.directory + "/devices.d/leaves.toml", atomically: true, encoding: .utf8)
        let t1 = MonotonicClock.milliseconds()
        daemon.signal(SIGHUP)
        #expect(await daemon.notify.wait(for: "READY=1", since: t1, seconds: 10))
        try await Task.sleep(for: .milliseconds(500))
        #expect(daemon.devices(in: "ready") == ["gw-under-test", "reload-b", "reload-c"])
        #expect(daemon.stderr.contains("reload refused, the running configuration stays"), "\(daemon.stderr.suffix(1500))")
        #expect(daemon.stderr.contains("leaves.toml:4: unknown key colour"))

        // New hub settings: a new connection (a reconnect), the same leaves ready again.
        let main = daemon.directory + "/fieldgate.toml"
        try (try String(contentsOfFile: main, encoding: .utf8)).replacing("[hub]\n", with: "[hub]\ntoken_ttl_seconds = 600\n")
            .write(toFile: main, atomically: true, encoding: .utf8)
        try daemon.writeLeaves(["reload-b", "reload-c"])
        let t2 = MonotonicClock.milliseconds()
        daemon.signal(SIGHUP)
        #expect(await daemon.notify.wait(for: "READY=1", since: t2, seconds: 10))
        #expect(await daemon.eventually { (try? await hub.core.perform { $0.connectionsAccepted }) == 2 })
        #expect(await daemon.eventually { daemon.devices(in: "ready") == ["gw-under-test", "reload-b", "reload-c"] })
        #expect(daemon.stderr.contains("hub settings changed: reconnected"))

        daemon.signal(SIGTERM)
        #expect(await daemon.waitForExit(seconds: 15) == 0)
        await hub.stop()
    }
}
