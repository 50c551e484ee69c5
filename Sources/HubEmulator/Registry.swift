import FieldgateCore
import IoTHub

/// A device identity in the registry, shaped like the IoT Hub service REST API's Device.
public struct DeviceRecord: Codable, Sendable, Equatable {
    public struct SymmetricKey: Codable, Sendable, Equatable {
        public var primaryKey: String
        public var secondaryKey: String
    }
    public struct Authentication: Codable, Sendable, Equatable {
        public var type: String = "sas"
        public var symmetricKey: SymmetricKey
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

/// Devices and policies. Pure value; the hub core owns one.
public struct Registry: Codable, Sendable {
    public var devices: [String: DeviceRecord] = [:]
    public var policies: [String: PolicyRecord] = [:]

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
        record.etag = String(UInt32.random(in: 1...UInt32.max), radix: 36)
        devices[id] = record
        return record
    }
}
