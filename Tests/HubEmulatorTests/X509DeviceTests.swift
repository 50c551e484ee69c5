import FieldgateCore
import HubDeviceClient
import HubEmulator
import HubTestSupport
import IoTHub
import ProtonAMQP
import Testing

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// X.509 device authentication on AMQPS as IoT Hub does it (issue 24), with a raw AMQP client: no SASL, no CBS, the
/// client certificate at TLS.
@Suite("fieldgate-hub X.509 devices", .serialized, .timeLimit(.minutes(2)))
struct X509DeviceTests {
    func connect(_ hub: TestHub, _ c: LocalCertificates.DeviceCertificate?) async throws -> DeviceConnection {
        var tls = AMQPClientTLS(trustedCAFile: hub.certificates.caCertificate, peerHostname: "localhost")
        tls.certificateFile = c?.certificate
        tls.privateKeyFile = c?.key
        return try await DeviceConnection.connect(reactor: hub.reactor, host: "127.0.0.1", port: hub.running.amqpsPort!, hostName: hub.hostName, tls: tls)
    }

    func attachRefusal(_ connection: DeviceConnection, _ device: String) async -> String? {
        do { try await connection.attachTelemetry(deviceId: device); return nil } catch { return "\(error)" }
    }

    @Test("thumbprint (primary or secondary, SHA-1 or SHA-256) and CA-signed devices attach without a token; their events say x509; one certificate is one device; wrong certificates, SAS devices and unverified CAs are refused")
    func certificateDevices() async throws {
        try await withHub { hub in
            let dir = hub.directory + "/x509"
            let a = try LocalCertificates.createDeviceCertificate(in: dir + "/a", deviceID: "x509-a")
            let b = try LocalCertificates.createDeviceCertificate(in: dir + "/b", deviceID: "x509-b")
            try await hub.core.perform { core in
                try core.upsertX509Device(id: "x509-a", status: nil, .selfSigned(primaryThumbprint: a.thumbprintSHA1, secondaryThumbprint: nil))
                try core.upsertX509Device(id: "x509-b", status: nil, .selfSigned(primaryThumbprint: String(repeating: "0", count: 40), secondaryThumbprint: b.thumbprintSHA256))
            }
            _ = try await hub.createDevice("sas-device")

            let ca = try await connect(hub, a)
            try await ca.attachTelemetry(deviceId: "x509-a")
            #expect(try await ca.send(jsonMessage(#"{"t":1}"#), deviceId: "x509-a") == .accepted)
            let events = try await hub.events()
            let method = events.last { $0.deviceId == "x509-a" }?.annotations[IoTHubAMQP.connectionAuthMethod] ?? ""
            #expect(method.contains(#""type":"x509""#), "\(method)")
            #expect(await attachRefusal(ca, "x509-b")?.contains("one certificate is one device") == true)
            #expect(await attachRefusal(ca, "sas-device") != nil, "a SAS device needs its token")
            ca.close()

            let cb = try await connect(hub, b)
            try await cb.attachTelemetry(deviceId: "x509-b")  // the secondary, as SHA-256
            cb.close()

            let wrong = try await connect(hub, b)
            #expect(await attachRefusal(wrong, "x509-a")?.contains("thumbprint matches neither") == true)
            wrong.close()

            // CA-signed: the CA must be uploaded and verified, and the certificate's CN must be the device id.
            let issued = try LocalCertificates.createDeviceCertificate(in: dir + "/issued", deviceID: "x509-ca", issuer: hub.certificates)
            try await hub.core.perform { try $0.upsertX509Device(id: "x509-ca", status: nil, .certificateAuthority) }
            let pem = try String(contentsOfFile: hub.certificates.caCertificate, encoding: .utf8)
            _ = try await hub.core.perform { try $0.putCACertificate(name: "lab", pem: pem, verified: false) }
            let unverified = try await connect(hub, issued)
            #expect(await attachRefusal(unverified, "x509-ca")?.contains("verified CA") == true)
            unverified.close()
            _ = try await hub.core.perform { try $0.putCACertificate(name: "lab", pem: pem, verified: true) }
            let verified = try await connect(hub, issued)
            try await verified.attachTelemetry(deviceId: "x509-ca")
            verified.close()
            try await hub.core.perform { try $0.upsertX509Device(id: "x509-other", status: nil, .certificateAuthority) }
            let otherName = try await connect(hub, issued)
            #expect(await attachRefusal(otherName, "x509-other")?.contains("CN must be the device id") == true)
            otherName.close()

            // Without a certificate an X.509 device is refused like any device without a token.
            let none = try await connect(hub, nil)
            #expect(await attachRefusal(none, "x509-a")?.contains("no valid token") == true)
            none.close()
        }
    }

    @Test("with Proton's own TLS (serve --no-client-certificates) SAS devices work and no certificate is asked for")
    func protonTLS() async throws {
        try await withHub(configure: { $0.clientCertificates = false }) { hub in
            let c = try await hub.connectDevice(try await hub.createDevice("sas-1").deviceId, tls: true)
            #expect(try await c.send(jsonMessage(#"{"t":1}"#), deviceId: "sas-1") == .accepted)
            c.close()
            let dir = hub.directory + "/x509"
            let a = try LocalCertificates.createDeviceCertificate(in: dir, deviceID: "x509-a")
            try await hub.core.perform { try $0.upsertX509Device(id: "x509-a", status: nil, .selfSigned(primaryThumbprint: a.thumbprintSHA1, secondaryThumbprint: nil)) }
            let x = try await connect(hub, a)
            #expect(await attachRefusal(x, "x509-a") != nil)
            x.close()
        }
    }
}
