internal import CProton

/// Connections over byte streams of our own (docs/reach.md §2): Proton's AMQP engine through `pn_connection_driver`,
/// on the reactor thread like every other connection.
extension AMQPReactor {
    /// Opens a client connection over `stream` (which carries its own TLS, e.g. a WebSocket tunnel): Proton speaks
    /// AMQP (and SASL) through `pn_connection_driver`. `configuration.tls` must be nil: the stream secures itself.
    public func connect(
        stream: any AMQPByteStream, host: String, configuration: AMQPClientConfiguration, handler: any AMQPConnectionHandler
    ) -> AMQPConnectionRef {
        precondition(configuration.tls == nil, "a byte stream brings its own TLS")
        let context = ConnectionContext(handler: handler, listener: nil)
        let box = UncheckedBox(configuration)
        execute { [self] in
            let configuration = box.value
            let (c, t) = Self.newClient(host: host, configuration, context: context)
            pn_connection_open(c)
            startDriver(context: context, stream: stream, connection: c, transport: t)
        }
        return AMQPConnectionRef(context: context)
    }

    /// Serves one accepted byte stream (a WebSocket a listener of the caller's upgraded) as `configuration` says,
    /// with a handler from `makeHandler`, called on the reactor thread.
    public func accept(
        stream: any AMQPByteStream, configuration config: AMQPListenerConfiguration,
        makeHandler: @escaping @Sendable () -> any AMQPConnectionHandler
    ) {
        execute { [self] in
            let (c, t, context) = Self.newServer(ListenerContext(configuration: config, sslDomain: nil, makeHandler: makeHandler))
            startDriver(context: context, stream: stream, connection: c, transport: t)
        }
    }

    private func startDriver(context: ConnectionContext, stream: any AMQPByteStream, connection c: OpaquePointer, transport t: OpaquePointer) {
        if stopping {
            stream.abort()
            pn_transport_free(t)
            pn_connection_free(c)
            return
        }
        let driver = StreamDriver(reactor: self, context: context, stream: stream, connection: c, transport: t)
        contexts[key(c)] = context
        drivers[key(c)] = driver
        context.attach(SendablePointer(raw: c)) { [weak driver] in driver?.wake() }
        driver.start()
    }

    /// Cuts every connection that runs over a byte stream (a server stopping its WebSocket endpoint first, so the
    /// HTTP server holding those sockets can finish).
    public func abortStreamConnections() async {
        _ = try? await perform { [self] in
            for driver in Array(drivers.values) { driver.abort() }
        }
    }

    func driverFinished(_ driver: StreamDriver) {
        drivers[key(driver.connection)] = nil
        contexts[key(driver.connection)] = nil
    }
}
