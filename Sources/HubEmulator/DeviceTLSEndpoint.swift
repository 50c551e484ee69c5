import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import ProtonAMQP
import Synchronization

/// The certificates a device presented at TLS, leaf first, as DER.
struct ClientCertificateChain: Sendable {
    var certificates: [[UInt8]]
    var leaf: [UInt8] { certificates.first ?? [] }
}

/// AMQPS for devices as IoT Hub serves it (docs/hub-fidelity.md, X.509): the TLS handshake asks for a client
/// certificate without requiring one and takes whatever is presented; an X.509 device is then authenticated by it
/// when a link names the device (`HubConnection.x509Authorizes`: thumbprint or CA chain), a SAS device over CBS as
/// before. NIO does the TLS (Proton's own TLS cannot take a self-signed client certificate it has no CA for); the
/// AMQP bytes go to Proton through `pn_connection_driver`, as for WebSockets.
final class DeviceTLSListener: Sendable {
    private let channel: any Channel
    let port: Int

    private init(channel: any Channel, port: Int) {
        self.channel = channel
        self.port = port
    }

    /// Binds `host:port` (0: any free port).
    static func bind(host: String, port: Int, tls: AMQPServerTLS, reactor: AMQPReactor, configuration: AMQPListenerConfiguration,
                     makeHandler: @escaping @Sendable (ClientCertificateChain?) -> any AMQPConnectionHandler) async throws -> DeviceTLSListener {
        var tlsConfiguration = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(tls.certificateFile).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: tls.privateKeyFile, format: .pem)))
        tlsConfiguration.certificateVerification = .optionalVerification
        // Which certificates are trusted is decided per link (X509Authentication), not by NIOSSL: no system trust
        // store is loaded, so the hub also runs where none is installed (a minimal root or container).
        tlsConfiguration.trustRoots = .certificates([])
        tlsConfiguration.minimumTLSVersion = .tlsv12
        let context = try NIOSSLContext(configuration: tlsConfiguration)
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { child in
                let presented = PresentedChain()
                // Any certificate passes the handshake; which device it proves is decided per link, as the hub does.
                let ssl = NIOSSLServerHandler(context: context) { certificates, promise in
                    presented.set(certificates.compactMap { try? $0.toDERBytes() })
                    promise.succeed(.certificateVerified)
                }
                let bridge = StreamBridge(presented: presented, reactor: reactor, configuration: configuration, makeHandler: makeHandler)
                return child.eventLoop.makeCompletedFuture {
                    try child.pipeline.syncOperations.addHandler(ssl)
                    try child.pipeline.syncOperations.addHandler(bridge)
                }
            }
            .bind(host: host, port: port).get()
        return DeviceTLSListener(channel: channel, port: channel.localAddress?.port ?? port)
    }

    func close() async {
        try? await channel.close()
    }
}

/// What the verification callback saw, read once the handshake completed.
private final class PresentedChain: Sendable {
    private let chain = Mutex<[[UInt8]]>([])
    func set(_ c: [[UInt8]]) { chain.withLock { $0 = c } }
    var value: ClientCertificateChain? {
        let c = chain.withLock { $0 }
        return c.isEmpty ? nil : ClientCertificateChain(certificates: c)
    }
}

/// Hands a TLS channel's plaintext to Proton once the handshake is done (so the client certificate is known).
private final class StreamBridge: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked: `stream` is set and read on the channel's event loop only.
    typealias InboundIn = ByteBuffer
    let presented: PresentedChain
    let reactor: AMQPReactor
    let configuration: AMQPListenerConfiguration
    let makeHandler: @Sendable (ClientCertificateChain?) -> any AMQPConnectionHandler
    private var stream: ChannelByteStream?

    init(presented: PresentedChain, reactor: AMQPReactor, configuration: AMQPListenerConfiguration,
         makeHandler: @escaping @Sendable (ClientCertificateChain?) -> any AMQPConnectionHandler) {
        self.presented = presented
        self.reactor = reactor
        self.configuration = configuration
        self.makeHandler = makeHandler
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event, stream == nil {
            let s = ChannelByteStream(channel: context.channel)
            stream = s
            let chain = presented.value
            let makeHandler = self.makeHandler
            reactor.accept(stream: s, configuration: configuration) { makeHandler(chain) }
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Reads are gathered until NIO's read burst ends, then handed to Proton at once: one wake of the reactor per burst.
    private var gathered: [UInt8] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        gathered.append(contentsOf: buffer.readableBytesView)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if !gathered.isEmpty, let stream {
            stream.received(gathered)
            gathered = []
        }
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !gathered.isEmpty { stream?.received(gathered) }
        gathered = []
        stream?.ended(nil)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        stream?.ended(AMQPError(.transport, "TLS connection: \(error)"))
        context.close(promise: nil)
    }
}

/// One accepted TLS connection as Proton's byte stream. What arrives before Proton started the stream waits. Bytes
/// and the end reach the sink under the lock, so what waited cannot be overtaken by what arrives while it is handed
/// over (the sink only queues and wakes the reactor; it never calls back into this stream).
private final class ChannelByteStream: AMQPByteStream {
    private let channel: any Channel
    private let state = Mutex<(sink: AMQPByteStreamSink?, pending: [[UInt8]], ended: AMQPError??)>((nil, [], nil))

    init(channel: any Channel) { self.channel = channel }

    func start(_ sink: AMQPByteStreamSink) {
        state.withLock { s in
            s.sink = sink
            for bytes in s.pending { sink.received(bytes) }
            s.pending = []
            if let ended = s.ended { sink.ended(ended) }
        }
    }

    func received(_ bytes: [UInt8]) {
        state.withLock { s in
            if let sink = s.sink { sink.received(bytes) } else { s.pending.append(bytes) }
        }
    }

    func ended(_ error: AMQPError?) {
        state.withLock { s in
            if let sink = s.sink { sink.ended(error) } else if s.ended == nil { s.ended = .some(error) }
        }
    }

    /// Proton's output chunks since the event loop last ran go out in one write and one flush.
    private let outbox = Mutex<(chunks: [[UInt8]], scheduled: Bool)>(([], false))

    func write(_ bytes: [UInt8]) {
        let schedule = outbox.withLock { o -> Bool in
            o.chunks.append(bytes)
            defer { o.scheduled = true }
            return !o.scheduled
        }
        if schedule { channel.eventLoop.execute { [self] in flushOutbox() } }
    }

    private func flushOutbox() {
        let chunks = outbox.withLock { o in
            defer { o.chunks = []; o.scheduled = false }
            return o.chunks
        }
        var buffer = channel.allocator.buffer(capacity: chunks.reduce(0) { $0 + $1.count })
        for c in chunks { buffer.writeBytes(c) }
        channel.writeAndFlush(buffer, promise: nil)
    }

    /// After what was written: writes from other threads queue on the event loop in order, and so does this.
    func close() {
        channel.eventLoop.execute { [channel] in channel.close(promise: nil) }
    }

    func abort() {
        channel.close(promise: nil)
    }
}
