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

/// The gateway's own identity over X.509 (issue 24): TLS client authentication on AMQPS against fieldgate-hub, by
/// thumbprint and by a chain to a verified CA, on a connection of its own beside the leaves' multiplexed one.
@Suite("fieldgated gateway identity over X.509", .serialized, .timeLimit(.minutes(3)))
struct X509GatewayTests {
    @Test("thumbprint, then CA-signed: the gateway answers methods and reports its twin over its own connection; a certificate the hub does not know is refused with a clear reason while the leaf carries on")
    func gatewayOverX509() async throws {
        let hub = try await TestHub.start()
        defer { Task { await hub.stop() } }
        let certificates = hub.directory + "/device-certs"
        let selfSigned = try LocalCertificates.createDeviceCertificate(in: certificates + "/self", deviceID: "gw-x509")
        try await hub.core.perform { try $0.upsertX509Device(id: "gw-x509", status: nil, .selfSigned(primaryThumbprint: selfSigned.thumbprintSHA1, secondaryThumbprint: nil)) }

        let prepared = try await DaemonUnderTest.start(hub: hub, leaves: ["x509-leaf"], prepareOnly: true)
        prepared.notify.stop()
        let main = prepared.directory + "/fieldgate.toml"
        let original = try String(contentsOfFile: main, encoding: .utf8)
        func useCertificate(_ c: LocalCertificates.DeviceCertificate) throws {
            try original.replacing("device_id = \"gw-under-test\"\n", with: """
                device_id = "gw-x509"
                credential = "x509"
                certificate_file = "\(c.certificate)"
                key_file = "\(c.key)"

                """).write(toFile: main, atomically: true, encoding: .utf8)
        }
        try useCertificate(selfSigned)
        var daemon = try DaemonUnderTest.start(preparedDirectory: prepared.directory, udpPort: prepared.udpPort)
        defer { daemon.cleanUp() }
        #expect(await daemon.notify.wait(for: "READY=1"), "\(daemon.stderr.suffix(2000))")
        #expect(await daemon.eventually { daemon.devices(in: "ready") == ["gw-x509", "x509-leaf"] }, "\(daemon.stderr.suffix(2000))")
        // The certificate identity has a connection of its own: two in all.
        #expect(try await hub.core.perform { $0.connectionCount } == 2)

        let service = HubServiceClient(host: "127.0.0.1", port: hub.running.httpPort, authorization: nil)
        func invokeStatus() async throws -> JSONValue? {
            try await service.request("POST", "/twins/gw-x509/methods", body: ["methodName": "status", "payload": nil, "responseTimeoutInSeconds": 10]).json
        }
        let answer = try await invokeStatus()
        #expect(answer?["status"] == 200, "\(String(describing: answer))")
        #expect(await daemon.eventually(seconds: 20) {
            let twin = try? await service.request("GET", "/twins/gw-x509").json
            return twin?["properties"]?["reported"]?["gateway"]?["version"] != nil
        }, "no reported health in the gateway's twin")

        // CA-signed: the hub's CA (uploaded as verified) issues the gateway's certificate, CN = the device id.
        daemon.signal(SIGTERM)
        #expect(await daemon.waitForExit(seconds: 20) == 0)
        let caSigned = try LocalCertificates.createDeviceCertificate(in: certificates + "/ca", deviceID: "gw-x509", issuer: hub.certificates)
        let caPEM = try String(contentsOfFile: hub.certificates.caCertificate, encoding: .utf8)
        _ = try await hub.core.perform { try $0.putCACertificate(name: "fleet-ca", pem: caPEM, verified: true) }
        try await hub.core.perform { try $0.upsertX509Device(id: "gw-x509", status: nil, .certificateAuthority) }
        try useCertificate(caSigned)
        daemon = try daemon.restarted()
        #expect(await daemon.eventually { daemon.devices(in: "ready") == ["gw-x509", "x509-leaf"] }, "\(daemon.stderr.suffix(2000))")
        #expect(try await invokeStatus()?["status"] == 200)

        // A registration the certificate does not match: refused with the hub's reason; the leaf is unaffected.
        try await hub.core.perform {
            try $0.upsertX509Device(id: "gw-x509", status: nil, .selfSigned(primaryThumbprint: String(repeating: "AB", count: 20), secondaryThumbprint: nil))
        }
        #expect(await daemon.eventually(seconds: 20) { daemon.devices(in: "refused").contains("gw-x509") }, "\(daemon.stderr.suffix(2000))")
        let gateway = (try daemon.control(["command": "devices"]).arrayValue ?? []).first { $0["device_id"]?.stringValue == "gw-x509" }
        #expect(gateway?["last_error"]?.stringValue?.contains("thumbprint matches neither") == true, "\(String(describing: gateway))")
        #expect(daemon.devices(in: "ready") == ["x509-leaf"])
        daemon.sendUDP(#"{"device":"x509-leaf","values":{"t":7}}"#)
        #expect(await daemon.eventually { ((try? await hub.events()) ?? []).contains { $0.deviceId == "x509-leaf" } })
    }
}
