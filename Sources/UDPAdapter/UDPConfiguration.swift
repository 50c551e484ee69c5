import FrameCodecs

/// How the UDP adapter listens and which leaves it serves. Owned by the UDPAdapter module; the daemon's config
/// maps onto it.
public struct UDPAdapterConfiguration: Sendable, Equatable {
    /// Bind address: an IPv4 or IPv6 literal (`0.0.0.0`, `::`, `127.0.0.1`). Default: `::` (both families).
    public var bindAddress = "::"
    public var port: Int
    /// Larger datagrams are rejected (`oversize`). Default: 4096.
    public var maxDatagramBytes = 4096
    /// Source IP addresses allowed to send at all; empty = any.
    public var allowedSources: [String] = []
    /// An HMAC'd datagram's `ts` must be within this many seconds of the gateway's clock. Default: 30.
    public var timestampWindowSeconds: Int64 = 30
    /// The socket receive buffer asked for; the kernel caps it at `net.core.rmem_max` for an unprivileged
    /// process. Default: 8 MiB (a few seconds of a 50k datagrams/s burst).
    public var receiveBufferBytes = 8 << 20
    /// How long a command (C2D, method) waits for the leaf's answer datagram. Default: 5 s.
    public var replyTimeoutMilliseconds: Int64 = 5000
    public var leaves: [UDPLeaf]
    /// Where the adapter keeps what it knows of its leaves across restarts (last-seen addresses, replay floors,
    /// acknowledged desired documents); nil = memory only. The daemon uses `<spool directory>/udp-<port>.state`.
    public var stateFile: String?

    public init(port: Int, leaves: [UDPLeaf]) {
        self.port = port
        self.leaves = leaves
    }
}

/// A leaf that sends over UDP.
public struct UDPLeaf: Sendable, Equatable {
    public var deviceID: String
    /// Source IP addresses that may speak for this leaf (JSON format); empty = any allowed source.
    public var allowedSources: [String]
    /// Per-source mapping: datagrams from this `ip` or `ip:port` belong to this leaf, whatever they contain.
    public var mappedSource: String?
    /// How a mapped source's datagrams become values (CSV, key=value, regex, JSON, raw: the serial decoders).
    /// nil: a JSON object is the values, anything else is forwarded as it came (`application/octet-stream`).
    public var format: FrameFormat?
    /// With a key, every datagram must carry a valid `sig=` trailer and a fresh `ts`.
    public var hmacKey: [UInt8]?
    /// Where commands go (`ip:port`); default: the address the leaf last sent from.
    public var commandAddress: String?

    public init(deviceID: String, allowedSources: [String] = [], mappedSource: String? = nil, format: FrameFormat? = nil,
                hmacKey: [UInt8]? = nil, commandAddress: String? = nil) {
        self.deviceID = deviceID
        self.allowedSources = allowedSources
        self.mappedSource = mappedSource
        self.format = format
        self.hmacKey = hmacKey
        self.commandAddress = commandAddress
    }
}
