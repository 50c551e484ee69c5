import FieldgateCore
import HubEmulator
import HubTestSupport
import IoTHub
import Logging
import ProtonAMQP
import Testing

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#endif

/// Zero-touch provisioning (issue 24): fieldgated with nothing but an id scope and a group key, against fieldgate-hub's
/// Device Provisioning Service linked to two emulated hubs, all over real HTTPS and AMQPS on loopback.
@Suite("fieldgated provisioning through DPS", .serialized, .timeLimit(.minutes(4)))
struct ProvisioningTests {
    /// Two hubs (hub-a.test, hub-b.test) and a DPS under one CA, the DPS with the group `fleet`.
    struct Fleet {
        let directory: String
        let certificates: LocalCertificates.Paths
        let hubA: TestHub
        let hubB: TestHub
        let dps: ProvisioningServer
        let dpsPort: Int
        let group: EnrollmentGroup

        static func start() async throws -> Fleet {
            let dir = FileManager.default.temporaryDirectory.path + "/fieldgate-dps-test-\(UInt32.random(in: 0...UInt32.max))"
            let certs = try LocalCertificates.create(in: dir + "/certs", dnsNames: ["localhost", "hub-a.test", "hub-b.test"])
            let hubA = try await TestHub.start(certificates: certs) { $0.hub.hostName = "hub-a.test" }
            let hubB = try await TestHub.start(certificates: certs) { $0.hub.hostName = "hub-b.test" }
            var c = ProvisioningServerConfiguration(tls: AMQPServerTLS(certificateFile: certs.serverCertificate, privateKeyFile: certs.serverKey))
            c.port = 0
            c.retryAfterSeconds = 1
            c.tokenClockSkewSeconds = 0
            c.stateDirectory = dir + "/dps"
            var logger = Logger(label: "test.dps")
            logger.logLevel = .warning
            let dps = ProvisioningServer(configuration: c, linkedHubs: [hubA.core, hubB.core], logger: logger)
            let port = try await dps.start()
            let group = EnrollmentGroup(enrollmentGroupId: "fleet")
            dps.put(group)
            return Fleet(directory: dir, certificates: certs, hubA: hubA, hubB: hubB, dps: dps, dpsPort: port, group: group)
        }

        /// A gateway directory: [hub] names no host, only where the two hubs are reached; `[provisioning]` has the id
        /// scope and the group; the secrets hold the group key. `leaves` are UDP leaves.
        func gatewayDirectory(leaves: [String], extraSecrets: String = "", extraLeaves: String = "", extraHub: String = "",
                              gateway: String = "device_id = \"gw-provisioned\"") throws -> (String, Int) {
            let dir = directory + "/gateway-\(UInt32.random(in: 0...UInt32.max))"
            try FileManager.default.createDirectory(atPath: dir + "/devices.d", withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: dir + "/state", withIntermediateDirectories: true)
            let udpPort = Int.random(in: 40_000...59_000)
            try """
                [hub]
                ca_file = "\(certificates.caCertificate)"
                addresses = { "hub-a.test" = "127.0.0.1:\(hubA.running.amqpsPort!)", "hub-b.test" = "127.0.0.1:\(hubB.running.amqpsPort!)" }
                attaches_per_second = 200
                \(extraHub)
                [provisioning]
                id_scope = "\(dps.configuration.idScope)"
                global_endpoint = "localhost:\(dpsPort)"
                credential = "group:fleet"
                registrations_per_second = 100
                [gateway]
                \(gateway)
                reboot_command = ["true"]
                [spool]
                directory = "\(dir)/state/spool"
                [udp]
                bind = "127.0.0.1"
                port = \(udpPort)
                [control]
                socket = "\(dir)/control.sock"
                allow_debug = true
                """.write(toFile: dir + "/fieldgate.toml", atomically: true, encoding: .utf8)
            try (leaves.map { "[[leaf]]\ndevice_id = \"\($0)\"\nadapter = \"udp\"\n" }.joined(separator: "\n") + extraLeaves)
                .write(toFile: dir + "/devices.d/leaves.toml", atomically: true, encoding: .utf8)
            FileManager.default.createFile(atPath: dir + "/secrets.toml", contents: Data("[groups]\nfleet = \"\(group.keys.primaryKey)\"\n\(extraSecrets)".utf8),
                                           attributes: [.posixPermissions: 0o600])
            return (dir, udpPort)
        }

        func stop() async {
            await dps.stop()
            await hubA.stop()
            await hubB.stop()
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    @Test("fieldgatectl check reaches DPS through the configured proxy (tinyproxy, Basic authentication), as fieldgated does; a proxy that refuses the credentials fails the check, naming the proxy")
    func checkReachesDPSThroughTheProxy() async throws {
        let fleet = try await Fleet.start()
        defer { Task { await fleet.stop() } }
        let proxy = try TestProxy.start()
        defer { proxy.stop() }
        let proxyURL = "http://\(TestProxy.user)@" + proxy.url.dropFirst("http://".count)
        func check(password: String) async throws -> String {
            let (dir, _) = try fleet.gatewayDirectory(leaves: ["leaf-000"], extraSecrets: "[proxy]\npassword = \"\(password)\"\n",
                                                      extraHub: "proxy = \"\(proxyURL)\"")
            let out = dir + "/check.out"
            _ = await blockingSystem("'\(productPath("fieldgatectl"))' check --config '\(dir)/fieldgate.toml' >'\(out)' 2>&1")
            return (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
        }
        let passed = try await check(password: TestProxy.password)
        let dpsLine = passed.split(separator: "\n").first { $0.contains(" dps ") }.map(String.init) ?? ""
        #expect(dpsLine.hasPrefix("✓") && dpsLine.contains("localhost:\(fleet.dpsPort) (id scope")
                && dpsLine.contains("proxy: \(proxy.url) as \(TestProxy.user)") && dpsLine.contains("TLS verified"), "\(passed)")
        #expect(proxy.log().contains("CONNECT localhost:\(fleet.dpsPort)"), "through the proxy: \(proxy.log())")
        #expect(!passed.contains(TestProxy.password), "the proxy password is never printed")

        // DPS itself is reachable on loopback, so only the proxy can fail this one.
        let refused = try await check(password: "not-the-password")
        let refusedLine = refused.split(separator: "\n").first { $0.contains(" dps ") }.map(String.init) ?? ""
        #expect(refusedLine.hasPrefix("✗") && refusedLine.contains("proxy: \(proxy.url) as \(TestProxy.user)"), "\(refused)")
        #expect(refused.contains("[proxy] password"), "the hint names where the password goes: \(refused)")
    }

    @Test("an empty fleet: the gateway provisions itself and 200 leaves over two hubs (two connections), delivers; a restart reuses the assignments; a deleted leaf is provisioned again; a refused identity leaves the others unaffected")
    func zeroTouchFleet() async throws {
        let fleet = try await Fleet.start()
        defer { Task { await fleet.stop() } }
        #expect(try await fleet.hubA.core.perform { $0.listDevices() }.isEmpty)
        #expect(try await fleet.hubB.core.perform { $0.listDevices() }.isEmpty)
        let leaves: [String] = (0..<200).map { (i: Int) -> String in "leaf-" + String(i).leftPadded(to: 3) }
        // A leaf with a key of its own that no enrollment knows: DPS refuses it; nothing else is held up.
        let (dir, udpPort) = try fleet.gatewayDirectory(
            leaves: leaves, extraSecrets: "[keys]\nstranger = \"\(generateSymmetricKey())\"\n",
            extraLeaves: "\n[[leaf]]\ndevice_id = \"stranger\"\nadapter = \"udp\"\ncredential = \"key\"\n")
        var daemon = try DaemonUnderTest.start(preparedDirectory: dir, udpPort: udpPort)
        defer { daemon.cleanUp() }
        #expect(await daemon.notify.wait(for: "READY=1"), "\(daemon.stderr.suffix(2000))")
        let everyone = Set(leaves + ["gw-provisioned"])
        #expect(await daemon.eventually(seconds: 90) { daemon.devices(in: "ready") == everyone },
                "ready: \(daemon.devices(in: "ready").count) \(daemon.stderr.suffix(2000))")

        // DPS created every identity in one of the two hubs, both hubs got some; one connection per hub.
        let inA = Set(try await fleet.hubA.core.perform { $0.listDevices() }.map(\.deviceId))
        let inB = Set(try await fleet.hubB.core.perform { $0.listDevices() }.map(\.deviceId))
        #expect(inA.union(inB) == everyone && inA.isDisjoint(with: inB))
        #expect(inA.count > 50 && inB.count > 50, "hub-a \(inA.count), hub-b \(inB.count)")
        let status = try daemon.control(["command": "status"])
        let hosts = (status["connections"]?.arrayValue ?? []).compactMap { $0["host"]?.stringValue }.sorted()
        #expect(hosts == ["hub-a.test", "hub-b.test"], "\(status)")
        #expect(try await fleet.hubA.core.perform { $0.connectionCount } == 1)
        #expect(try await fleet.hubB.core.perform { $0.connectionCount } == 1)
        #expect(status["provisioning"]?["identities"]?["assigned"]?.intValue == 201, "\(status)")
        #expect(status["provisioning"]?["identities"]?["refused"]?.intValue == 1, "\(status)")

        // The stranger: a clear error, visible in devices and the log.
        let devices = try daemon.control(["command": "devices"]).arrayValue ?? []
        let stranger = devices.first { $0["device_id"]?.stringValue == "stranger" }
        #expect(stranger?["state"]?.stringValue == "provisioning-refused", "\(String(describing: stranger))")
        #expect(stranger?["last_error"]?.stringValue?.contains("401") == true, "\(String(describing: stranger))")
        #expect(daemon.stderr.contains("stranger: DPS answered 401"), "\(daemon.stderr.suffix(2000))")

        // Readings of every leaf reach the hub it was assigned to.
        for leaf in leaves { daemon.sendUDP(#"{"device":"\#(leaf)","values":{"t":1}}"#) }
        #expect(await daemon.eventually(seconds: 30) {
            let a = ((try? await fleet.hubA.events()) ?? []).map(\.deviceId), b = ((try? await fleet.hubB.events()) ?? []).map(\.deviceId)
            return Set(a) == inA.subtracting(["gw-provisioned"]) && Set(b) == inB.subtracting(["gw-provisioned"])
        }, "\(daemon.stderr.suffix(2000))")
        // fieldgatectl check covers provisioning: the DPS endpoint, the assignments, the gateway's hub and its leaves there.
        let out = dir + "/check.out"
        _ = await blockingSystem("'\(productPath("fieldgatectl"))' check --config '\(dir)/fieldgate.toml' >'\(out)' 2>&1")
        let check = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
        #expect(check.contains("dps") && check.contains("localhost:\(fleet.dpsPort) (id scope"), "\(check)")
        #expect(check.contains("201 of 202 identities assigned (hubs: hub-a.test, hub-b.test)"), "\(check)")
        #expect(check.contains("the hub accepted the credentials of all"), "\(check)")
        let store = try String(contentsOfFile: dir + "/state/provisioning.json", encoding: .utf8)
        #expect(store.contains("\"leaf-199\"") && !store.contains(fleet.group.keys.primaryKey), "keys never go to the store")

        // A restart reuses the stored assignments: DPS hears nothing more from the assigned identities.
        let requestsBefore = fleet.dps.registerRequests
        daemon.signal(SIGTERM)
        #expect(await daemon.waitForExit(seconds: 20) == 0)
        daemon = try daemon.restarted()
        #expect(await daemon.eventually(seconds: 60) { daemon.devices(in: "ready") == everyone }, "\(daemon.stderr.suffix(2000))")
        try await Task.sleep(for: .seconds(1))
        #expect(fleet.dps.registerRequests - requestsBefore <= 1, "only the stranger may have asked again")

        // A leaf deleted from its hub is refused there (404), registers again, and DPS creates it anew.
        let victim = "leaf-007"
        let victimHub = inA.contains(victim) ? fleet.hubA : fleet.hubB
        let assignmentsBefore = fleet.dps.assignmentsMade
        try await victimHub.core.perform { try $0.deleteDevice(victim) }
        let victimBack = await daemon.eventually(seconds: 60) {
            let assigned: Bool = fleet.dps.assignmentsMade > assignmentsBefore
            return assigned && daemon.devices(in: "ready").contains(victim)
        }
        #expect(victimBack, "\(daemon.stderr.suffix(2000))")
        #expect(try await victimHub.core.perform { $0.listDevices() }.contains { $0.deviceId == victim })
        #expect(daemon.stderr.contains("registering 1 identities again (refused by their hub)"))
        daemon.sendUDP(#"{"device":"\#(victim)","values":{"after":"reprovisioning"}}"#)
        #expect(await daemon.eventually(seconds: 20) {
            ((try? await victimHub.events()) ?? []).contains { $0.deviceId == victim && $0.body?.contains("reprovisioning") == true }
        })
    }

    @Test("DPS with X.509 attestation: the gateway registers with its certificate (no key), lands on its hub as a thumbprint device and runs on a connection of its own; the leaves come through the group key, one added by a reload too; a certificate DPS does not know is refused")
    func gatewayProvisionedWithItsCertificate() async throws {
        let fleet = try await Fleet.start()
        defer { Task { await fleet.stop() } }
        let certificate = try LocalCertificates.createDeviceCertificate(in: fleet.directory + "/gw", deviceID: "gw-x509")
        fleet.dps.put(IndividualEnrollment(registrationId: "gw-x509", certificatePEM: try String(contentsOfFile: certificate.certificate, encoding: .utf8)))
        // A second gateway's certificate that no enrollment names.
        let stranger = try LocalCertificates.createDeviceCertificate(in: fleet.directory + "/stranger", deviceID: "gw-x509")
        let (dir, udpPort) = try fleet.gatewayDirectory(leaves: ["leaf-a", "leaf-b", "leaf-c"], gateway: """
            device_id = "gw-x509"
            credential = "x509"
            certificate_file = "\(certificate.certificate)"
            key_file = "\(certificate.key)"
            """)
        let daemon = try DaemonUnderTest.start(preparedDirectory: dir, udpPort: udpPort)
        defer { daemon.cleanUp() }
        #expect(await daemon.eventually(seconds: 60) { daemon.devices(in: "ready") == ["gw-x509", "leaf-a", "leaf-b", "leaf-c"] },
                "\(daemon.stderr.suffix(2000))")
        let hubs = [fleet.hubA, fleet.hubB]
        var gatewayRecord: DeviceRecord?
        for hub in hubs {
            let found = try await hub.core.perform { $0.listDevices() }.first { $0.deviceId == "gw-x509" }
            if let found { gatewayRecord = found }
        }
        #expect(gatewayRecord?.authentication.type == "selfSigned")
        #expect(gatewayRecord?.authentication.x509Thumbprint?.primaryThumbprint == certificate.thumbprintSHA1)
        // One connection per hub that got leaves, and the gateway's own.
        var hubsWithLeaves = 0
        for hub in hubs where try await hub.core.perform({ $0.listDevices() }).contains(where: { $0.deviceId.hasPrefix("leaf-") }) { hubsWithLeaves += 1 }
        let status = try daemon.control(["command": "status"])
        #expect((status["connections"]?.arrayValue ?? []).count == hubsWithLeaves + 1, "\(status)")

        // A leaf added by a reload registers and joins its hub's connection.
        try (["leaf-a", "leaf-b", "leaf-c", "leaf-d"].map { "[[leaf]]\ndevice_id = \"\($0)\"\nadapter = \"udp\"\n" }.joined(separator: "\n"))
            .write(toFile: dir + "/devices.d/leaves.toml", atomically: true, encoding: .utf8)
        let t0 = MonotonicClock.milliseconds()
        daemon.signal(SIGHUP)
        #expect(await daemon.notify.wait(for: "READY=1", since: t0, seconds: 10))
        #expect(await daemon.eventually(seconds: 30) { daemon.devices(in: "ready").contains("leaf-d") }, "\(daemon.stderr.suffix(2000))")

        // The same id with a certificate DPS was not given: 401 from DPS, in words.
        daemon.signal(SIGTERM)
        #expect(await daemon.waitForExit(seconds: 20) == 0)
        try String(contentsOfFile: dir + "/fieldgate.toml", encoding: .utf8)
            .replacing(certificate.certificate, with: stranger.certificate).replacing(certificate.key, with: stranger.key)
            .write(toFile: dir + "/fieldgate.toml", atomically: true, encoding: .utf8)
        let again = try daemon.restarted()
        defer { again.cleanUp() }
        #expect(await again.eventually(seconds: 30) { again.devices(in: "provisioning-refused").contains("gw-x509") }, "\(again.stderr.suffix(2000))")
        #expect(again.stderr.contains("gw-x509: DPS answered 401"), "\(again.stderr.suffix(2000))")
        #expect(await again.eventually { again.devices(in: "ready") == ["leaf-a", "leaf-b", "leaf-c", "leaf-d"] })
    }
}
