import FieldgateCore
import IoTHub

/// The emulated Device Provisioning Service's records (docs/provisioning.md): enrollments, enrollment groups and the
/// registrations made through them. Pure data and decisions; `ProvisioningServer` serves them over HTTPS and
/// creates the devices in the linked hubs.
public struct ProvisioningState: Codable, Sendable {
    /// The DPS instance's id scope, the first segment of every device request path.
    public var idScope: String
    public var enrollments: [String: IndividualEnrollment] = [:]
    public var enrollmentGroups: [String: EnrollmentGroup] = [:]
    public var registrations: [String: RegistrationRecord] = [:]
    /// The service policy (`provisioningserviceowner`) that signs enrollment management requests.
    public var serviceKey: String = generateSymmetricKey()

    public init(idScope: String) { self.idScope = idScope }
}

/// How identities are spread over the linked hubs, as DPS's allocation policies do.
public enum AllocationPolicy: String, Codable, Sendable, CaseIterable {
    /// An even, stable spread: the same registration always lands on the same hub while the hub list stays.
    case hashed
    /// The first hub of the enrollment's list.
    case `static`
}

public struct SymmetricKeyPair: Codable, Sendable, Equatable {
    public var primaryKey: String
    public var secondaryKey: String
    public init(primaryKey: String? = nil, secondaryKey: String? = nil) {
        self.primaryKey = primaryKey ?? generateSymmetricKey()
        self.secondaryKey = secondaryKey ?? generateSymmetricKey()
    }
}

public struct IndividualEnrollment: Codable, Sendable, Equatable {
    public var registrationId: String
    /// The device id the hub gets; nil = the registration id.
    public var deviceId: String?
    public var keys: SymmetricKeyPair
    /// X.509 attestation: the device's own certificate (PEM); the device presents it at TLS. nil: symmetric keys.
    public var certificatePEM: String?
    public var enabled = true
    public var allocationPolicy: AllocationPolicy = .hashed
    /// Host names of the linked hubs it may go to; nil = every linked hub.
    public var iotHubs: [String]?

    public init(registrationId: String, deviceId: String? = nil, keys: SymmetricKeyPair = SymmetricKeyPair(), certificatePEM: String? = nil,
                enabled: Bool = true, allocationPolicy: AllocationPolicy = .hashed, iotHubs: [String]? = nil) {
        self.registrationId = registrationId
        self.deviceId = deviceId
        self.keys = keys
        self.certificatePEM = certificatePEM
        self.enabled = enabled
        self.allocationPolicy = allocationPolicy
        self.iotHubs = iotHubs
    }
}

public struct EnrollmentGroup: Codable, Sendable, Equatable {
    public var enrollmentGroupId: String
    /// Each device's key is HMAC-SHA256(group key, registration id).
    public var keys: SymmetricKeyPair
    /// X.509 attestation: the signing (CA) certificate (PEM) the devices' certificates chain to, their subject CN the
    /// registration id. nil: symmetric keys.
    public var signingCertificatePEM: String?
    public var enabled = true
    public var allocationPolicy: AllocationPolicy = .hashed
    public var iotHubs: [String]?

    public init(enrollmentGroupId: String, keys: SymmetricKeyPair = SymmetricKeyPair(), signingCertificatePEM: String? = nil,
                enabled: Bool = true, allocationPolicy: AllocationPolicy = .hashed, iotHubs: [String]? = nil) {
        self.enrollmentGroupId = enrollmentGroupId
        self.keys = keys
        self.signingCertificatePEM = signingCertificatePEM
        self.enabled = enabled
        self.allocationPolicy = allocationPolicy
        self.iotHubs = iotHubs
    }
}

public struct RegistrationRecord: Codable, Sendable, Equatable {
    public var registrationId: String
    public var deviceId: String
    public var assignedHub: String
    public var enrollmentGroupId: String?
    public var createdMilliseconds: Int64
    public var lastUpdatedMilliseconds: Int64
    public var substatus: String
    public var etag: String
    public var payload: JSONValue?
}

/// A refusal of a device request, with DPS's error code (HTTP status × 1000 + detail).
public struct ProvisioningRefusal: Error, Sendable, Equatable {
    public var status: Int
    public var errorCode: Int
    public var message: String
}

/// What a valid register request leads to: the hub to create the device in, with its keys.
public struct ProvisioningPlan: Sendable, Equatable {
    public var registrationId: String
    public var deviceId: String
    public var hub: String
    public var keys: SymmetricKeyPair
    public var enrollmentGroupId: String?
    /// The enrollment is disabled: the operation ends `disabled` and no device is created.
    public var disabled: Bool
    /// An X.509 registration: the hub gets the device with this thumbprint (SHA-1 of the certificate it presented).
    public var x509Thumbprint: String?
}

extension ProvisioningState {
    /// Checks a device's register (or operation status) request: its SAS token must be for
    /// `{idScope}/registrations/{registrationId}`, name the key `registration`, be unexpired, and be signed with the
    /// individual enrollment's key or the key a group derives for this registration id. Unknown registrations and bad
    /// signatures get the same 401 DPS answers, so the answer does not tell which enrollments exist.
    public func authenticate(registrationID: String, authorization: String?, nowSeconds: Int64, skewSeconds: Int64)
        -> Result<(keys: SymmetricKeyPair, group: EnrollmentGroup?, enrollment: IndividualEnrollment?), ProvisioningRefusal>
    {
        let unauthorized = ProvisioningRefusal(status: 401, errorCode: 401002, message: "Unauthorized")
        guard let authorization, let token = try? SASToken.parse(authorization) else { return .failure(unauthorized) }
        let expected = "\(idScope)/registrations/\(registrationID)"
        guard token.decodedResource.lowercased() == expected.lowercased(), token.keyName == "registration",
              token.expiry + skewSeconds > nowSeconds else { return .failure(unauthorized) }
        if let e = enrollments[registrationID], e.certificatePEM == nil {
            guard token.isSigned(with: e.keys.primaryKey) || token.isSigned(with: e.keys.secondaryKey) else { return .failure(unauthorized) }
            return .success((e.keys, nil, e))
        }
        for g in enrollmentGroups.values.sorted(by: { $0.enrollmentGroupId < $1.enrollmentGroupId }) where g.signingCertificatePEM == nil {
            guard let primary = try? deriveDeviceKey(groupKey: g.keys.primaryKey, registrationID: registrationID),
                  let secondary = try? deriveDeviceKey(groupKey: g.keys.secondaryKey, registrationID: registrationID) else { continue }
            if token.isSigned(with: primary) || token.isSigned(with: secondary) {
                return .success((SymmetricKeyPair(primaryKey: primary, secondaryKey: secondary), g, nil))
            }
        }
        return .failure(unauthorized)
    }

    /// Where an authenticated registration goes: its earlier hub while that hub is still allowed (DPS keeps an
    /// assignment on re-registration), otherwise by the enrollment's allocation policy over `linkedHubs`.
    public func plan(registrationID: String, keys: SymmetricKeyPair, group: EnrollmentGroup?, enrollment: IndividualEnrollment?,
                     linkedHubs: [String], x509Thumbprint: String? = nil) -> Result<ProvisioningPlan, ProvisioningRefusal> {
        let allowed = (enrollment?.iotHubs ?? group?.iotHubs).map { wanted in linkedHubs.filter { wanted.contains($0) } } ?? linkedHubs
        guard !allowed.isEmpty else {
            return .failure(ProvisioningRefusal(status: 400, errorCode: 400209, message: "No linked IoT hub is allowed for this enrollment"))
        }
        let policy = enrollment?.allocationPolicy ?? group?.allocationPolicy ?? .hashed
        let hub: String
        if let earlier = registrations[registrationID], allowed.contains(earlier.assignedHub) {
            hub = earlier.assignedHub
        } else {
            switch policy {
            case .static: hub = allowed[0]
            case .hashed: hub = allowed[Int(Self.stableHash(registrationID) % UInt64(allowed.count))]
            }
        }
        return .success(ProvisioningPlan(registrationId: registrationID, deviceId: enrollment?.deviceId ?? registrationID, hub: hub,
                                         keys: keys, enrollmentGroupId: group?.enrollmentGroupId,
                                         disabled: !(enrollment?.enabled ?? group?.enabled ?? true), x509Thumbprint: x509Thumbprint))
    }

    /// Records a completed assignment and returns the registration state DPS reports.
    public mutating func recordAssignment(_ plan: ProvisioningPlan, payload: JSONValue?, nowMilliseconds now: Int64) -> RegistrationRecord {
        let earlier = registrations[plan.registrationId]
        let record = RegistrationRecord(
            registrationId: plan.registrationId, deviceId: plan.deviceId, assignedHub: plan.hub, enrollmentGroupId: plan.enrollmentGroupId,
            createdMilliseconds: earlier?.createdMilliseconds ?? now, lastUpdatedMilliseconds: now,
            substatus: earlier == nil ? "initialAssignment" : earlier?.assignedHub == plan.hub ? "reprovisionedToInitialAssignment" : "deviceDataMigrated",
            etag: AMQPUUIDText.random(), payload: payload)
        registrations[plan.registrationId] = record
        return record
    }

    /// FNV-1a: the same on every run and platform (Swift's `hashValue` is seeded per process).
    static func stableHash(_ s: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return h
    }
}

extension RegistrationRecord {
    /// As DPS's `registrationState` (device API) shows it.
    public func json(status: String = "assigned") -> JSONValue {
        var o: [String: JSONValue] = [
            "registrationId": .string(registrationId), "createdDateTimeUtc": .string(WallClock.iso8601(milliseconds: createdMilliseconds)),
            "assignedHub": .string(assignedHub), "deviceId": .string(deviceId), "status": .string(status), "substatus": .string(substatus),
            "lastUpdatedDateTimeUtc": .string(WallClock.iso8601(milliseconds: lastUpdatedMilliseconds)), "etag": .string(etag),
        ]
        if let payload { o["payload"] = payload }
        return .object(o)
    }
}

/// A random identifier in text, for etags and operation ids.
enum AMQPUUIDText {
    static func random() -> String {
        (0..<16).map { _ in String(UInt8.random(in: 0...255), radix: 16).leftPadded(to: 2) }.joined()
    }
}
