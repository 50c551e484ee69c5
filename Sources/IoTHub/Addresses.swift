/// What a device-facing link address names (docs/iothub-protocol.md §4.1, §5.1, §6.1, §7.1).
public enum DeviceEndpoint: String, Sendable {
    case events          // /devices/{d}/messages/events (telemetry, client sender)
    case deviceBound     // /devices/{d}/messages/devicebound (C2D, client receiver)
    case methods         // /devices/{d}/methods/devicebound (request receiver + response sender)
    case twin            // /devices/{d}/twin (request sender + response receiver)
}

/// A parsed device-facing address: the identity and the endpoint.
public struct DeviceAddress: Sendable, Equatable {
    public var deviceID: String
    public var moduleID: String?
    public var endpoint: DeviceEndpoint

    public init(deviceID: String, moduleID: String? = nil, endpoint: DeviceEndpoint) {
        self.deviceID = deviceID
        self.moduleID = moduleID
        self.endpoint = endpoint
    }

    /// Accepts every form the SDKs use: `amqps://{host}[:port]/devices/…`, `/devices/…`, any case in the fixed
    /// segments, URL-encoded ids. Returns nil for anything else.
    public init?(parsing address: String) {
        var path = Substring(address)
        if let scheme = path.firstRange(of: "://") {
            let afterScheme = path[scheme.upperBound...]
            guard let slash = afterScheme.firstIndex(of: "/") else { return nil }
            path = afterScheme[slash...]
        }
        let segments = path.split(separator: "/", omittingEmptySubsequences: false)
        // "", "devices", id, ...
        guard segments.count >= 4, segments[0].isEmpty, segments[1].lowercased() == "devices",
              let device = PercentEncoding.decode(String(segments[2])), !device.isEmpty
        else { return nil }
        var rest = segments[3...].map { $0.lowercased() }
        var module: String?
        if rest.first == "modules" {
            guard rest.count >= 2, let m = PercentEncoding.decode(String(segments[4])), !m.isEmpty else { return nil }
            module = m
            rest.removeFirst(2)
        }
        let endpoint: DeviceEndpoint
        switch rest {
        case ["messages", "events"]: endpoint = .events
        case ["messages", "devicebound"]: endpoint = .deviceBound
        case ["methods", "devicebound"]: endpoint = .methods
        case ["twin"]: endpoint = .twin
        default: return nil
        }
        self.init(deviceID: device, moduleID: module, endpoint: endpoint)
    }

    /// The identity path `/devices/{d}[/modules/{m}]`, unencoded.
    public var identityPath: String {
        moduleID.map { "/devices/\(deviceID)/modules/\($0)" } ?? "/devices/\(deviceID)"
    }

    /// The canonical address `/devices/{urlenc d}/…` as fieldgate sends it.
    public var canonical: String {
        var s = "/devices/\(PercentEncoding.encode(deviceID))"
        if let moduleID { s += "/modules/\(PercentEncoding.encode(moduleID))" }
        switch endpoint {
        case .events: s += "/messages/events"
        case .deviceBound: s += "/messages/devicebound"
        case .methods: s += "/methods/devicebound"
        case .twin: s += "/twin"
        }
        return s
    }
}

/// The AMQP names IoT Hub uses (docs/iothub-protocol.md §3–§7). Keep these exact: SDKs look them up case-sensitively.
public enum IoTHubAMQP {
    public static let cbsAddress = "$cbs"
    public static let tokenTypeServiceBus = "servicebus.windows.net:sastoken"
    public static let tokenTypeAzureDevices = "azure-devices.net:sastoken"
    public static let apiVersion = "2020-09-30"

    // link properties
    public static let clientVersionProperty = "com.microsoft:client-version"
    public static let apiVersionProperty = "com.microsoft:api-version"
    public static let channelCorrelationIDProperty = "com.microsoft:channel-correlation-id"

    // methods
    public static let methodNameProperty = "IoThub-methodname"
    public static let methodStatusProperty = "IoThub-status"

    // C2D annotations
    public static let sequenceNumberAnnotation = "x-opt-sequence-number"
    public static let enqueuedTimeAnnotation = "iothub-enqueuedtime"
    public static let deliveryCountAnnotation = "iothub-deliverycount"
    public static let ackProperty = "iothub-ack"

    // D2C application properties and hub stamps
    public static let creationTimeProperty = "iothub-creation-time-utc"
    public static let connectionDeviceID = "iothub-connection-device-id"
    public static let connectionModuleID = "iothub-connection-module-id"
    public static let connectionAuthMethod = "iothub-connection-auth-method"
    public static let connectionAuthGenerationID = "iothub-connection-auth-generation-id"
    public static let enqueuedTime = "iothub-enqueuedtime"
    public static let messageSource = "iothub-message-source"

    // error conditions
    public static let unauthorizedAccess = "amqp:unauthorized-access"
    public static let notFound = "amqp:not-found"
    public static let notAllowed = "amqp:not-allowed"
    public static let messageSizeExceeded = "amqp:link:message-size-exceeded"
    public static let decodeError = "amqp:decode-error"
    public static let resourceLimitExceeded = "amqp:resource-limit-exceeded"
    public static let throttled = "com.microsoft:device-container-throttled"
    public static let argumentError = "com.microsoft:argument-error"
    public static let linkCreationConflict = "com.microsoft:link-creation-conflict"
    public static let messageLockLost = "com.microsoft:message-lock-lost"
    public static let detachForced = "amqp:link:detach-forced"

    /// Maximum D2C message or batch size (protocol-agnostic), in bytes.
    public static let maxTelemetrySize = 256 * 1024
    /// Maximum C2D message size.
    public static let maxCloudToDeviceSize = 64 * 1024
    /// max-message-size the hub advertises on its attach replies.
    public static let linkMaxMessageSize: UInt64 = 1_048_576
}

/// `HostName=…;DeviceId=…;SharedAccessKey=…` and `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…`.
public struct ConnectionString: Sendable, Equatable {
    public var hostName: String
    public var deviceID: String?
    public var sharedAccessKeyName: String?
    public var sharedAccessKey: String

    public init(hostName: String, deviceID: String? = nil, sharedAccessKeyName: String? = nil, sharedAccessKey: String) {
        self.hostName = hostName
        self.deviceID = deviceID
        self.sharedAccessKeyName = sharedAccessKeyName
        self.sharedAccessKey = sharedAccessKey
    }

    public init(parsing s: String) throws(IoTHubError) {
        var fields: [String: String] = [:]
        for rawPart in s.split(separator: ";") {
            let part = rawPart.drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed()
            guard let eq = part.firstIndex(of: "=") else { continue }
            fields[String(part[..<eq]).lowercased()] = String(part[part.index(after: eq)...])
        }
        guard let host = fields["hostname"], let key = fields["sharedaccesskey"] else {
            throw IoTHubError(.invalidConnectionString, "a connection string needs HostName and SharedAccessKey")
        }
        self.init(hostName: host, deviceID: fields["deviceid"], sharedAccessKeyName: fields["sharedaccesskeyname"], sharedAccessKey: key)
    }

    public var description: String {
        var s = "HostName=\(hostName)"
        if let deviceID { s += ";DeviceId=\(deviceID)" }
        if let sharedAccessKeyName { s += ";SharedAccessKeyName=\(sharedAccessKeyName)" }
        return s + ";SharedAccessKey=\(sharedAccessKey)"
    }
}
