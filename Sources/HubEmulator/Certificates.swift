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
    }

    /// Writes `ca.pem`, `ca.key`, `server.pem`, `server.key` into `directory`. An existing CA there is reused so
    /// that clients that already trust it keep working.
    public static func create(in directory: String, dnsNames: [String], validDays: Int = 825) throws -> Paths {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let paths = Paths(caCertificate: directory + "/ca.pem", caKey: directory + "/ca.key",
                          serverCertificate: directory + "/server.pem", serverKey: directory + "/server.key")
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

    private static func write(_ text: String, to path: String, mode: Int) throws {
        try Data(text.utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
    }
}
