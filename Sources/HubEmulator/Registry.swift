import FieldgateCore
import IoTHub

/// A device identity in the registry, shaped like the IoT Hub service REST API's Device.
public struct DeviceRecord: Codable, Sendable, Equatable {
    public struct SymmetricKey: Codable, Sendable, Equatable {
        public var primaryKey: String
        public var secondaryKey: String
    }
    public struct X509Thumbprint: Codable, Sendable, Equatable {
        public var primaryThumbprint: String?
        public var secondaryThumbprint: String?
    }
    public struct Authentication: Codable, Sendable, Equatable {
        /// `sas`, `selfSigned` (X.509 by thumbprint) or `certificateAuthority` (X.509 chained to a verified CA).
        public var type: String = "sas"
        public var symmetricKey: SymmetricKey
        public var x509Thumbprint: X509Thumbprint?

        public var isX509: Bool { type == "selfSigned" || type == "certificateAuthority" }
    }

    public var deviceId: String
    public var generationId: String
    public var etag: String
    /// "enabled" or "disabled".
    public var status: String
    public var statusReason: String?
    public var authentication: Authentication
    public var connectionState: String = "Disconnected"
    public var lastActivityTime: String?
    public var cloudToDeviceMessageCount: Int = 0

    public var isEnabled: Bool { status == "enabled" }
}

/// A shared access policy with its rights (RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect).
public struct PolicyRecord: Codable, Sendable, Equatable {
    public var keyName: String
    public var primaryKey: String
    public var secondaryKey: String
    public var rights: [String]

    public func grants(_ right: String) -> Bool { rights.contains(right) }
}

/// A CA certificate of the hub (IoT Hub's Certificates): devices of type `certificateAuthority` must chain to a
/// verified one.
public struct CACertificateRecord: Codable, Sendable, Equatable {
    public var name: String
    public var pem: String
    public var isVerified: Bool
}

/// How an X.509 device authenticates: by the thumbprints of its own certificate, or by a chain to a verified CA.
public enum X509Registration: Sendable, Equatable {
    case selfSigned(primaryThumbprint: String, secondaryThumbprint: String?)
    case certificateAuthority
}

/// Devices and policies. Pure value; the hub core owns one.
public struct Registry: Codable, Sendable {
    public var devices: [String: DeviceRecord] = [:]
    public var policies: [String: PolicyRecord] = [:]
    public var certificates: [String: CACertificateRecord]? = [:]

    /// The built-in policies of a new hub.
    public static func withDefaultPolicies() -> Registry {
        var r = Registry()
        let defaults: [(String, [String])] = [
            ("iothubowner", ["RegistryRead", "RegistryWrite", "ServiceConnect", "DeviceConnect"]),
            ("service", ["ServiceConnect"]),
            ("device", ["DeviceConnect"]),
            ("registryRead", ["RegistryRead"]),
            ("registryReadWrite", ["RegistryRead", "RegistryWrite"]),
        ]
        for (name, rights) in defaults {
            r.policies[name] = PolicyRecord(keyName: name, primaryKey: generateSymmetricKey(), secondaryKey: generateSymmetricKey(), rights: rights)
        }
        return r
    }

    /// Device ids: ASCII alphanumerics plus `- . + % _ # * ? ! ( ) , : = @ $ '`, at most 128 characters (as IoT Hub,
    /// and as fieldgated's configuration checks them).
    public static func isValidDeviceID(_ id: String) -> Bool {
        let allowed = Set("-.+%_#*?!(),:=@$'".unicodeScalars)
        return !id.isEmpty && id.utf8.count <= 128 && id.unicodeScalars.allSatisfy {
            ($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0))) || allowed.contains($0)
        }
    }

    /// Creates or replaces a device. Keys are generated when absent.
    @discardableResult
    public mutating func upsertDevice(id: String, status: String = "enabled", primaryKey: String? = nil, secondaryKey: String? = nil) throws(HubError) -> DeviceRecord {
        guard Self.isValidDeviceID(id) else { throw HubError(.badRequest, "'\(id)' is not a valid device id") }
        guard status == "enabled" || status == "disabled" else { throw HubError(.badRequest, "status must be enabled or disabled") }
        for key in [primaryKey, secondaryKey].compactMap({ $0 }) where !isValidSymmetricKey(key) {
            throw HubError(.badRequest, "device keys must be base64")
        }
        var record = devices[id] ?? DeviceRecord(
            deviceId: id, generationId: String(UInt64.random(in: 1...UInt64(Int64.max))), etag: "",
            status: status, authentication: .init(symmetricKey: .init(primaryKey: generateSymmetricKey(), secondaryKey: generateSymmetricKey())))
        record.status = status
        if let primaryKey { record.authentication.symmetricKey.primaryKey = primaryKey }
        if let secondaryKey { record.authentication.symmetricKey.secondaryKey = secondaryKey }
        if record.authentication.isX509 {
            // A device given keys again becomes a SAS device.
            record.authentication.type = "sas"
            record.authentication.x509Thumbprint = nil
        }
        record.etag = String(UInt32.random(in: 1...UInt32.max), radix: 36)
        devices[id] = record
        return record
    }

    /// Creates or replaces an X.509 device. Thumbprints are SHA-1 (40 hex digits) or SHA-256 (64) of the DER.
    @discardableResult
    public mutating func upsertX509Device(id: String, status: String = "enabled", _ registration: X509Registration) throws(HubError) -> DeviceRecord {
        guard Self.isValidDeviceID(id) else { throw HubError(.badRequest, "'\(id)' is not a valid device id") }
        guard status == "enabled" || status == "disabled" else { throw HubError(.badRequest, "status must be enabled or disabled") }
        var record = devices[id] ?? DeviceRecord(
            deviceId: id, generationId: String(UInt64.random(in: 1...UInt64(Int64.max))), etag: "", status: status,
            authentication: .init(symmetricKey: .init(primaryKey: "", secondaryKey: "")))
        record.status = status
        record.authentication.symmetricKey = .init(primaryKey: "", secondaryKey: "")
        switch registration {
        case .selfSigned(let primary, let secondary):
            for t in [primary, secondary].compactMap({ $0 }) where !Self.isThumbprint(t) {
                throw HubError(.badRequest, "thumbprint \(t) must be 40 (SHA-1) or 64 (SHA-256) hex digits")
            }
            record.authentication.type = "selfSigned"
            record.authentication.x509Thumbprint = .init(primaryThumbprint: primary.uppercased(), secondaryThumbprint: secondary?.uppercased())
        case .certificateAuthority:
            record.authentication.type = "certificateAuthority"
            record.authentication.x509Thumbprint = .init(primaryThumbprint: nil, secondaryThumbprint: nil)
        }
        record.etag = String(UInt32.random(in: 1...UInt32.max), radix: 36)
        devices[id] = record
        return record
    }

    static func isThumbprint(_ t: String) -> Bool {
        (t.count == 40 || t.count == 64) && t.allSatisfy(\.isHexDigit)
    }
}
