import Crypto
import SwiftASN1
import X509

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Whether a TLS client certificate proves an X.509 device, as IoT Hub decides it (docs/hub-fidelity.md, X.509):
/// - `selfSigned`: the SHA-1 or SHA-256 thumbprint of the presented certificate's DER is the device's primary or
///   secondary thumbprint;
/// - `certificateAuthority`: the certificate's subject CN is the device id and it chains (through the intermediates it
///   presented) to a verified CA certificate of the hub, every signature valid.
/// Either way the certificate must be within its validity period.
enum X509Authentication {
    static func thumbprints(ofDER der: [UInt8]) -> (sha1: String, sha256: String) {
        (Insecure.SHA1.hash(data: der).map { hex($0) }.joined(), SHA256.hash(data: der).map { hex($0) }.joined())
    }

    private static func hex(_ b: UInt8) -> String {
        let digits = Array("0123456789ABCDEF")
        return String([digits[Int(b >> 4)], digits[Int(b & 15)]])
    }

    /// nil when `chain` authenticates `device`; otherwise why not, in words for the refusal.
    static func refusal(chain: ClientCertificateChain, device: DeviceRecord, cas: [CACertificateRecord], now: Date) -> String? {
        let leaf: Certificate
        do { leaf = try Certificate(derEncoded: chain.leaf) } catch { return "the client certificate cannot be parsed" }
        guard leaf.notValidBefore <= now, now <= leaf.notValidAfter else { return "the client certificate is outside its validity period" }
        switch device.authentication.type {
        case "selfSigned":
            let (sha1, sha256) = thumbprints(ofDER: chain.leaf)
            let registered = [device.authentication.x509Thumbprint?.primaryThumbprint, device.authentication.x509Thumbprint?.secondaryThumbprint]
                .compactMap { $0?.uppercased() }
            return registered.contains(sha1) || registered.contains(sha256)
                ? nil : "the client certificate's thumbprint matches neither thumbprint of device \(device.deviceId)"
        case "certificateAuthority":
            guard commonName(of: leaf) == device.deviceId else {
                return "the client certificate's subject CN must be the device id \(device.deviceId)"
            }
            // Only certificates that may sign others (CA:TRUE) count, so a device's own certificate cannot vouch for a
            // certificate naming another device; each must be within its validity period.
            func signs(_ issuer: Certificate, _ subject: Certificate) -> Bool {
                isAuthority(issuer) && issuer.subject == subject.issuer && issuer.notValidBefore <= now && now <= issuer.notValidAfter
                    && issuer.publicKey.isValidSignature(subject.signature, for: subject)
            }
            let trusted = cas.filter(\.isVerified).compactMap { try? Certificate(pemEncoded: $0.pem) }
            let intermediates = chain.certificates.dropFirst().compactMap { try? Certificate(derEncoded: $0) }
            var current = leaf
            for _ in 0..<5 {
                if trusted.contains(where: { signs($0, current) }) { return nil }
                guard let next = intermediates.first(where: { signs($0, current) }) else { break }
                current = next
            }
            return "the client certificate does not chain to a verified CA certificate of this hub"
        default:
            return "device \(device.deviceId) authenticates with SAS tokens, not a certificate"
        }
    }

    /// The certificate may issue others: basic constraints CA:TRUE.
    static func isAuthority(_ certificate: Certificate) -> Bool {
        if case .isCertificateAuthority? = try? certificate.extensions.basicConstraints { return true }
        return false
    }

    static func commonName(of certificate: Certificate) -> String? {
        for rdn in certificate.subject {
            for attribute in rdn where attribute.type == .RDNAttributeType.commonName {
                return String(attribute.value)
            }
        }
        return nil
    }
}

extension ProvisioningState {
    /// X.509 attestation of a register request (no token): the certificate presented at TLS must have the registration
    /// id as its subject CN and be the individual enrollment's certificate, or be signed by an enrollment group's
    /// signing certificate. Returns the enrollment and the certificate's SHA-1 thumbprint (the device's in the hub).
    func authenticateCertificate(registrationID: String, leafDER: [UInt8], now: Date)
        -> Result<(group: EnrollmentGroup?, enrollment: IndividualEnrollment?, thumbprint: String), ProvisioningRefusal>
    {
        let unauthorized = ProvisioningRefusal(status: 401, errorCode: 401002, message: "Unauthorized")
        guard let leaf = try? Certificate(derEncoded: leafDER), leaf.notValidBefore <= now, now <= leaf.notValidAfter,
              X509Authentication.commonName(of: leaf) == registrationID else { return .failure(unauthorized) }
        let thumbprint = X509Authentication.thumbprints(ofDER: leafDER).sha1
        if let e = enrollments[registrationID], let pem = e.certificatePEM {
            guard let enrolled = try? Certificate(pemEncoded: pem), enrolled == leaf else { return .failure(unauthorized) }
            return .success((nil, e, thumbprint))
        }
        for g in enrollmentGroups.values.sorted(by: { $0.enrollmentGroupId < $1.enrollmentGroupId }) {
            guard let pem = g.signingCertificatePEM, let ca = try? Certificate(pemEncoded: pem) else { continue }
            if X509Authentication.isAuthority(ca) && ca.subject == leaf.issuer && ca.notValidBefore <= now && now <= ca.notValidAfter
                && ca.publicKey.isValidSignature(leaf.signature, for: leaf) {
                return .success((g, nil, thumbprint))
            }
        }
        return .failure(unauthorized)
    }
}
