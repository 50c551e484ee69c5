import FieldgateCore
import Hummingbird
import HummingbirdTLS
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOSSL
import ProtonAMQP
import ServiceLifecycle
import Synchronization

/// How fieldgate-hub listens.
public struct HubServerConfiguration: Sendable {
    public var hub = HubConfiguration()
    /// Address to bind. Default: 127.0.0.1.
    public var bindHost = "127.0.0.1"
    /// AMQPS (TLS) port; nil = none. Default: 5671. Needs `tls`.
    public var amqpsPort: Int? = 5671
    /// Plain AMQP port, only when explicitly enabled (tests). Default: nil.
    public var amqpPort: Int?
    public var tls: AMQPServerTLS?
    /// AMQPS and the HTTPS port's WebSockets ask devices for a client certificate without requiring one, as IoT Hub
    /// does, so X.509 devices can authenticate (NIO's TLS in front of Proton). false: Proton's own TLS on AMQPS and no
    /// certificate asked for on HTTPS, which takes SAS devices only; it spends less CPU per message, which the
    /// throughput benchmarks want from the hub they measure against. Default: true.
    public var clientCertificates = true
    /// Service API (HTTP) port. Default: 8080.
    public var httpPort = 8080
    /// The same service API over HTTPS with the AMQPS certificate, as the official service SDKs call IoT Hub
    /// (`https://{host}`, port 443), and AMQP over WebSockets on it (`/$iothub/websocket`, `AMQPWSB10`); nil = none.
    /// Default: nil. Needs `tls`.
    public var httpsPort: Int?
    /// Serve the service API without authorization (loopback development only). Default: false.
    public var openServiceAPI = false

    public init() {}
}

/// A device listener: Proton's (plain AMQP) or the TLS one that takes client certificates.
enum DeviceListener: Sendable {
    case proton(AMQPListener)
    case tls(DeviceTLSListener)

    var port: Int {
        switch self {
        case .proton(let l): l.port
        case .tls(let l): l.port
        }
    }

    func close() async {
        switch self {
        case .proton(let l): await l.close()
        case .tls(let l): await l.close()
        }
    }

}

/// A running hub: the ports it got, its core, and how to stop it.
public final class RunningHub: Sendable {
    public let amqpsPort: Int?
    public let amqpPort: Int?
    public let httpPort: Int
    public let httpsPort: Int?
    public let core: HubCore
    let server: HubServer

    init(amqpsPort: Int?, amqpPort: Int?, httpPort: Int, httpsPort: Int?, core: HubCore, server: HubServer) {
        self.httpsPort = httpsPort
        self.amqpsPort = amqpsPort
        self.amqpPort = amqpPort
        self.httpPort = httpPort
        self.core = core
        self.server = server
    }

    public func stop() async { await server.stop() }
}

/// fieldgate-hub: AMQP listeners on one reactor plus the HTTP service API. Also a `Service` for a ServiceGroup.
public final class HubServer: Service, Sendable {
    public let configuration: HubServerConfiguration
    let logger: Logger
    let reactor: AMQPReactor
    private let state = Mutex<State>(State())

    private struct State {
        var core: HubCore?
        var listeners: [(listener: DeviceListener, tls: Bool)] = []
        var httpTask: Task<Void, any Error>?
        var httpGroup: ServiceGroup?
        var stopped = false
        /// Fault injection: while true, WebSocket upgrades are refused like the AMQP listeners' connects (and once
        /// stopping, so no new WebSocket holds up the HTTP server's graceful stop).
        var refusing = false
    }

    public init(configuration: HubServerConfiguration, logger: Logger = Logger(label: "fieldgate.hub")) {
        self.configuration = configuration
        self.logger = logger
        self.reactor = AMQPReactor(logger: logger)
    }

    /// Binds every listener and starts serving. Ports of 0 pick free ports (see the returned `RunningHub`).
    public func start() async throws -> RunningHub {
        let core = try HubCore(configuration: configuration.hub, reactor: reactor, logger: logger)
        state.withLock { $0.core = core }
        core.startTicking()
        var amqpsPort: Int?, amqpPort: Int?
        if let port = configuration.amqpsPort {
            guard configuration.tls != nil else {
                throw HubError(.badRequest, "amqps needs a certificate and key (fieldgate-hub certs creates them), or use --amqp-port for plain AMQP in tests")
            }
            amqpsPort = try await openListener(port: port, tls: true, core: core).port
        }
        if let port = configuration.amqpPort { amqpPort = try await openListener(port: port, tls: false, core: core).port }

        let api = ServiceAPI(core: core, open: configuration.openServiceAPI) { [self] fault in
            switch fault {
            case .refuseConnections(let seconds):
                await refuseConnections(forSeconds: seconds)
                return .object(["refusingSeconds": .int(Int64(seconds))])
            }
        }
        let httpLogger = { var l = Logger(label: "fieldgate.hub.http"); l.logLevel = logger.logLevel; return l }()
        let portPromise = PortPromise()
        var services: [any Service] = [Application(
            router: api.router(),
            configuration: .init(address: .hostname(configuration.bindHost, port: configuration.httpPort), serverName: "fieldgate-hub"),
            onServerRunning: { channel in portPromise.complete(.success(channel.localAddress?.port ?? 0)) },
            logger: httpLogger
        )]
        // The same API over HTTPS, with the certificate the AMQPS listener presents.
        let httpsPromise = PortPromise()
        if let httpsPort = configuration.httpsPort {
            guard let tls = configuration.tls else { throw HubError(.badRequest, "the HTTPS service API needs the hub's TLS certificate") }
            var tlsConfiguration = TLSConfiguration.makeServerConfiguration(
                certificateChain: try NIOSSLCertificate.fromPEMFile(tls.certificateFile).map { .certificate($0) },
                privateKey: .privateKey(try NIOSSLPrivateKey(file: tls.privateKeyFile, format: .pem)))
            // X.509 devices over WebSockets, as on AMQPS: a certificate is asked for, not required, and any passes the
            // handshake (the links decide); no system trust store is loaded (`DeviceTLSListener`).
            let presented = configuration.clientCertificates ? PresentedChains() : nil
            var verify: TLSChannelConfiguration.CustomVerificationCallback?
            if let presented {
                tlsConfiguration.certificateVerification = .optionalVerification
                tlsConfiguration.trustRoots = .certificates([])
                verify = { certificates, promise in
                    presented.remember(certificates.compactMap { try? $0.toDERBytes() })
                    promise.succeed(.certificateVerified)
                }
            }
            let channelTLS = TLSChannelConfiguration(tlsConfiguration: tlsConfiguration, customVerificationCallback: verify)
            let router = api.router()
            router.middlewares.add(AMQPWebSocketEndpoint.RefusalMiddleware())
            var listenerConfig = AMQPListenerConfiguration(tls: nil)
            listenerConfig.idleTimeoutMilliseconds = 240_000
            let webSocket = HTTP1WebSocketUpgradeChannel.Configuration(
                ws: .init(maxFrameSize: 1 << 20, autoPing: .disabled))  // the real hub sends no WebSocket pings
            services.append(Application(
                router: router,
                server: try .tls(.http1WebSocketUpgrade(configuration: webSocket) { [self, reactor, listenerConfig] request, channel, _ in
                    let chain = presented?.chain(of: channel)
                    return AMQPWebSocketEndpoint.shouldUpgrade(
                        request, accepting: !state.withLock { $0.refusing || $0.stopped }, reactor: reactor, configuration: listenerConfig,
                        makeHandler: { HubConnection(core: core, clientCertificate: chain) })
                }, configuration: channelTLS),
                configuration: .init(address: .hostname(configuration.bindHost, port: httpsPort), serverName: "fieldgate-hub"),
                onServerRunning: { channel in httpsPromise.complete(.success(channel.localAddress?.port ?? 0)) },
                logger: httpLogger
            ))
        }
        let group = ServiceGroup(services: services, gracefulShutdownSignals: [], logger: logger)
        let task = Task {
            do { try await group.run() } catch {
                portPromise.complete(.failure(error))  // e.g. the port is in use
                httpsPromise.complete(.failure(error))
                throw error
            }
        }
        state.withLock {
            $0.httpTask = task
            $0.httpGroup = group
        }
        let httpPort = try await portPromise.value()
        let httpsPort = configuration.httpsPort == nil ? nil : try await httpsPromise.value()
        if let httpsPort, configuration.hub.fileUploadStorage {
            // The storage account of file uploads is this HTTPS port (https://{host}[:port]/fieldgate-uploads/…).
            let endpoint = httpsPort == 443 ? configuration.hub.hostName : "\(configuration.hub.hostName):\(httpsPort)"
            try await core.perform { $0.blobEndpoint = endpoint }
        }
        logger.info("fieldgate-hub serving \(configuration.hub.hostName): amqps \(amqpsPort.map(String.init) ?? "-"), amqp \(amqpPort.map(String.init) ?? "-"), http \(httpPort), https \(httpsPort.map(String.init) ?? "-")")
        return RunningHub(amqpsPort: amqpsPort, amqpPort: amqpPort, httpPort: httpPort, httpsPort: httpsPort, core: core, server: self)
    }

    /// Plain AMQP through Proton's own listener; AMQPS through `DeviceTLSListener`, which lets X.509 devices in (or
    /// through Proton's TLS without `clientCertificates`).
    private func openListener(port: Int, tls: Bool, core: HubCore) async throws -> DeviceListener {
        let listener: DeviceListener
        if tls, configuration.clientCertificates, let serverTLS = configuration.tls {
            var listenerConfig = AMQPListenerConfiguration(tls: nil)  // the listener's TLS, not Proton's
            listenerConfig.idleTimeoutMilliseconds = 240_000
            listener = .tls(try await DeviceTLSListener.bind(host: configuration.bindHost, port: port, tls: serverTLS, reactor: reactor,
                                                            configuration: listenerConfig) { chain in
                HubConnection(core: core, clientCertificate: chain)
            })
        } else {
            var listenerConfig = AMQPListenerConfiguration(tls: tls ? configuration.tls : nil)
            listenerConfig.idleTimeoutMilliseconds = 240_000
            listener = .proton(try await reactor.listen(host: configuration.bindHost, port: port, configuration: listenerConfig) {
                HubConnection(core: core)
            })
        }
        state.withLock { $0.listeners.append((listener, tls)) }
        return listener
    }

    /// Fault injection: closes the AMQP listeners (connects are refused) and reopens them on the same ports.
    func refuseConnections(forSeconds seconds: Int) async {
        let (listeners, core) = state.withLock { s in
            defer { s.listeners = [] }
            return (s.listeners, s.core)
        }
        state.withLock { $0.refusing = true }
        for (l, _) in listeners { await l.close() }
        guard let core else { return }
        Task { [self] in
            try? await Task.sleep(for: .seconds(seconds))
            state.withLock { $0.refusing = false }
            // Each listener on its own, and again after a failed bind (the old socket may not have let go yet), so one
            // cannot keep the other closed.
            await withTaskGroup(of: Void.self) { group in
                for (l, tls) in listeners {
                    group.addTask { [self] in
                        for attempt in 1...20 {
                            if state.withLock({ $0.stopped }) { return }
                            do {
                                _ = try await openListener(port: l.port, tls: tls, core: core)
                                return
                            } catch {
                                logger.error("cannot reopen the AMQP listener on port \(l.port) (attempt \(attempt)): \(error)")
                            }
                            try? await Task.sleep(for: .milliseconds(200))
                        }
                    }
                }
            }
        }
    }

    /// Stops listeners, connections, the HTTP server and saves state.
    public func stop() async {
        let (listeners, http, group, core, alreadyStopped) = state.withLock { s in
            defer { s.listeners = []; s.httpTask = nil; s.httpGroup = nil; s.stopped = true }
            return (s.listeners, s.httpTask, s.httpGroup, s.core, s.stopped)
        }
        if alreadyStopped { return }
        for (l, _) in listeners { await l.close() }
        await reactor.abortStreamConnections()  // WebSocket connections: their HTTP server waits for them
        await group?.triggerGracefulShutdown()
        _ = try? await http?.value
        if let core { try? await core.perform { core in core.stopTicking(); core.save() } }
        await reactor.shutdown()
    }

    public func run() async throws {
        _ = try await start()
        try? await gracefulShutdown()
        await stop()
    }
}

/// Hands the HTTP port from `onServerRunning` to `start()`, or the error if the server fails first. The first
/// completion wins.
final class PortPromise: Sendable {
    private let state = Mutex<(result: Result<Int, any Error>?, waiter: CheckedContinuation<Int, any Error>?)>((nil, nil))

    func complete(_ result: Result<Int, any Error>) {
        let waiter = state.withLock { s -> CheckedContinuation<Int, any Error>? in
            guard s.result == nil else { return nil }
            s.result = result
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume(with: result)
    }

    func value() async throws -> Int {
        try await withCheckedThrowingContinuation { (cont: CheckedContinuation<Int, any Error>) in
            let ready = state.withLock { s -> Result<Int, any Error>? in
                if s.result == nil { s.waiter = cont }
                return s.result
            }
            if let ready { cont.resume(with: ready) }
        }
    }
}
