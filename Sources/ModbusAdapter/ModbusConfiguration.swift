import ModbusIO

/// One Modbus bus — a TCP connection or a serial line — and the devices on it. Owned by this module; the daemon's
/// configuration (`[[modbus_bus]]`, leaves with `adapter = "modbus"`, profiles.d) maps onto it.
public struct ModbusBusConfiguration: Sendable, Equatable {
    public var name: String
    public var endpoint: ModbusEndpoint
    /// How long a unit may take to answer (ms).
    public var responseTimeoutMilliseconds = 1000
    /// The longest silence inside one frame (ms).
    public var byteTimeoutMilliseconds = 100
    /// Silence kept after each transaction before the next request (ms): slow RS-485 devices need time to turn
    /// their transceiver around. Default: 3.5 character times at the line's baud (at least 2 ms); 0 on TCP.
    public var turnaroundMilliseconds: Double
    /// Immediate retries of a failed request while the unit is online.
    public var retries = 1
    /// Back-off of a unit that stopped answering: first wait, doubling up to the last (ms).
    public var backoffMilliseconds: ClosedRange<Int64> = 1000...60_000
    /// Unused registers a read may span to merge two points into one request.
    public var maxGap = 8
    /// Reconnect attempts after the connection or port is lost: first wait, doubling up to the last (ms).
    public var reconnectMilliseconds: ClosedRange<Int64> = 500...30_000
    public var devices: [ModbusDeviceConfiguration]

    public init(name: String, endpoint: ModbusEndpoint, devices: [ModbusDeviceConfiguration]) {
        self.name = name
        self.endpoint = endpoint
        self.devices = devices
        switch endpoint {
        case .tcp: turnaroundMilliseconds = 0
        case .rtu(let line): turnaroundMilliseconds = max(2, (3.5 * line.characterMicroseconds / 1000 * 10).rounded(.up) / 10)
        }
    }
}

/// One Modbus device: a leaf identity, its unit id on the bus, its register map.
public struct ModbusDeviceConfiguration: Sendable, Equatable {
    public var leaf: String
    public var unit: Int
    public var profile: ModbusProfile
    /// Poll interval for points without their own (ms); default: the profile's.
    public var pollMilliseconds: Int64
    /// A full report of every point this often (ms), besides reports by exception.
    public var fullReportMilliseconds: Int64 = 300_000
    /// This unit's own response timeout and retries (a slow device on a fast bus); nil: the bus's.
    public var responseTimeoutMilliseconds: Int?
    public var retries: Int?

    public init(leaf: String, unit: Int, profile: ModbusProfile) {
        self.leaf = leaf
        self.unit = unit
        self.profile = profile
        self.pollMilliseconds = profile.pollMilliseconds
    }
}
