import FieldgateCore
import HubEmulator
import HubTestSupport
import HubTunnel
import IoTHub
import Logging
import ProtonAMQP
import Provisioning
import Synchronization
import Testing

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// fieldgate-hub's Device Provisioning Service over real HTTPS (libcurl), driven by fieldgated's registration state
/// machine: the register/operation flow, its refusals and status codes, enrollment management and its CLI.
@Suite("fieldgate-hub DPS", .serialized, .timeLimit(.minutes(2)))
struct ProvisioningServiceTests {
    struct Service {
        let hub: TestHub
        let dps: ProvisioningServer
        let port: Int
        var https: HTTPSSettings {
            var s = HTTPSSettings()
            s.caFile = hub.certificates.caCertificate
            s.proxy = .direct
            s.timeoutMilliseconds = 10_000
            return s
        }
        var settings: RegistrationFlow.Settings {
            var s = RegistrationFlow.Settings(endpoint: "localhost:\(port)", idScope: dps.configuration.idScope)
            s.maxRetries = 1
            return s
        }

        static func start(open: Bool = true) async throws -> Service {
            let hub = try await TestHub.start()
            var c = ProvisioningServerConfiguration(tls: AMQPServerTLS(certificateFile: hub.certificates.serverCertificate, privateKeyFile: hub.certificates.serverKey))
            c.port = 0
            c.retryAfterSeconds = 1
            c.openServiceAPI = open
            var logger = Logger(label: "test.dps")
            logger.logLevel = .warning
            let dps = ProvisioningServer(configuration: c, linkedHubs: [hub.core], logger: logger)
            return Service(hub: hub, dps: dps, port: try await dps.start())
        }

        func stop() async {
            await dps.stop()
            await hub.stop()
        }

        /// Runs the registration as fieldgated does: every request the flow asks for, over HTTPS, honouring its waits.
        /// Returns the outcome, the statuses seen and the last response's body.
        func register(_ id: String, key: String?, settings: RegistrationFlow.Settings? = nil, https: HTTPSSettings? = nil,
                      payload: JSONValue? = nil) async -> (RegistrationFlow.Action, [Int], JSONValue?) {
            var flow = RegistrationFlow(settings: settings ?? self.settings, registrationID: id, key: key, payload: payload)
            var action = flow.start(nowSeconds: WallClock.nowMilliseconds() / 1000)
            var statuses: [Int] = []
            var lastBody: JSONValue?
            while case .send(let request, let after) = action {
                try? await Task.sleep(for: .milliseconds(after))
                let s = https ?? self.https
                // Off the cooperative pool: the DPS answering it runs on that pool, in this process.
                let r = await offCooperativePool { HTTPSClient.perform(request.method, request.url, headers: request.headers.sorted { $0.key < $1.key }, body: request.body, settings: s) }
                switch r {
                case .success(let response):
                    statuses.append(response.status)
                    lastBody = response.json
                    action = flow.received(status: response.status, body: response.json, retryAfterSeconds: response.retryAfterSeconds,
                                           nowSeconds: WallClock.nowMilliseconds() / 1000)
                case .failure(let e):
                    statuses.append(0)
                    action = flow.received(status: 0, body: nil, retryAfterSeconds: nil, error: e.message, nowSeconds: WallClock.nowMilliseconds() / 1000)
                }
            }
            return (action, statuses, lastBody)
        }
    }

    @Test("register → 202 assigning with Retry-After → operation assigned; the device exists in the hub with the derived keys; refusals: wrong key 401, unknown id scope 401, disabled enrollment, unknown operation 404, invalid registration id 400")
    func registrationFlow() async throws {
        let s = try await Service.start()
        defer { Task { await s.stop() } }
        let group = EnrollmentGroup(enrollmentGroupId: "fleet")
        s.dps.put(group)
        let key = try deriveDeviceKey(groupKey: group.keys.primaryKey, registrationID: "sensor-1")
        let started = MonotonicClock.milliseconds()
        let (outcome, statuses, _) = await s.register("sensor-1", key: key)
        #expect(outcome == .assigned(Assignment(hub: s.hub.hostName, deviceID: "sensor-1")))
        #expect(statuses == [202, 200], "\(statuses)")
        #expect(MonotonicClock.milliseconds() - started >= 900, "the flow waited the Retry-After before asking")
        let record = try await s.hub.core.perform { try $0.device("sensor-1") }
        #expect(record.authentication.symmetricKey.primaryKey == key)
        #expect(s.dps.snapshot.registrations["sensor-1"]?.substatus == "initialAssignment")

        // Registering again keeps the hub and says so.
        let (again, _, _) = await s.register("sensor-1", key: key)
        #expect(again == .assigned(Assignment(hub: s.hub.hostName, deviceID: "sensor-1")))
        #expect(s.dps.snapshot.registrations["sensor-1"]?.substatus == "reprovisionedToInitialAssignment")

        // The secondary group key works too.
        let secondary = try deriveDeviceKey(groupKey: group.keys.secondaryKey, registrationID: "sensor-2")
        #expect(await s.register("sensor-2", key: secondary).0 == .assigned(Assignment(hub: s.hub.hostName, deviceID: "sensor-2")))

        // Refusals.
        func refused(_ action: RegistrationFlow.Action) -> String? {
            if case .failed(let f) = action, f.refused { return f.message }
            return nil
        }
        let (wrongKey, wrongStatuses, _) = await s.register("sensor-3", key: generateSymmetricKey())
        #expect(refused(wrongKey)?.contains("401 401002") == true, "\(wrongKey)")
        #expect(wrongStatuses == [401])
        var otherScope = s.settings
        otherScope.idScope = "0ne00NOPE00"
        #expect(refused(await s.register("sensor-1", key: key, settings: otherScope).0) != nil)
        s.dps.put(IndividualEnrollment(registrationId: "sleeper", keys: SymmetricKeyPair(primaryKey: key), enabled: false))
        let (disabled, _, _) = await s.register("sleeper", key: key)
        #expect(refused(disabled)?.contains("disabled") == true, "\(disabled)")
        #expect(try await s.hub.core.perform { $0.listDevices() }.allSatisfy { $0.deviceId != "sleeper" }, "no device for a disabled enrollment")
        let invalid = await s.register("Upper-Case", key: key)
        #expect(invalid.1 == [400])

        let token = try SASToken.generate(resourceURI: "\(s.dps.configuration.idScope)/registrations/sensor-1", key: key,
                                          expiry: WallClock.nowMilliseconds() / 1000 + 60, keyName: "registration")
        let https = s.https
        let unknown = await offCooperativePool {
            HTTPSClient.perform("GET", "https://localhost:\(s.port)/\(s.dps.configuration.idScope)/registrations/sensor-1/operations/nope?api-version=2021-06-01",
                                headers: [("Authorization", token)], settings: https)
        }
        #expect((try? unknown.get().status) == 404)
        #expect((try? unknown.get().json?["errorCode"]?.intValue) == 404203)
    }

    @Test("X.509 attestation: an individual enrollment's certificate, a group's signing CA; a certificate no enrollment names is refused")
    func x509Attestation() async throws {
        let s = try await Service.start()
        defer { Task { await s.stop() } }
        let dir = s.hub.directory + "/dps-x509"
        let own = try LocalCertificates.createDeviceCertificate(in: dir + "/own", deviceID: "gw-1")
        s.dps.put(IndividualEnrollment(registrationId: "gw-1", certificatePEM: try String(contentsOfFile: own.certificate, encoding: .utf8)))
        let issued = try LocalCertificates.createDeviceCertificate(in: dir + "/issued", deviceID: "gw-2", issuer: s.hub.certificates)
        s.dps.put(EnrollmentGroup(enrollmentGroupId: "x509-fleet", signingCertificatePEM: try String(contentsOfFile: s.hub.certificates.caCertificate, encoding: .utf8)))
        let stray = try LocalCertificates.createDeviceCertificate(in: dir + "/stray", deviceID: "gw-3")

        func withCertificate(_ c: LocalCertificates.DeviceCertificate) -> HTTPSSettings {
            var h = s.https
            h.clientCertificateFile = c.certificate
            h.clientKeyFile = c.key
            return h
        }
        #expect(await s.register("gw-1", key: nil, https: withCertificate(own)).0 == .assigned(Assignment(hub: s.hub.hostName, deviceID: "gw-1")))
        #expect(await s.register("gw-2", key: nil, https: withCertificate(issued)).0 == .assigned(Assignment(hub: s.hub.hostName, deviceID: "gw-2")))
        let d1 = try await s.hub.core.perform { try $0.device("gw-1") }
        #expect(d1.authentication.type == "selfSigned" && d1.authentication.x509Thumbprint?.primaryThumbprint == own.thumbprintSHA1)
        let (strayOutcome, strayStatuses, _) = await s.register("gw-3", key: nil, https: withCertificate(stray))
        #expect(strayStatuses == [401], "\(strayOutcome)")
        // A certificate whose CN is not the registration id.
        #expect(await s.register("gw-4", key: nil, https: withCertificate(own)).1 == [401])
    }

    @Test("enrollment management through fieldgate-hub dps: groups, enrollments, registrations; refusals in words")
    func cli() async throws {
        let s = try await Service.start()
        defer { Task { await s.stop() } }
        let common = "--url https://localhost:\(s.port) --ca-file \(s.hub.certificates.caCertificate) --state-dir /nonexistent"
        let (status, out) = await runCLI("dps group fleet \(common)")
        #expect(status == 0, "\(out)")
        #expect(out.contains("\"enrollmentGroupId\"") && out.contains("primaryKey"), "\(out)")
        #expect(s.dps.snapshot.enrollmentGroups["fleet"] != nil)
        let key = s.dps.snapshot.enrollmentGroups["fleet"]!.keys.primaryKey
        let derived = try deriveDeviceKey(groupKey: key, registrationID: "cli-dev")
        #expect(await s.register("cli-dev", key: derived).0 == .assigned(Assignment(hub: s.hub.hostName, deviceID: "cli-dev")))
        let (shown, registration) = await runCLI("dps show registration cli-dev \(common)")
        #expect(shown == 0 && registration.contains("\"assignedHub\"") && registration.contains("\"\(s.hub.hostName)\""), "\(registration)")
        let (bad, badOut) = await runCLI("dps group other --hub hub-z.example \(common)")
        #expect(bad != 0 && badOut.contains("hub-z.example is not a linked hub"), "\(badOut)")
        let (enrolled, _) = await runCLI("dps enrollment solo --primary-key \(generateSymmetricKey()) \(common)")
        #expect(enrolled == 0 && s.dps.snapshot.enrollments["solo"] != nil)
        #expect(await runCLI("dps delete enrollment solo \(common)").0 == 0)
        #expect(s.dps.snapshot.enrollments["solo"] == nil)
        let (missing, missingOut) = await runCLI("dps show group nope \(common)")
        #expect(missing != 0 && missingOut.contains("HTTP 404"), "\(missingOut)")
    }

    @Test("registration through an HTTP proxy (tinyproxy, Basic authentication) with a custom payload, which DPS returns with the assignment")
    func throughTheProxy() async throws {
        let proxy = try TestProxy.start()
        defer { proxy.stop() }
        let s = try await Service.start()
        defer { Task { await s.stop() } }
        let group = EnrollmentGroup(enrollmentGroupId: "fleet")
        s.dps.put(group)
        var https = s.https
        https.proxy = .url(proxy.url, user: TestProxy.user, password: TestProxy.password)
        let (action, _, lastBody) = await s.register("proxied-1", key: try deriveDeviceKey(groupKey: group.keys.primaryKey, registrationID: "proxied-1"),
                                                     https: https, payload: ["site": "north"])
        #expect(action == .assigned(Assignment(hub: s.hub.hostName, deviceID: "proxied-1")))
        #expect(lastBody?["registrationState"]?["payload"]?["site"] == "north", "\(String(describing: lastBody))")
        #expect(proxy.log().contains("CONNECT localhost:\(s.port)"), "through the proxy: \(proxy.log())")
    }

    final class Collected: Sendable {
        let assignments = Mutex<[String: Assignment]>([:])
        func add(_ fresh: [String: Assignment]) { assignments.withLock { $0.merge(fresh) { _, new in new } } }
        var value: [String: Assignment] { assignments.withLock { $0 } }
    }

    @Test("fieldgated's provisioner: a key DPS refuses, fixed by a reload, registers at once with the new key; the assignment is stored and reused by the next start without asking DPS")
    func provisionerTakesAFixedKey() async throws {
        let s = try await Service.start()
        defer { Task { await s.stop() } }
        let group = EnrollmentGroup(enrollmentGroupId: "fleet")
        s.dps.put(group)
        let right = try deriveDeviceKey(groupKey: group.keys.primaryKey, registrationID: "fixme")
        var c = ProvisioningConfiguration(idScope: s.dps.configuration.idScope, storePath: s.hub.directory + "/provisioning.json")
        c.endpoint = "localhost:\(s.port)"
        c.https = s.https
        c.registrationsPerSecond = 100
        var logger = Logger(label: "test.provisioner")
        logger.logLevel = .critical
        let collected = Collected()
        let provisioner = Provisioner(configuration: c, logger: logger) { collected.add($0) }
        provisioner.set(identities: [ProvisioningIdentity(registrationID: "fixme", key: generateSymmetricKey())])
        provisioner.start()
        func eventually(_ condition: () -> Bool) async -> Bool {
            for _ in 0..<150 { if condition() { return true }; try? await Task.sleep(for: .milliseconds(100)) }
            return false
        }
        #expect(await eventually { provisioner.status["fixme"]?.phase == .refused })
        #expect(provisioner.status["fixme"]?.lastError?.contains("401") == true)
        // The refusal's back-off is a minute; the fixed key does not wait for it.
        provisioner.set(identities: [ProvisioningIdentity(registrationID: "fixme", key: right)])
        #expect(await eventually { collected.value["fixme"] != nil }, "\(provisioner.status)")
        #expect(provisioner.assignments["fixme"] == Assignment(hub: s.hub.hostName, deviceID: "fixme"))
        await provisioner.stop()

        let requests = s.dps.registerRequests
        let next = Provisioner(configuration: c, logger: logger) { _ in }
        #expect(next.set(identities: [ProvisioningIdentity(registrationID: "fixme", key: right)])["fixme"] == Assignment(hub: s.hub.hostName, deviceID: "fixme"))
        next.start()
        try await Task.sleep(for: .milliseconds(300))
        await next.stop()
        #expect(s.dps.registerRequests == requests, "reused, not registered again")
    }

    @Test("enrollment management needs a provisioningserviceowner token unless the service API is open")
    func serviceAuthorization() async throws {
        let s = try await Service.start(open: false)
        defer { Task { await s.stop() } }
        let url = "https://localhost:\(s.port)/enrollmentGroups/fleet?api-version=2021-10-01"
        let https = s.https
        let anonymous = await offCooperativePool { HTTPSClient.perform("PUT", url, headers: [("Content-Type", "application/json")], body: Array("{}".utf8), settings: https) }
        #expect((try? anonymous.get().status) == 401)
        let token = try SASToken.generate(resourceURI: "localhost", key: s.dps.serviceKey, expiry: WallClock.nowMilliseconds() / 1000 + 60,
                                          keyName: "provisioningserviceowner")
        let signed = await offCooperativePool { HTTPSClient.perform("PUT", url, headers: [("Content-Type", "application/json"), ("Authorization", token)], body: Array("{}".utf8), settings: https) }
        #expect((try? signed.get().status) == 200)
    }
}
