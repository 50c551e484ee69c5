import FieldgateCore

/// TLS settings of a listener.
public struct AMQPServerTLS: Sendable {
    /// PEM certificate chain file.
    public var certificateFile: String
    /// PEM private key file.
    public var privateKeyFile: String

    public init(certificateFile: String, privateKeyFile: String) {
        self.certificateFile = certificateFile
        self.privateKeyFile = privateKeyFile
    }
}

/// TLS settings of a client connection.
public struct AMQPClientTLS: Sendable {
    /// PEM file with the CA certificates to trust. Default: nil (the system bundle).
    public var trustedCAFile: String?
    /// The name to send as SNI and to check against the certificate's DNS names. Default: the connect host.
    public var peerHostname: String?
    /// Verify the peer's certificate and host name. Default: true. Turning this off is for tests only.
    public var verifyPeer: Bool = true
    /// A client certificate (PEM, with its chain) and its private key (PEM), presented when the peer asks: X.509
    /// authentication at TLS. Default: none.
    public var certificateFile: String?
    public var privateKeyFile: String?

    public init(trustedCAFile: String? = nil, peerHostname: String? = nil, verifyPeer: Bool = true,
                certificateFile: String? = nil, privateKeyFile: String? = nil) {
        self.trustedCAFile = trustedCAFile
        self.peerHostname = peerHostname
        self.verifyPeer = verifyPeer
        self.certificateFile = certificateFile
        self.privateKeyFile = privateKeyFile
    }
}

/// The SASL layer a client uses.
public enum AMQPClientSASL: Sendable {
    /// No SASL layer at all: the plain AMQP header right after TLS (C# and Node IoT SDKs).
    case none
    /// SASL ANONYMOUS.
    case anonymous
    /// SASL `MSSBCBS` with an empty initial response (Azure C SDK); authentication follows over CBS.
    case mssbcbs
    /// SASL PLAIN.
    case plain(user: String, password: String)
}

/// How a listener opens and answers connections. Values mirror the real IoT Hub's Open and Begin frames
/// (docs/hub-fidelity.md).
public struct AMQPListenerConfiguration: Sendable {
    /// nil = plain AMQP (tests only).
    public var tls: AMQPServerTLS?
    /// Mechanisms offered, in order. Default: MSSBCBS and ANONYMOUS. Clients may also skip SASL.
    public var saslMechanisms: [String] = ["MSSBCBS", "ANONYMOUS"]
    /// Accept clients that send the AMQP header without a SASL layer. Default: true (C#, Node SDKs).
    public var allowNoSASL: Bool = true
    /// container-id of our Open. Default: a `DeviceGateway_<32 hex>` name as the hub sends.
    public var containerID: String = "DeviceGateway_" + AMQPUUID.random().bytes.map { String($0, radix: 16).leftPadded(to: 2) }.joined()
    /// max-frame-size of our Open. Default: 65536.
    public var maxFrameSize: UInt32 = 65536
    /// channel-max of our Open. Default: 8191.
    public var channelMax: UInt16 = 8191
    /// idle-timeout advertised in our Open, in milliseconds. Default: 240000.
    public var idleTimeoutMilliseconds: UInt32 = 240_000
    /// incoming-window of our Begin, in frames. Default: 5000.
    public var sessionIncomingWindow: Int = 5000

    public init(tls: AMQPServerTLS?) {
        self.tls = tls
    }
}

/// How a client connects.
public struct AMQPClientConfiguration: Sendable {
    /// nil = plain AMQP (tests only).
    public var tls: AMQPClientTLS?
    public var sasl: AMQPClientSASL = .none
    /// container-id of our Open. Default: a random uuid.
    public var containerID: String = AMQPUUID.random().description
    /// hostname field of our Open. Default: the connect host.
    public var virtualHost: String?
    /// idle-timeout advertised in our Open, in milliseconds. Default: 240000 (heartbeats keep it alive).
    public var idleTimeoutMilliseconds: UInt32 = 240_000
    public var maxFrameSize: UInt32 = 65536
    /// Receives every AMQP frame sent and received, as Proton traces them, on the reactor thread. Default: nil.
    /// For tests that check the order of frames on the wire.
    public var frameTrace: (@Sendable (String) -> Void)?

    public init(tls: AMQPClientTLS?, sasl: AMQPClientSASL = .none) {
        self.tls = tls
        self.sasl = sasl
    }
}
