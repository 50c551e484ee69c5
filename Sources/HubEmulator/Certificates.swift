import Crypto
import FieldgateCore
import X509
import SwiftASN1

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Creates a local CA and a server certificate with DNS names, for the hub's TLS (Proton matches DNS names only,
/// never IP SANs: docs/toolchain.md §3).
public enum LocalCertificates {
    public struct Paths: Sendable {
        public var caCertificate: String
        public var caKey: String
        public var serverCertificate: String
        public var serverKey: String

        /// The files of a CA (and its server certificate) in `directory`, as `create` writes them.
        public init(directory: String) {
            caCertificate = directory + "/ca.pem"
            caKey = directory + "/ca.key"
            serverCertificate = directory + "/server.pem"
            serverKey = directory + "/server.key"
        }
    }

    /// Writes `ca.pem`, `ca.key`, `server.pem`, `server.key` into `directory`. An existing CA there is reused so
    /// that clients that already trust it keep working.
    public static func create(in directory: String, dnsNames: [String], validDays: Int = 825) throws -> Paths {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let paths = Paths(directory: directory)
        let now = Date()
        let caKey: P256.Signing.PrivateKey
        let caCert: Certificate
        if FileManager.default.fileExists(atPath: paths.caKey), FileManager.default.fileExists(atPath: paths.caCertificate) {
            caKey = try P256.Signing.PrivateKey(pemRepresentation: String(contentsOfFile: paths.caKey, encoding: .utf8))
            caCert = try Certificate(pemEncoded: String(contentsOfFile: paths.caCertificate, encoding: .utf8))
        } else {
            caKey = P256.Signing.PrivateKey()
            let caName = try DistinguishedName { CommonName("fieldgate-hub local CA") }
            caCert = try Certificate(
                version: .v3, serialNumber: .init(), publicKey: .init(caKey.publicKey),
                notValidBefore: now.addingTimeInterval(-3600), notValidAfter: now.addingTimeInterval(Double(validDays) * 86400 * 4),
                issuer: caName, subject: caName, signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                    Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                    SubjectKeyIdentifier(hash: .init(caKey.publicKey))
                },
                issuerPrivateKey: .init(caKey))
            try write(caKey.pemRepresentation, to: paths.caKey, mode: 0o600)
            try write(try caCert.serializeAsPEM().pemString, to: paths.caCertificate, mode: 0o644)
        }
        let serverKey = P256.Signing.PrivateKey()
        let serverCert = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(serverKey.publicKey),
            notValidBefore: now.addingTimeInterval(-3600), notValidAfter: now.addingTimeInterval(Double(validDays) * 86400),
            issuer: caCert.subject, subject: try DistinguishedName { CommonName(dnsNames.first ?? "localhost") },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true, keyEncipherment: true))
                try ExtendedKeyUsage([.serverAuth])
                SubjectAlternativeNames(dnsNames.map { GeneralName.dnsName($0) })
            },
            issuerPrivateKey: .init(caKey))
        try write(serverKey.pemRepresentation, to: paths.serverKey, mode: 0o600)
        try write(try serverCert.serializeAsPEM().pemString, to: paths.serverCertificate, mode: 0o644)
        return paths
    }

    /// A device's X.509 certificate and key for AMQPS client authentication: self-signed (registered by thumbprint),
    /// or issued by the CA in `issuer` (registered as `certificateAuthority`, with the CA uploaded as verified). The
    /// subject CN is the device id, as IoT Hub requires of CA-signed device certificates.
    public struct DeviceCertificate: Sendable {
        public var certificate: String
        public var key: String
        /// SHA-1 and SHA-256 of the certificate's DER, uppercase hex: what a thumbprint registration names.
        public var thumbprintSHA1: String
        public var thumbprintSHA256: String
    }

    public static func createDeviceCertificate(in directory: String, deviceID: String, issuer: Paths? = nil,
                                               validDays: Int = 365) throws -> DeviceCertificate {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let now = Date()
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName { CommonName(deviceID) }
        let issuerName: DistinguishedName
        let issuerKey: Certificate.PrivateKey
        if let issuer {
            issuerKey = .init(try P256.Signing.PrivateKey(pemRepresentation: String(contentsOfFile: issuer.caKey, encoding: .utf8)))
            issuerName = try Certificate(pemEncoded: String(contentsOfFile: issuer.caCertificate, encoding: .utf8)).subject
        } else {
            issuerKey = .init(key)
            issuerName = subject
        }
        let certificate = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-3600), notValidAfter: now.addingTimeInterval(Double(validDays) * 86400),
            issuer: issuerName, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.clientAuth])
            },
            issuerPrivateKey: issuerKey)
        let certificatePath = directory + "/\(deviceID).pem", keyPath = directory + "/\(deviceID).key"
        try write(key.pemRepresentation, to: keyPath, mode: 0o600)
        try write(try certificate.serializeAsPEM().pemString, to: certificatePath, mode: 0o644)
        var serializer = DER.Serializer()
        try serializer.serialize(certificate)
        let (sha1, sha256) = X509Authentication.thumbprints(ofDER: serializer.serializedBytes)
        return DeviceCertificate(certificate: certificatePath, key: keyPath, thumbprintSHA1: sha1, thumbprintSHA256: sha256)
    }

    private static func write(_ text: String, to path: String, mode: Int) throws {
        try Data(text.utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
    }
}
