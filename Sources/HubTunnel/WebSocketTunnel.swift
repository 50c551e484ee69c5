internal import CCurlTunnel
import Dispatch
import FieldgateCore
import MessageAuthentication
import ProtonAMQP
import Synchronization
import WebSocketFraming

#if canImport(Glibc)
import Glibc
#endif

/// Which HTTP proxy a tunnel goes through.
public enum ProxySetting: Sendable, Equatable {
    /// `https_proxy` / `HTTPS_PROXY` and `no_proxy` from the environment, as curl reads them; none when unset.
    case environment
    /// Never a proxy, whatever the environment says.
    case direct
    /// This proxy (`http://host:port`), with credentials when it needs them.
    case url(String, user: String?, password: String?)
}

extension ProxySetting: CustomStringConvertible {
    /// For logs and status: never the password.
    public var description: String {
        switch self {
        case .environment: return "from the environment (https_proxy) if set"
        case .direct: return "none"
        case .url(let url, let user, _): return user.map { "\(url) as \($0)" } ?? url
        }
    }

    /// Whether requests may go through a proxy: one is named, or the environment names one (curl then still
    /// applies `no_proxy`).
    public var mayUseProxy: Bool {
        switch self {
        case .direct: return false
        case .url: return true
        case .environment:
            for name in ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"] {
                if let value = getenv(name), value.pointee != 0 { return true }
            }
            return false
        }
    }
}

/// How a WebSocket tunnel reaches the hub. Owned by this module; the uplink fills it in.
public struct WebSocketTunnelConfiguration: Sendable, Equatable {
    /// The hub's name: SNI, the certificate's name, the Host header and the proxy's CONNECT target.
    public var hostName: String
    /// Default: 443.
    public var port = 443
    /// Default: `/$iothub/websocket`.
    public var path = "/$iothub/websocket"
    /// Connect here instead of resolving `hostName` (TLS still checks `hostName`). Default: nil.
    public var address: String?
    /// PEM bundle of trusted CAs; nil: the system's.
    public var caFile: String?
    /// Verify the hub's certificate and name. Turning it off is for tests only.
    public var verifyPeer = true
    public var proxy: ProxySetting = .environment
    /// A client certificate (PEM, with its chain) and its key, presented at TLS: an X.509 identity authenticates by
    /// it, over WebSockets as over AMQPS. nil: none.
    public var clientCertificateFile: String?
    public var clientKeyFile: String?
    /// TCP, proxy and TLS together. Default: 30 s.
    public var connectTimeoutMilliseconds = 30_000
    /// A WebSocket ping after this much silence from us, for proxies that cut idle tunnels; nil: none (AMQP's
    /// heartbeats still flow). Default: 45 s.
    public var pingIntervalMilliseconds: Int? = 45_000
    /// The WebSocket subprotocol. Default: `AMQPWSB10` (IoT Hub's AMQP over WebSockets).
    public var subprotocol = "AMQPWSB10"
    public var userAgent = "fieldgate/\(FieldgateVersion.current)"

    public init(hostName: String) { self.hostName = hostName }
}

/// AMQP's byte stream over a WebSocket (RFC 6455, binary messages) over TLS over TCP, through an HTTP proxy when
/// one is set: libcurl opens the tunnel (proxy CONNECT and its authentication, TLS with OpenSSL), this class does
/// the upgrade and the framing on a thread of its own.
public final class WebSocketTunnel: AMQPByteStream, @unchecked Sendable {
    // @unchecked: `cancel` is a flag any thread may set and curl's progress callback reads; the rest is immutable
    // or locked.
    private let configuration: WebSocketTunnelConfiguration
    private let wakeDescriptor: Int32
    private let cancel = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
    private let outbox = Mutex<Outbox>(Outbox())

    private struct Outbox {
        var chunks: [[UInt8]] = []
        var closeRequested = false
        var aborted = false
    }

    /// Our Close went out (tunnel thread only).
    private var closeSent = false
    /// How long we wait for the hub's Close after ours (RFC 6455 §7.1.1: the server closes TCP).
    static let closeWaitMilliseconds: Int64 = 2_000

    /// The largest WebSocket frame we send; larger writes go as several messages.
    static let maxFramePayload = 64 * 1024

    public init(configuration: WebSocketTunnelConfiguration) {
        self.configuration = configuration
        wakeDescriptor = fg_wake_descriptor()
        cancel.initialize(to: 0)
        Self.globalInit
    }

    deinit {
        Glibc.close(wakeDescriptor)
        cancel.deallocate()
    }

    private static let globalInit: Void = { fg_tunnel_global_init() }()

    public func start(_ sink: AMQPByteStreamSink) {
        DispatchQueue(label: "fieldgate.websocket").async { [self] in
            let error = run(sink)
            sink.ended(error)
        }
    }

    public func write(_ bytes: [UInt8]) {
        // The tunnel thread takes every queued chunk at once: a wake is needed only when the queue was empty.
        let wasEmpty = outbox.withLock { box -> Bool in
            defer { box.chunks.append(bytes) }
            return box.chunks.isEmpty
        }
        if wasEmpty { wake() }
    }

    public func close() {
        outbox.withLock { $0.closeRequested = true }
        wake()
    }

    public func abort() {
        outbox.withLock { $0.aborted = true }
        // The opening (curl) watches this flag; the pump watches the outbox.
        cancel.pointee = 1
        wake()
    }

    private func wake() {
        var one: UInt64 = 1
        _ = Glibc.write(wakeDescriptor, &one, 8)
    }

    // MARK: the tunnel's thread

    /// Opens, upgrades and pumps until the end; returns why it ended (nil: cleanly).
    private func run(_ sink: AMQPByteStreamSink) -> AMQPError? {
        let tunnel: OpaquePointer
        switch open() {
        case .success(let t): tunnel = t
        case .failure(let error): return error
        }
        defer { fg_tunnel_close(tunnel) }
        let socket = fg_tunnel_socket(tunnel)
        var pump = Pump(tunnel: tunnel, socket: socket)
        let deadline = MonotonicClock.milliseconds() + Int64(configuration.connectTimeoutMilliseconds)

        // The upgrade.
        var handshake = WebSocketClientHandshake(
            host: configuration.port == 443 ? configuration.hostName : "\(configuration.hostName):\(configuration.port)",
            path: configuration.path, subprotocol: configuration.subprotocol, userAgent: configuration.userAgent)
        pump.output = handshake.request
        var decoder = WebSocketFrameDecoder(expectMasked: false)
        var upgraded = false
        while !upgraded {
            if isAborted { return AMQPError(.closed, "closed while opening the WebSocket") }
            let remaining = deadline - MonotonicClock.milliseconds()
            guard remaining > 0 else {
                return AMQPError(.timeout, "the hub did not answer the WebSocket upgrade at \(configuration.hostName)\(configuration.path) within \(configuration.connectTimeoutMilliseconds / 1000) s")
            }
            switch pump.exchange(wake: wakeDescriptor, timeoutMs: Int32(min(remaining, 1000))) {
            case .failure(let error): return error
            case .success(let received):
                guard !received.isEmpty else { continue }
                do {
                    if case .upgraded(let leftover) = try handshake.receive(received) {
                        upgraded = true
                        if !leftover.isEmpty, let error = deliver(leftover, decoder: &decoder, pump: &pump, sink: sink) { return error }
                    }
                } catch {
                    let hint = error.status == 404 || error.status == 400
                        ? " (is this IoT Hub's WebSocket endpoint? the path is \(configuration.path), subprotocol \(configuration.subprotocol))" : ""
                    return AMQPError(.transport, "\(configuration.hostName):\(configuration.port): \(error.description)\(hint)")
                }
            }
        }

        // The stream.
        var lastSendMs = MonotonicClock.milliseconds()
        var closeDeadline: Int64?
        while true {
            let (chunks, closeRequested, aborted) = outbox.withLock { box -> ([[UInt8]], Bool, Bool) in
                defer { box.chunks = [] }
                return (box.chunks, box.closeRequested, box.aborted)
            }
            if aborted { return nil }
            for chunk in chunks {
                var offset = 0
                while offset < chunk.count {
                    let end = min(chunk.count, offset + Self.maxFramePayload)
                    WebSocketFrameEncoder.append(.binary, payload: chunk[offset..<end], maskKey: SecureRandom.bytes(4), to: &pump.output)
                    offset = end
                }
            }
            if !chunks.isEmpty { lastSendMs = MonotonicClock.milliseconds() }
            if closeRequested && !closeSent {
                pump.output += WebSocketFrameEncoder.close(code: 1000, reason: "", maskKey: SecureRandom.bytes(4))
                closeSent = true
                closeDeadline = MonotonicClock.milliseconds() + Self.closeWaitMilliseconds
            }
            var timeout: Int32 = -1
            if let closeDeadline {
                let left = closeDeadline - MonotonicClock.milliseconds()
                if left <= 0 { return nil }  // the hub did not answer our Close: done anyway
                timeout = Int32(left)
            } else if let ping = configuration.pingIntervalMilliseconds {
                let due = lastSendMs + Int64(ping) - MonotonicClock.milliseconds()
                if due <= 0 {
                    pump.output += WebSocketFrameEncoder.frame(.ping, payload: [], maskKey: SecureRandom.bytes(4))
                    lastSendMs = MonotonicClock.milliseconds()
                    timeout = Int32(ping)
                } else {
                    timeout = Int32(due)
                }
            }
            switch pump.exchange(wake: wakeDescriptor, timeoutMs: timeout) {
            case .failure(let error): return closeSent ? nil : error  // after our Close, the end of TCP is the answer
            case .success(let received):
                if !received.isEmpty, let error = deliver(received, decoder: &decoder, pump: &pump, sink: sink) {
                    return error.code == .closed ? nil : error
                }
            }
        }
    }

    private var isAborted: Bool { outbox.withLock { $0.aborted } }

    /// Hands received stream bytes to the sink and answers control frames; an error (or `.closed` after the
    /// peer's Close) ends the stream.
    private func deliver(_ bytes: [UInt8], decoder: inout WebSocketFrameDecoder, pump: inout Pump, sink: AMQPByteStreamSink) -> AMQPError? {
        let events: [WebSocketFrameDecoder.Event]
        do { events = try decoder.feed(bytes) } catch {
            pump.output += WebSocketFrameEncoder.close(code: error.closeCode, reason: error.description, maskKey: SecureRandom.bytes(4))
            _ = pump.flush()
            return AMQPError(.transport, "the hub broke the WebSocket framing: \(error.description)")
        }
        for event in events {
            switch event {
            case .data(let data): sink.received(data)
            case .ping(let payload): pump.output += WebSocketFrameEncoder.frame(.pong, payload: payload, maskKey: SecureRandom.bytes(4))
            case .pong: break
            case .close(let code, let reason):
                if !closeSent {
                    pump.output += WebSocketFrameEncoder.close(code: code ?? 1000, reason: "", maskKey: SecureRandom.bytes(4))
                    closeSent = true
                    _ = pump.flush()
                }
                if code == nil || code == 1000 { return AMQPError(.closed, "the hub closed the WebSocket") }
                return AMQPError(.transport, "the hub closed the WebSocket: \(code!) \(reason)")
            }
        }
        return nil
    }

    private func open() -> Result<OpaquePointer, AMQPError> {
        var tunnel: OpaquePointer?
        var error = [CChar](repeating: 0, count: 512)
        var proxyStatus = 0
        let c = configuration
        var proxyURL: String?, user: String?, password: String?
        switch c.proxy {
        case .environment: break
        case .direct: proxyURL = ""
        case .url(let url, let u, let p): (proxyURL, user, password) = (url, u, p)
        }
        let strings = CStringArena()
        var options = fg_tunnel_options(
            host: strings.copy(c.hostName), port: Int32(c.port), address: strings.copy(c.address), ca_file: strings.copy(c.caFile),
            verify_peer: c.verifyPeer, proxy: strings.copy(proxyURL), proxy_user: strings.copy(user), proxy_password: strings.copy(password),
            connect_timeout_ms: c.connectTimeoutMilliseconds, cancel: UnsafePointer(cancel),
            client_cert: strings.copy(c.clientCertificateFile), client_key: strings.copy(c.clientKeyFile))
        let rc = withExtendedLifetime(strings) { fg_tunnel_open(&options, &tunnel, &error, error.count, &proxyStatus) }
        guard rc == 0, let tunnel else {
            let text = cString(error)
            return .failure(Self.openingError(text, proxyStatus: proxyStatus, configuration: c))
        }
        return .success(tunnel)
    }

    /// curl's words plus what to do about them.
    static func openingError(_ text: String, proxyStatus: Int, configuration c: WebSocketTunnelConfiguration) -> AMQPError {
        let target = "\(c.hostName):\(c.port)"
        switch proxyStatus {
        case 401, 407:  // 407 is the standard; some proxies (tinyproxy) answer 401
            return AMQPError(.transport, "the proxy (\(c.proxy)) refused our credentials for the tunnel to \(target) (HTTP \(proxyStatus)): check the user in [hub] proxy and the proxy password in the secrets file")
        case 400...599:
            return AMQPError(.transport, "the proxy (\(c.proxy)) refused the tunnel to \(target) (HTTP \(proxyStatus)): its rules must allow CONNECT to \(target)")
        default:
            break
        }
        if text.contains("SSL") || text.contains("certificate") {
            return AMQPError(.tls, "TLS with \(target) failed: \(text) (the hub's certificate must chain to the configured CA bundle and name \(c.hostName); a proxy that intercepts TLS is refused)")
        }
        return AMQPError(.transport, "cannot open a tunnel to \(target) (proxy: \(c.proxy)): \(text)")
    }
}

/// Moves bytes through the tunnel's non-blocking socket.
private struct Pump {
    let tunnel: OpaquePointer
    let socket: Int32
    var output: [UInt8] = []
    private var buffer = [UInt8](repeating: 0, count: 64 * 1024)

    init(tunnel: OpaquePointer, socket: Int32) {
        self.tunnel = tunnel
        self.socket = socket
    }

    /// Sends what it can; nil, or the error that ended the stream.
    mutating func flush() -> AMQPError? {
        var error = [CChar](repeating: 0, count: 256)
        var sent = 0
        defer {
            // One move of the unsent rest, not one per partial send.
            if sent == output.count { output.removeAll(keepingCapacity: true) } else if sent > 0 { output.removeFirst(sent) }
        }
        while sent < output.count {
            let n = output.withUnsafeBytes { fg_tunnel_send(tunnel, $0.baseAddress! + sent, $0.count - sent, &error, error.count) }
            if n < 0 { return AMQPError(.transport, "sending to the hub failed: \(cString(error))") }
            if n == 0 { return nil }
            sent += n
        }
        return nil
    }

    /// Waits up to `timeoutMs` (-1: no limit) for the socket or a wake, sends what is pending and returns what
    /// arrived.
    mutating func exchange(wake: Int32, timeoutMs: Int32) -> Result<[UInt8], AMQPError> {
        if let error = flush() { return .failure(error) }
        var fds = [
            pollfd(fd: socket, events: Int16(POLLIN) | (output.isEmpty ? 0 : Int16(POLLOUT)), revents: 0),
            pollfd(fd: wake, events: Int16(POLLIN), revents: 0),
        ]
        let rc = poll(&fds, 2, timeoutMs)
        if rc < 0 && errno != EINTR { return .failure(AMQPError(.transport, "poll failed (errno \(errno))")) }
        if fds[1].revents != 0 {
            var counter: UInt64 = 0
            _ = read(wake, &counter, 8)
        }
        if let error = flush() { return .failure(error) }
        guard fds[0].revents != 0 else { return .success([]) }
        var received: [UInt8] = []
        var error = [CChar](repeating: 0, count: 256)
        while true {
            let n = buffer.withUnsafeMutableBytes { fg_tunnel_recv(tunnel, $0.baseAddress, $0.count, &error, error.count) }
            if n > 0 {
                if received.isEmpty && n < buffer.count {
                    received = Array(buffer[0..<n])  // the usual case: one read
                } else {
                    received += buffer[0..<n]
                }
                continue
            }
            if n == 0 { break }
            if n == -2 {
                if !received.isEmpty { return .success(received) }  // the end shows on the next call
                return .failure(AMQPError(.transport, "the hub (or the proxy) closed the TCP connection"))
            }
            let text = cString(error)
            return .failure(AMQPError(text.contains("SSL") ? .tls : .transport, "receiving from the hub failed: \(text)"))
        }
        return .success(received)
    }
}

/// The text in a C string buffer.
func cString(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
