/// Settings of the emulated hub. Defaults follow the real hub's documented limits.
public struct HubConfiguration: Sendable {
    /// The hub's host name: tokens must name it in `sr`, and TLS certificates must carry it. Default: localhost.
    public var hostName = "localhost"
    /// Tolerated clock skew when checking token expiry, in seconds. Default: 300 (as edgeHub).
    public var tokenClockSkewSeconds: Int64 = 300
    /// Tokens one connection may hold. Default: 999.
    public var maxTokensPerConnection = 999
    /// C2D queue limits (50 pending, 60 s lock, 10 deliveries, 1 h TTL).
    public var cloudToDevice = CloudToDeviceQueue.Limits()
    /// Received D2C messages kept for the service side's event stream. Default: 100000.
    public var eventLogCapacity = 100_000
    /// Default and maximum direct-method timeouts, in seconds. Default: 30 and 300.
    public var methodDefaultTimeoutSeconds = 30
    public var methodMaxTimeoutSeconds = 300
    /// New device authentications (put-tokens) per second per hub; nil = unlimited. Default: nil. The real S1 hub
    /// allows max(100/s, 12/s/unit).
    public var deviceAuthenticationsPerSecond: Int?
    /// D2C messages the hub accepts per UTC day, counted as IoT Hub bills them (a message costs one unit per started
    /// 4 KB); beyond it telemetry is refused with 403002 until 00:00 UTC. nil = unlimited. Default: nil.
    public var dailyMessageQuota: Int?
    /// The hub's tier: Basic has no C2D, twins or direct methods; their device links and service calls are refused
    /// with 403010. Default: standard.
    public var tier: HubTier = .standard
    /// A storage account is associated for file upload (its blobs are served on the HTTPS port). false: device
    /// file-upload requests are refused with 400022, as by a hub without one. Default: true.
    public var fileUploadStorage = true
    /// A route sends device twin change events (reported-property updates) to the built-in events endpoint, as
    /// IoT Hub does when one is configured: each update becomes an event with `iothub-message-source`
    /// twinChangeEvents. Default: off (the events endpoint carries telemetry only, IoT Hub's default).
    public var twinChangeEvents = false
    /// Where registry, twins and pending C2D survive restarts; nil = memory only.
    public var stateDirectory: String?

    public init() {}

    /// The hub name (first label of the host name), as used in "Device d at IotHub h not registered".
    public var hubName: String { String(hostName.split(separator: ".").first ?? Substring(hostName)) }
}

/// IoT Hub tiers as far as the device surface differs: Basic (B1–B3) carries D2C (and file upload) only.
public enum HubTier: String, Sendable, CaseIterable {
    case standard, basic
}
