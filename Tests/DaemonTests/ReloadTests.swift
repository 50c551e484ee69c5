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
        #expect(await daemon.waitForExit(seconds: 15) == 0, "\(daemon.stderr.suffix(3000))")
        await hub.stop()
    }

    /// Issue 19.3/19.4: `fieldgatectl leaf add` puts a key for a device created after the daemon started into the
    /// secrets and the leaf into devices.d, and the running daemon takes it on the same connection; a changed leaf
    /// keeps its counters; a refused reload answers `fieldgatectl reload` (exit 1 with the reason) and stays in
    /// status until the next reload succeeds; `leaf remove` takes the leaf and its key away again.
    @Test("fieldgatectl leaf add/remove and reload against the running daemon")
    func fieldgatectlLeafAddAndReload() async throws {
        let hub = try await TestHub.start()
        let daemon = try await DaemonUnderTest.start(hub: hub, leaves: ["rl-a"])
        defer { daemon.cleanUp() }
        #expect(await daemon.notify.wait(for: "READY=1"), "\(daemon.stderr)")
        #expect(await daemon.eventually { daemon.devices(in: "ready") == ["gw-under-test", "rl-a"] }, "\(daemon.stderr.suffix(1500))")
        for i in 1...3 { daemon.sendUDP(#"{"device":"rl-a","values":{"n":\#(i)}}"#) }
        func accepted(_ leaf: String) -> Int64 {
            (try? daemon.control(["command": "devices"]))?.arrayValue?.first { $0["device_id"]?.stringValue == leaf }?["accepted"]?.intValue ?? -1
        }
        #expect(await daemon.eventually { accepted("rl-a") == 3 })

        let ctl = "'\(productPath("fieldgatectl"))'"
        let socket = "--socket '\(daemon.controlSocket)'"
        let options = "--config '\(daemon.directory)/fieldgate.toml' \(socket)"
        func run(_ arguments: String) async -> (status: Int32, output: String) {
            let out = daemon.directory + "/ctl.out"
            let status = await blockingSystem("\(ctl) \(arguments) >'\(out)' 2>&1")
            return (status, (try? String(contentsOfFile: out, encoding: .utf8)) ?? "")
        }

        // A device the hub got after the daemon started: its key reaches the running daemon.
        let key = try await hub.createDevice("rl-new").authentication.symmetricKey.primaryKey
        let add = await run("leaf add rl-new --key '\(key)' \(options)")
        #expect(add.status == 0, "\(add.output)")
        #expect(add.output.contains("✓ rl-new is ready on the hub"), "\(add.output)")
        #expect((try String(contentsOfFile: daemon.directory + "/secrets.toml", encoding: .utf8)).contains("rl-new = \"\(key)\""))
        daemon.sendUDP(#"{"device":"rl-new","values":{"added":"without a restart"}}"#)
        #expect(await daemon.eventually { ((try? await hub.events()) ?? []).contains { $0.deviceId == "rl-new" } })
        #expect(try await hub.core.perform { $0.connectionsAccepted } == 1, "no reconnect")

        // A changed leaf (telemetry only now) keeps its counts.
        try "[[leaf]]\ndevice_id = \"rl-a\"\nadapter = \"udp\"\ncloud = []\n"
            .write(toFile: daemon.directory + "/devices.d/leaves.toml", atomically: true, encoding: .utf8)
        let changed = await run("reload \(socket)")
        #expect(changed.status == 0 && changed.output.contains("changed [\"rl-a\"]"), "\(changed.output)")
        #expect(await daemon.eventually { daemon.devices(in: "ready").contains("rl-a") })
        #expect(accepted("rl-a") == 3, "the counters survived the reload")

        // A refused reload: exit 1 with the reason, in status until a reload succeeds.
        try "[[leaf]]\ndevice_id = \"rl-nokey\"\nadapter = \"udp\"\n".write(toFile: daemon.directory + "/devices.d/nokey.toml", atomically: true, encoding: .utf8)
        let refused = await run("reload \(socket)")
        #expect(refused.status == 1, "\(refused.output)")
        #expect(refused.output.contains("reload refused") && refused.output.contains("no key named rl-nokey"), "\(refused.output)")
        let status = await run("status \(socket)")
        #expect(status.output.contains("RELOAD REFUSED") && status.output.contains("rl-nokey"), "\(status.output)")
        #expect(daemon.devices(in: "ready") == ["gw-under-test", "rl-a", "rl-new"], "the running configuration stays")
        try FileManager.default.removeItem(atPath: daemon.directory + "/devices.d/nokey.toml")

        // Remove: the file and the key go, the daemon lets the leaf go on the same connection.
        let remove = await run("leaf remove rl-new \(options)")
        #expect(remove.status == 0, "\(remove.output)")
        #expect(!FileManager.default.fileExists(atPath: daemon.directory + "/devices.d/rl-new.toml"))
        #expect(!(try String(contentsOfFile: daemon.directory + "/secrets.toml", encoding: .utf8)).contains("rl-new"))
        #expect(await daemon.eventually { daemon.devices(in: "ready") == ["gw-under-test", "rl-a"] })
        #expect((try daemon.control(["command": "status"]))["reload"]?["result"]?.stringValue == "applied")
        #expect(try await hub.core.perform { $0.connectionsAccepted } == 1)

        // What fails changes nothing: an invalid leaf (modbus without a bus), a name whose file exists, a connection
        // string whose key the hub refuses (connect's checks fail and the previous files come back, modes and all).
        func snapshot() throws -> [String: String] {
            var files: [String: String] = [:]
            for name in ["fieldgate.toml", "secrets.toml"] + (try FileManager.default.contentsOfDirectory(atPath: daemon.directory + "/devices.d")).map({ "devices.d/" + $0 }) {
                var st = stat()
                stat(daemon.directory + "/" + name, &st)
                files[name] = (try String(contentsOfFile: daemon.directory + "/" + name, encoding: .utf8)) + " mode \(st.st_mode & 0o777)"
            }
            return files
        }
        let before = try snapshot()
        let invalid = await run("leaf add rl-bad --adapter modbus --key '\(key)' --no-reload \(options)")
        #expect(invalid.status == 1 && invalid.output.contains("nothing changed"), "\(invalid.output)")
        #expect(try snapshot() == before)
        try "# the operator's\n".write(toFile: daemon.directory + "/devices.d/rl-mine.toml", atomically: true, encoding: .utf8)
        let taken = await run("leaf add rl-mine --key '\(key)' --no-reload \(options)")
        #expect(taken.status == 1 && taken.output.contains("exists already"), "\(taken.output)")
        #expect((try String(contentsOfFile: daemon.directory + "/devices.d/rl-mine.toml", encoding: .utf8)) == "# the operator's\n")
        try FileManager.default.removeItem(atPath: daemon.directory + "/devices.d/rl-mine.toml")
        let wrongKey = String(key.reversed().drop(while: { $0 == "=" }).reversed()).replacing("A", with: "B").replacing("a", with: "b")
        let connect = await run("connect 'HostName=\(hub.hostName);DeviceId=gw-under-test;SharedAccessKey=\(wrongKey)=' --address 127.0.0.1 --port \(hub.running.amqpsPort!) --ca-file '\(hub.certificates.caCertificate)' --no-start \(options)")
        #expect(connect.status == 1 && connect.output.contains("✗ credentials") && connect.output.contains("the previous files are back"), "\(connect.output)")
        #expect(try snapshot() == before, "connect put every file back as it was")

        daemon.signal(SIGTERM)
        #expect(await daemon.waitForExit(seconds: 15) == 0)
        await hub.stop()
    }
}
