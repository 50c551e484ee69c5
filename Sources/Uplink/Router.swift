import FieldgateCore

/// A cloud-to-device message for one leaf, as the router hands it to the adapter that owns the leaf.
public struct C2DMessage: Sendable, Equatable {
    public var deviceID: String
    public var messageID: String?
    public var correlationID: String?
    public var contentType: String?
    public var contentEncoding: String?
    /// Application properties (string values; others are rendered as text).
    public var properties: [String: String]
    public var body: [UInt8]
    /// Absolute expiry, ms since the epoch; nil = none.
    public var expiryMilliseconds: Int64?
    /// How many times the hub has delivered it (from `iothub-deliverycount`), 0 when absent.
    public var deliveryCount: Int

    public init(deviceID: String, messageID: String? = nil, correlationID: String? = nil, contentType: String? = nil,
                contentEncoding: String? = nil, properties: [String: String] = [:], body: [UInt8],
                expiryMilliseconds: Int64? = nil, deliveryCount: Int = 0) {
        self.deviceID = deviceID
        self.messageID = messageID
        self.correlationID = correlationID
        self.contentType = contentType
        self.contentEncoding = contentEncoding
        self.properties = properties
        self.body = body
        self.expiryMilliseconds = expiryMilliseconds
        self.deliveryCount = deliveryCount
    }
}

/// What the adapter made of a C2D message (contract 4). The hub turns these into feedback: complete → Success,
/// reject → Rejected; abandon and unreachable keep the message for a later attempt (CloudToDeviceFlow).
public enum C2DOutcome: Sendable, Equatable {
    /// Carried out (or durably kept for later).
    case complete
    /// Permanent failure: unknown point, bad payload.
    case reject(String)
    /// Transient failure: retried while the hub's lock allows, then given back to the hub.
    case abandon(String)
    /// The leaf cannot be reached now (never heard from, no address, no answer): the message is kept (held, then
    /// left in the hub's queue) until the adapter reports the leaf reachable (`Uplink.leafReachable`) or it expires.
    case unreachable(String)
}

/// A direct method call for one leaf (or the gateway).
public struct MethodCall: Sendable, Equatable {
    public var deviceID: String
    public var name: String
    /// The request's JSON payload (`null` when it had none).
    public var payload: JSONValue
    /// When the uplink answers 504 if the handler has not answered (ms since the epoch).
    public var deadlineMilliseconds: Int64

    public init(deviceID: String, name: String, payload: JSONValue, deadlineMilliseconds: Int64) {
        self.deviceID = deviceID
        self.name = name
        self.payload = payload
        self.deadlineMilliseconds = deadlineMilliseconds
    }
}

/// A method's answer: an HTTP-like status and a JSON payload.
public struct MethodResponse: Sendable, Equatable {
    public var status: Int
    public var payload: JSONValue

    public init(status: Int, payload: JSONValue) {
        self.status = status
        self.payload = payload
    }

    /// `{"error": message}` with `status` (400 bad payload, 404 unknown, 504 deadline …).
    public static func error(_ status: Int, _ message: String) -> MethodResponse {
        MethodResponse(status: status, payload: ["error": .string(message)])
    }
}

/// What a leaf's identity can do besides telemetry; decides which links are attached.
public struct LeafCapabilities: OptionSet, Sendable, Hashable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    public static let cloudToDevice = LeafCapabilities(rawValue: 1)
    public static let methods = LeafCapabilities(rawValue: 2)
    public static let twin = LeafCapabilities(rawValue: 4)
    public static let all: LeafCapabilities = [.cloudToDevice, .methods, .twin]
}

/// Routes what the cloud sends a leaf to the adapter that owns it (docs/contracts.md §8). Called off the
/// reactor thread. Every answer has a deadline the uplink enforces: C2D is abandoned, a method answered 504.
public protocol LeafRouter: Sendable {
    func cloudToDevice(_ message: C2DMessage) async -> C2DOutcome
    /// nil: the leaf has no such method (answered 404).
    func invoke(_ call: MethodCall) async -> MethodResponse?
    /// The leaf's desired properties changed (the whole desired document, `$version` removed). Returns the
    /// reported patch describing what was applied (nil: report nothing). Called for one leaf at a time, in the
    /// hub's order; versions that came while a call ran may be skipped for the newest.
    func desiredProperties(_ desired: JSONValue, version: Int64, deviceID: String) async -> JSONValue?
}

extension LeafRouter {
    public func invoke(_ call: MethodCall) async -> MethodResponse? { nil }
    public func desiredProperties(_ desired: JSONValue, version: Int64, deviceID: String) async -> JSONValue? { nil }
}
