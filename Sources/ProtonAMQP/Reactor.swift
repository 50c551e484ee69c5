internal import CProton
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A raw pointer that may cross threads because every use is either a documented thread-safe Proton call
/// (`pn_proactor_*`, `pn_connection_wake`) or happens on the reactor thread.
struct SendablePointer: @unchecked Sendable {
    let raw: OpaquePointer
}

/// One Proton proactor and the one dedicated thread that drives it.
///
/// Threading model: every `pn_*` object of a connection is touched only on the reactor thread, in event handlers or
/// in jobs. Other threads reach a connection through `AMQPConnectionRef.execute` (a locked inbox plus
/// `pn_connection_wake`) and the reactor itself through `execute` (a locked inbox plus `pn_proactor_interrupt`).
/// Because there is a single thread, state shared by several connections (an emulator's registry) may live on it
/// without locks.
public final class AMQPReactor: @unchecked Sendable {
    // @unchecked: mutable state below is confined to the reactor thread; cross-thread state sits in `inbox`.
    let proactor: SendablePointer
    let logger: Logger
    private let inbox = Mutex<ReactorInbox>(ReactorInbox())
    private let threadIdentity = Mutex<pthread_t?>(nil)

    // Reactor-thread state (internal for the extension in Reactor+Streams.swift).
    var contexts: [UInt: ConnectionContext] = [:]
    private var listeners: [UInt: ListenerContext] = [:]
    /// Connections over byte streams of our own (pn_connection_driver), by connection.
    var drivers: [UInt: StreamDriver] = [:]
    private var timers = TimerQueue()
    /// Client TLS settings by CA file (its identity and change time) and verification: a CA bundle is parsed once,
    /// not for every connection, and again only when the file changes. Freed when the reactor stops.
    private var clientTLSDomains: [String: (version: String, domain: OpaquePointer)] = [:]
    var stopping = false

    private struct ReactorInbox {
        var jobs: [@Sendable () -> Void] = []
        var stopRequested = false
        var finished = false
        var finishWaiters: [CheckedContinuation<Void, Never>] = []
    }

    public init(logger: Logger = Logger(label: "fieldgate.amqp")) {
        self.proactor = SendablePointer(raw: pn_proactor()!)
        self.logger = logger
        startThread()
    }

    /// True when called on the reactor thread.
    public var isReactorThread: Bool {
        guard let t = threadIdentity.withLock({ $0 }) else { return false }
        return pthread_equal(t, pthread_self()) != 0
    }

    /// Runs `job` on the reactor thread (soon, in order). Returns false, dropping the job, once the reactor has
    /// shut down.
    @discardableResult
    public func execute(_ job: @escaping @Sendable () -> Void) -> Bool {
        // The reactor takes every queued job on one interrupt, so only the first job of a batch interrupts it.
        let (accepted, interrupt) = inbox.withLock { state -> (Bool, Bool) in
            guard !state.finished && !state.stopRequested else { return (false, false) }
            state.jobs.append(job)
            return (true, state.jobs.count == 1)
        }
        if interrupt { pn_proactor_interrupt(proactor.raw) }
        return accepted
    }

    /// Runs `body` on the reactor thread and returns its result; throws `.closed` after shutdown.
    public func perform<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (cont: CheckedContinuation<T, any Error>) in
            if !execute({ cont.resume(with: Result { try body() }) }) {
                cont.resume(throwing: AMQPError(.closed, "the AMQP reactor has shut down"))
            }
        }
    }

    /// Calls `job` on the reactor thread after `delay`. Cancel with the returned timer.
    @discardableResult
    public func schedule(after delay: Duration, _ job: @escaping @Sendable () -> Void) -> AMQPTimer {
        let timer = AMQPTimer()
        let deadline = ContinuousClock.now.advanced(by: delay)
        let add: @Sendable () -> Void = { [self] in
            timers.insert(deadline: deadline, timer: timer, job: job)
            armTimeout()
        }
        if isReactorThread { add() } else { execute(add) }
        return timer
    }

    /// Stops every listener and connection, then the thread. Safe to call more than once.
    public func shutdown() async {
        await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
            let alreadyFinished = inbox.withLock { state -> Bool in
                if state.finished { return true }
                state.stopRequested = true
                state.finishWaiters.append(cont)
                return false
            }
            if alreadyFinished { cont.resume() } else { pn_proactor_interrupt(proactor.raw) }
        }
    }

    // MARK: listening and connecting

    /// Listens on `host:port` (port 0 = any free port) and answers connections per `configuration`; each accepted
    /// connection gets a handler from `makeHandler`, called on the reactor thread.
    public func listen(
        host: String, port: Int, configuration: AMQPListenerConfiguration,
        makeHandler: @escaping @Sendable () -> any AMQPConnectionHandler
    ) async throws -> AMQPListener {
        let sslDomain: SendablePointer?
        if let tls = configuration.tls {
            let domain = pn_ssl_domain(PN_SSL_MODE_SERVER)!
            guard pn_ssl_domain_set_credentials(domain, tls.certificateFile, tls.privateKeyFile, nil) == 0 else {
                pn_ssl_domain_free(domain)
                throw AMQPError(.tls, "cannot load TLS certificate \(tls.certificateFile) / key \(tls.privateKeyFile)")
            }
            sslDomain = SendablePointer(raw: domain)
        } else {
            sslDomain = nil
        }
        let listenerContext = ListenerContext(configuration: configuration, sslDomain: sslDomain, makeHandler: makeHandler)
        return try await withCheckedThrowingContinuation { (cont: CheckedContinuation<AMQPListener, any Error>) in
            execute { [self] in
                let l = pn_listener()!
                listenerContext.raw = SendablePointer(raw: l)
                listenerContext.opened = { result in cont.resume(with: result.map { AMQPListener(reactor: self, context: listenerContext, port: $0) }) }
                listeners[UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(l)))] = listenerContext
                pn_proactor_listen(proactor.raw, l, "\(host):\(port)", 128)
            }
        }
    }

    /// Opens a client connection; `handler` hears its events on the reactor thread.
    public func connect(
        host: String, port: Int, configuration: AMQPClientConfiguration, handler: any AMQPConnectionHandler
    ) -> AMQPConnectionRef {
        let context = ConnectionContext(handler: handler, listener: nil)
        let box = UncheckedBox((context, configuration))
        execute { [self] in
            let (context, configuration) = box.value
            let (c, t) = Self.newClient(host: host, configuration, context: context)
            if let tls = configuration.tls {
                let ssl = pn_ssl(t)
                pn_ssl_init(ssl, clientTLSDomain(tls), nil)  // the transport takes its own reference
                pn_ssl_set_peer_hostname(ssl, tls.peerHostname ?? host)
            }
            register(context, connection: c)
            pn_connection_open(c)
            pn_proactor_connect2(proactor.raw, c, t, "\(host):\(port)")
        }
        return AMQPConnectionRef(context: context)
    }

    private func clientTLSDomain(_ tls: AMQPClientTLS) -> OpaquePointer {
        let key = (tls.trustedCAFile ?? "") + (tls.verifyPeer ? "|verify" : "|anonymous")
            + "|" + (tls.certificateFile ?? "") + "|" + (tls.privateKeyFile ?? "")
        var version = ""
        // A changed CA bundle, certificate or key (a renewal) makes new settings.
        for file in [tls.trustedCAFile, tls.certificateFile, tls.privateKeyFile].compactMap({ $0 }) {
            var st = stat()
            if stat(file, &st) == 0 { version += "\(st.st_dev)|\(st.st_ino)|\(st.st_size)|\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec);" }
        }
        if let cached = clientTLSDomains[key], cached.version == version { return cached.domain }
        // New, or the file changed: fresh settings (connections made with the old ones keep their own reference).
        if let stale = clientTLSDomains[key] { pn_ssl_domain_free(stale.domain) }
        let domain = pn_ssl_domain(PN_SSL_MODE_CLIENT)!
        if let ca = tls.trustedCAFile { pn_ssl_domain_set_trusted_ca_db(domain, ca) }
        if let certificate = tls.certificateFile, let key = tls.privateKeyFile, pn_ssl_domain_set_credentials(domain, certificate, key, nil) != 0 {
            // The handshake goes ahead without a certificate and the hub refuses the identity; the log says why.
            logger.error("cannot load the client certificate \(certificate) with key \(key): both must be readable PEM and belong together")
        }
        pn_ssl_domain_set_peer_authentication(domain, tls.verifyPeer ? PN_SSL_VERIFY_PEER_NAME : PN_SSL_ANONYMOUS_PEER, nil)
        clientTLSDomains[key] = (version, domain)
        return domain
    }

    // MARK: the thread

    private func startThread() {
        let unmanaged = Unmanaged.passRetained(self)  // +1 released when the thread ends
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { arg in
            let reactor = Unmanaged<AMQPReactor>.fromOpaque(arg!).takeRetainedValue()
            reactor.run()
            return nil
        }, unmanaged.toOpaque())
        precondition(rc == 0, "cannot start the AMQP reactor thread (errno \(rc))")
        pthread_detach(tid)
        threadIdentity.withLock { $0 = tid }
    }

    private func run() {
        threadIdentity.withLock { $0 = pthread_self() }
        var running = true
        while running {
            let batch = pn_proactor_wait(proactor.raw)
            while let event = pn_event_batch_next(batch) {
                if !dispatch(event) { running = false }
            }
            pn_proactor_done(proactor.raw, batch)
            if stopping && contexts.isEmpty && listeners.isEmpty { running = false }
        }
        for cached in clientTLSDomains.values { pn_ssl_domain_free(cached.domain) }
        clientTLSDomains = [:]
        pn_proactor_free(proactor.raw)
        let waiters = inbox.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.finished = true
            defer { state.finishWaiters = [] }
            return state.finishWaiters
        }
        for w in waiters { w.resume() }
    }

    /// Handles one event; false ends the loop.
    private func dispatch(_ event: OpaquePointer) -> Bool {
        let type = pn_event_type(event)
        switch type {
        case PN_PROACTOR_INTERRUPT:
            let (jobs, stop) = inbox.withLock { state in
                defer { state.jobs = [] }
                return (state.jobs, state.stopRequested)
            }
            for job in jobs { job() }
            if stop && !stopping {
                stopping = true
                for driver in Array(drivers.values) { driver.abort() }
                timers.removeAll()
                pn_proactor_cancel_timeout(proactor.raw)
                pn_proactor_disconnect(proactor.raw, nil)
            }
            return true
        case PN_PROACTOR_TIMEOUT:
            for job in timers.popDue(now: .now) { job() }
            armTimeout()
            return true
        case PN_PROACTOR_INACTIVE:
            return !stopping
        case PN_LISTENER_OPEN, PN_LISTENER_ACCEPT, PN_LISTENER_CLOSE:
            handleListenerEvent(type, event)
            return true
        default:
            break
        }
        guard let c = pn_event_connection(event), let context = contexts[key(c)] else { return true }
        handleConnectionEvent(type, event, connection: AMQPConnection(raw: c, context: context))
        return true
    }

    private func handleListenerEvent(_ type: pn_event_type_t, _ event: OpaquePointer) {
        guard let l = pn_event_listener(event), let lc = listeners[key(l)] else { return }
        switch type {
        case PN_LISTENER_OPEN:
            var port = 0
            if let addr = pn_listener_addr(l) {
                var host = [CChar](repeating: 0, count: 256)
                var portBuf = [CChar](repeating: 0, count: 32)
                pn_netaddr_host_port(addr, &host, host.count, &portBuf, portBuf.count)
                port = Int(String(decoding: portBuf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)) ?? 0
            }
            lc.opened?(.success(port))
            lc.opened = nil
        case PN_LISTENER_ACCEPT:
            acceptConnection(on: l, context: lc)
        case PN_LISTENER_CLOSE:
            let condition = readCondition(pn_listener_condition(l))
            if let opened = lc.opened {
                opened(.failure(AMQPError(.transport, "cannot listen: \(condition?.description ?? "unknown error")")))
                lc.opened = nil
            } else if let condition {
                logger.warning("AMQP listener closed: \(condition.name) \(condition.description)")
            }
            listeners[key(l)] = nil
            lc.closed()
        default:
            break
        }
    }

    private func acceptConnection(on l: OpaquePointer, context lc: ListenerContext) {
        let (c, t, context) = Self.newServer(lc)
        if let domain = lc.sslDomain { pn_ssl_init(pn_ssl(t), domain.raw, nil) }
        register(context, connection: c)
        pn_listener_accept2(l, c, t)
    }

    /// A client connection and its transport as `configuration` says (Open fields, SASL, frame trace), whatever carries
    /// its bytes.
    static func newClient(host: String, _ configuration: AMQPClientConfiguration, context: ConnectionContext) -> (OpaquePointer, OpaquePointer) {
        let c = pn_connection()!
        let t = pn_transport()!
        pn_connection_set_container(c, configuration.containerID)
        pn_connection_set_hostname(c, configuration.virtualHost ?? host)
        // Proton advertises half the idle timeout set on the transport (docs/iothub-protocol.md §16).
        pn_transport_set_idle_timeout(t, configuration.idleTimeoutMilliseconds &* 2)
        pn_transport_set_max_frame(t, configuration.maxFrameSize)
        switch configuration.sasl {
        case .none:
            break  // no pn_sasl(): the transport sends the plain AMQP header
        case .anonymous:
            pn_sasl_allowed_mechs(pn_sasl(t), "ANONYMOUS")
        case .plain(let user, let password):
            pn_connection_set_user(c, user)
            pn_connection_set_password(c, password)
            let s = pn_sasl(t)
            pn_sasl_allowed_mechs(s, "PLAIN")
            pn_sasl_set_allow_insecure_mechs(s, true)
        case .mssbcbs:
            _ = pn_sasl(t)
            pnx_sasl_set_implementation(t, SASLPlugin.implementation, Unmanaged.passUnretained(context).toOpaque())
        }
        if let trace = configuration.frameTrace { FrameTracer.start(on: t, trace) }
        return (c, t)
    }

    /// An accepted connection, its transport and context as the listener's configuration says (Open and Begin
    /// fields, SASL), whatever carries its bytes.
    static func newServer(_ lc: ListenerContext) -> (OpaquePointer, OpaquePointer, ConnectionContext) {
        let config = lc.configuration
        let c = pn_connection()!
        let t = pn_transport()!
        pn_transport_set_server(t)
        pn_transport_set_max_frame(t, config.maxFrameSize)
        pn_transport_set_channel_max(t, config.channelMax)
        pn_transport_set_idle_timeout(t, config.idleTimeoutMilliseconds &* 2)
        pn_connection_set_container(c, config.containerID)
        let context = ConnectionContext(handler: lc.makeHandler(), listener: lc)
        if !config.saslMechanisms.isEmpty {
            _ = pn_sasl(t)
            pnx_sasl_set_implementation(t, SASLPlugin.implementation, Unmanaged.passUnretained(context).toOpaque())
            pn_transport_require_auth(t, !config.allowNoSASL)
        }
        return (c, t, context)
    }

    private func register(_ context: ConnectionContext, connection c: OpaquePointer) {
        contexts[key(c)] = context
        let raw = SendablePointer(raw: c)
        context.attach(raw) { pn_connection_wake(raw.raw) }
    }

    func handleConnectionEvent(_ type: pn_event_type_t, _ event: OpaquePointer, connection: AMQPConnection) {
        let context = connection.context
        let c = connection.raw
        let isServer = context.listener != nil
        func deliver(_ e: AMQPEvent) { context.handler.handle(e, on: connection) }

        switch type {
        case PN_CONNECTION_WAKE:
            for job in context.takeJobs() { job(connection) }
        case PN_CONNECTION_REMOTE_OPEN:
            if isServer && pn_connection_state(c) & Int32(PN_LOCAL_UNINIT) != 0 { pn_connection_open(c) }
            deliver(.connectionOpened)
        case PN_CONNECTION_REMOTE_CLOSE:
            deliver(.connectionClosed(readCondition(pn_connection_remote_condition(c))))
            if pn_connection_state(c) & Int32(PN_LOCAL_CLOSED) == 0 { pn_connection_close(c) }
        case PN_SESSION_REMOTE_OPEN:
            let s = pn_event_session(event)!
            if pn_session_state(s) & Int32(PN_LOCAL_UNINIT) != 0 {
                if let lc = context.listener {
                    pn_session_set_incoming_capacity(s, lc.configuration.sessionIncomingWindow * Int(lc.configuration.maxFrameSize))
                }
                pn_session_open(s)
            }
            deliver(.sessionOpened(AMQPSession(raw: s)))
        case PN_SESSION_REMOTE_CLOSE:
            let s = pn_event_session(event)!
            deliver(.sessionClosed(AMQPSession(raw: s)))
            if pn_session_state(s) & Int32(PN_LOCAL_CLOSED) == 0 { pn_session_close(s) }
        case PN_LINK_REMOTE_OPEN:
            deliver(.linkOpened(AMQPLink(raw: pn_event_link(event)!)))
        case PN_LINK_REMOTE_CLOSE, PN_LINK_REMOTE_DETACH:
            let l = pn_event_link(event)!
            deliver(.linkClosed(AMQPLink(raw: l), readCondition(pn_link_remote_condition(l))))
            if pn_link_state(l) & Int32(PN_LOCAL_CLOSED) == 0 { pn_link_close(l) }
        case PN_LINK_FINAL:
            deliver(.linkFinal(AMQPLink(raw: pn_event_link(event)!)))
        case PN_LINK_FLOW:
            deliver(.linkFlow(AMQPLink(raw: pn_event_link(event)!)))
        case PN_DELIVERY:
            let d = pn_event_delivery(event)!
            let l = pn_delivery_link(d)!
            if pn_link_is_receiver(l) {
                if pn_delivery_aborted(d) {
                    pn_delivery_settle(d)
                } else if pn_delivery_readable(d) && !pn_delivery_partial(d) {
                    let bytes = readAll(l, delivery: d)
                    pn_link_advance(l)
                    deliver(.message(AMQPDelivery(raw: d), bytes: bytes))
                }
            } else if pn_delivery_updated(d) {
                pn_delivery_clear(d)
                deliver(.deliveryUpdated(AMQPDelivery(raw: d)))
            }
        case PN_TRANSPORT_ERROR:
            if let t = pn_event_transport(event), let cond = readCondition(pn_transport_condition(t)) {
                let code: AMQPError.Code = cond.description.contains("SSL") ? .tls : .transport
                context.transportError = AMQPError(code, "\(cond.name): \(cond.description)", condition: cond.name)
            }
        case PN_TRANSPORT_CLOSED:
            if let t = pn_event_transport(event) { FrameTracer.stop(on: t) }
            context.detach()
            contexts[key(c)] = nil
            deliver(.transportClosed(context.transportError))
        default:
            break
        }
    }

    /// Reads a complete delivery's bytes, sized by what Proton reports pending (no over-allocation: callers may keep
    /// the array).
    private func readAll(_ link: OpaquePointer, delivery: OpaquePointer) -> [UInt8] {
        var out: [UInt8] = []
        while true {
            let pending = pn_delivery_pending(delivery)
            guard pending > 0 else { break }
            let filled = out.count
            out.append(contentsOf: repeatElement(0, count: pending))
            let n = out.withUnsafeMutableBufferPointer { buf in
                buf.withMemoryRebound(to: CChar.self) { pn_link_recv(link, $0.baseAddress! + filled, pending) }
            }
            guard n > 0 else {
                out.removeSubrange(filled...)
                break  // PN_EOS or an error
            }
            if n < pending { out.removeSubrange((filled + n)...) }
        }
        return out
    }

    private func armTimeout() {
        guard let next = timers.nextDeadline() else {
            pn_proactor_cancel_timeout(proactor.raw)
            return
        }
        let remaining = ContinuousClock.now.duration(to: next)
        let ms = max(0, remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000)
        pn_proactor_set_timeout(proactor.raw, pn_millis_t(min(ms, Int64(UInt32.max))))
    }

    func key(_ p: OpaquePointer) -> UInt { UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(p))) }

    // Called by a listener handle.
    func closeListener(_ context: ListenerContext) {
        execute { if let l = context.raw { pn_listener_close(l.raw) } }
    }
}
