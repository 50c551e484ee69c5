import IoTHub
/// The one error type of the emulator; codes map onto HTTP statuses of the service API.
public struct HubError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable {
        public let httpStatus: Int
        public static let badRequest = Code(httpStatus: 400)
        public static let unauthorized = Code(httpStatus: 401)
        public static let forbidden = Code(httpStatus: 403)
        public static let notFound = Code(httpStatus: 404)
        public static let conflict = Code(httpStatus: 409)
        public static let preconditionFailed = Code(httpStatus: 412)
        public static let tooLarge = Code(httpStatus: 413)
        public static let throttled = Code(httpStatus: 429)
        public static let internalError = Code(httpStatus: 500)
        public static let gatewayTimeout = Code(httpStatus: 504)
    }

    public var code: Code
    public var message: String
    /// IoT Hub's six-digit error code when it is more than the HTTP status × 1000 (403010, …).
    public var errorCode: Int?

    public init(_ code: Code, _ message: String, errorCode: Int? = nil) {
        self.code = code
        self.message = message
        self.errorCode = errorCode
    }

    /// 403010: what the hub's tier does not have (Basic: C2D, twins, methods).
    public static func notInTier(_ feature: String) -> HubError {
        HubError(.forbidden, "\(feature) is not available on the Basic tier of IoT Hub: this operation is not valid for the current IoT Hub tier.", errorCode: 403010)
    }

    public var isRetriable: Bool { [429, 500, 504].contains(code.httpStatus) }
    public var description: String { message }
}

extension HubError {
    /// The JSON IoT Hub puts in an AMQP error's description: errorCode, message, trackingId, timestampUtc.
    var amqpDescription: String { hubErrorJSON(errorCode ?? code.httpStatus * 1000, message) }
}

extension DeviceEndpoint {
    /// What a Basic-tier hub lacks behind this device endpoint (nil: telemetry, which every tier has).
    var notInBasicTier: String? {
        switch self {
        case .events: nil
        case .deviceBound: "Cloud-to-device messaging"
        case .methods: "Direct methods"
        case .twin: "Device twins"
        }
    }
}
