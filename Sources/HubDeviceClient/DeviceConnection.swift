import FieldgateCore
import IoTHub
import Logging
import ProtonAMQP
import Synchronization

/// A small IoT Hub device client on ProtonAMQP: one AMQP connection carrying any number of device identities
/// (CBS put-token, telemetry, C2D, methods, twin), in the C#-like profile of docs/iothub-protocol.md §13.2 with
/// a single session. It is the test and demo peer of fieldgate-hub; fieldgate's production uplink lives elsewhere.
public final class DeviceConnection: Sendable {
    public let hostName: String
    let reactor: AMQPReactor
    let handler: DeviceConnectionHandler
    let ref: AMQPConnectionRef

    /// Connects; returns once the hub's Open arrived (throws if the connection fails first).
    public static func connect(
        reactor: AMQPReactor, host: String, port: Int, hostName: String,
        tls: AMQPClientTLS?, sasl: AMQPClientSASL = .none, frameTrace: (@Sendable (String) -> Void)? = nil
    ) async throws -> DeviceConnection {
        let handler = DeviceConnectionHandler()
        var config = AMQPClientConfiguration(tls: tls, sasl: sasl)
        config.virtualHost = hostName
        config.frameTrace = frameTrace
        let opened = handler.openedSignal
        let ref = reactor.connect(host: host, port: port, configuration: config, handler: handler)
        try await opened.wait()
        return DeviceConnection(hostName: hostName, reactor: reactor, handler: handler, ref: ref)
    }

    /// The same over a byte stream of the caller's (AMQP over WebSockets: the stream brings its TLS).
    public static func connect(
        reactor: AMQPReactor, stream: any AMQPByteStream, hostName: String, sasl: AMQPClientSASL = .none
    ) async throws -> DeviceConnection {
        let handler = DeviceConnectionHandler()
        var config = AMQPClientConfiguration(tls: nil, sasl: sasl)
        config.virtualHost = hostName
        let opened = handler.openedSignal
        let ref = reactor.connect(stream: stream, host: hostName, configuration: config, handler: handler)
        try await opened.wait()
        return DeviceConnection(hostName: hostName, reactor: reactor, handler: handler, ref: ref)
    }

    init(hostName: String, reactor: AMQPReactor, handler: DeviceConnectionHandler, ref: AMQPConnectionRef) {
        self.hostName = hostName
        self.reactor = reactor
        self.handler = handler
        self.ref = ref
    }

    /// Every event, in order, for one consumer: C2D messages, method requests, desired pushes, link detaches,
    /// connection end.
    public var events: AsyncStream<DeviceEvent> {
        AsyncStream { [mailbox = handler.mailbox] in await mailbox.next { _ in true } }
    }

    /// The first event matching `match`, waiting up to `timeout`; throws on timeout or when the connection ends.
    public func nextEvent(timeout: Duration = .seconds(10), where match: @escaping @Sendable (DeviceEvent) -> Bool) async throws -> DeviceEvent {
        let mailbox = handler.mailbox
        let found = await withTaskGroup(of: DeviceEvent?.self) { group in
            group.addTask { await mailbox.next(where: match) }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        guard let found else { throw AMQPError(.timeout, "no matching device event within \(timeout)") }
        return found
    }

    public func close() { ref.close() }

    /// The hub's Open values and attach replies seen so far.
    public var observedPeer: ObservedPeer { handler.observed.withLock { $0 } }
    public var isClosed: Bool { ref.isClosed }

    // MARK: CBS

    /// put-token: `token` for `audience` (default: `{host}/devices/{d}` of the token). Returns the hub's status.
    public func putToken(_ token: String, audience: String, type: String = IoTHubAMQP.tokenTypeServiceBus) async throws -> (status: Int, description: String) {
        try await ensureCBS()
        return try await handler.call(ref) { h, c, resume in h.putToken(token, audience: audience, type: type, on: c, resume: resume) }
    }

    /// Mints a device-key token and puts it. Audience `{host}/devices/{d}`.
    public func authenticate(deviceId: String, key: String, ttlSeconds: Int64 = 3600, keyName: String? = nil) async throws -> (status: Int, description: String) {
        let resource = "\(hostName)/devices/\(deviceId)"
        let token = try SASToken.generate(resourceURI: resource, key: key, expiry: WallClock.nowMilliseconds() / 1000 + ttlSeconds, keyName: keyName)
        return try await putToken(token, audience: resource)
    }

    private func ensureCBS() async throws {
        try await handler.call(ref) { (h: DeviceConnectionHandler, c: AMQPConnection, resume: @escaping (Result<Void, any Error>) -> Void) in
            h.ensureCBS(on: c, resume: resume)
        }
    }

    // MARK: links

    /// Attaches a link; throws `AMQPError(.remoteClosed)` with the hub's condition when the hub refuses it.
    public func attach(_ spec: LinkSpec) async throws {
        try await handler.call(ref) { h, c, resume in h.attach(spec, on: c, resume: resume) }
    }

    public func attachTelemetry(deviceId: String) async throws {
        try await attach(.telemetry(deviceId))
    }

    public func attachCloudToDevice(deviceId: String, credit: Int = 10) async throws {
        try await attach(.cloudToDevice(deviceId, credit: credit))
    }

    /// The methods pair with one channel-correlation-id (`methods:<uuid>` by default).
    public func attachMethods(deviceId: String, channel: String? = nil, apiVersion: String? = IoTHubAMQP.apiVersion) async throws {
        let channel = channel ?? "methods:\(AMQPUUID.random())"
        try await attach(.methodRequests(deviceId, channel: channel, apiVersion: apiVersion))
        try await attach(.methodResponses(deviceId, channel: channel, apiVersion: apiVersion))
    }

    public func attachTwin(deviceId: String, channel: String? = nil, apiVersion: String? = IoTHubAMQP.apiVersion) async throws {
        let channel = channel ?? "twin:\(AMQPUUID.random())"
        try await attach(.twinResponses(deviceId, channel: channel, apiVersion: apiVersion))
        try await attach(.twinRequests(deviceId, channel: channel, apiVersion: apiVersion))
    }

    // MARK: telemetry

    /// Sends one message on the device's telemetry link and waits for the hub's outcome.
    public func send(_ message: AMQPMessage, deviceId: String) async throws -> AMQPOutcome {
        try await sendEncoded(AMQPMessageCodec.encode(message), deviceId: deviceId)
    }

    public func sendEncoded(_ bytes: [UInt8], deviceId: String) async throws -> AMQPOutcome {
        let name = LinkSpec.telemetry(deviceId).name
        return try await handler.call(ref) { h, c, resume in h.send(bytes, linkName: name, resume: resume) }
    }

    /// Sends many messages (pipelined, credit permitting) and returns their outcomes in order.
    public func sendAll(_ encoded: [[UInt8]], deviceId: String) async throws -> [AMQPOutcome] {
        let name = LinkSpec.telemetry(deviceId).name
        let collector = OutcomeCollector(count: encoded.count)
        return try await handler.call(ref) { h, c, resume in
            for (i, bytes) in encoded.enumerated() {
                h.send(bytes, linkName: name) { result in collector.record(i, result, finish: resume) }
            }
        }
    }

    /// Sends `total` copies of one pre-encoded message over the devices' telemetry links (attached before), as fast
    /// as credit allows with at most `limitPerLink` unsettled per link, and returns when the hub accepted them all:
    /// Proton and the wire with nothing of fieldgate's (the benchmarks' baseline).
    public func stream(_ encoded: [UInt8], deviceIds: [String], total: Int, limitPerLink: Int) async throws -> Int {
        let names = deviceIds.map { LinkSpec.telemetry($0).name }
        return try await handler.call(ref) { h, _, resume in h.startStream(encoded, linkNames: names, total: total, limitPerLink: limitPerLink, resume: resume) }
    }

    // MARK: C2D

    /// Settles a received C2D message: accepted = complete, released = abandon, rejected = reject.
    public func settle(_ message: ReceivedCloudToDevice, _ outcome: AMQPOutcome) {
        ref.execute { [handler] _ in handler.settle(message.token, outcome) }
    }

    // MARK: methods

    public func respond(to request: MethodRequest, status: Int32, payload: JSONValue) async throws {
        var m = AMQPMessage(data: payload.bytes)
        m.correlationID = .uuid(request.requestID)
        m.applicationProperties = [IoTHubAMQP.methodStatusProperty: .int(status)]
        let name = LinkSpec.methodResponses(request.deviceId, channel: "", apiVersion: nil).name
        let encoded = AMQPMessageCodec.encode(m)
        _ = try await handler.call(ref) { h, c, resume in h.send(encoded, linkName: name, resume: resume) }
    }

    /// Sends a raw message on the method response link (tests of the hub's checks).
    public func sendMethodResponse(_ message: AMQPMessage, deviceId: String) async throws {
        let name = LinkSpec.methodResponses(deviceId, channel: "", apiVersion: nil).name
        _ = try await handler.call(ref) { h, c, resume in h.send(AMQPMessageCodec.encode(message), linkName: name, resume: resume) }
    }

    // MARK: twin

    /// A twin request (GET, PATCH /properties/reported, PUT/DELETE /notifications/twin/properties/desired).
    public func twinRequest(deviceId: String, operation: String, resource: String? = nil, body: JSONValue? = nil) async throws -> TwinResponse {
        var m = AMQPMessage()
        let correlation = AMQPUUID.random().description
        m.correlationID = .string(correlation)
        var annotations: [AMQPValue: AMQPValue] = [.symbol("operation"): .string(operation)]
        if let resource { annotations[.symbol("resource")] = .string(resource) }
        m.messageAnnotations = annotations
        if let body { m.body = .data([body.bytes]) }
        let name = LinkSpec.twinRequests(deviceId, channel: "", apiVersion: nil).name
        let bytes = AMQPMessageCodec.encode(m)
        return try await handler.call(ref) { h, c, resume in h.twinRequest(bytes, correlation: correlation, linkName: name, resume: resume) }
    }

    public func getTwin(deviceId: String) async throws -> TwinResponse {
        try await twinRequest(deviceId: deviceId, operation: "GET")
    }

    public func patchReported(deviceId: String, _ patch: JSONValue) async throws -> TwinResponse {
        try await twinRequest(deviceId: deviceId, operation: "PATCH", resource: "/properties/reported", body: patch)
    }

    public func subscribeDesired(deviceId: String) async throws -> TwinResponse {
        try await twinRequest(deviceId: deviceId, operation: "PUT", resource: "/notifications/twin/properties/desired")
    }
}

/// Collects N outcomes and finishes once.
final class OutcomeCollector: @unchecked Sendable {
    // @unchecked: used on the reactor thread only.
    private var outcomes: [AMQPOutcome?]
    private var remaining: Int
    private var failed = false

    init(count: Int) {
        outcomes = Array(repeating: nil, count: count)
        remaining = count
    }

    func record(_ i: Int, _ result: Result<AMQPOutcome, any Error>, finish: (Result<[AMQPOutcome], any Error>) -> Void) {
        guard !failed else { return }
        switch result {
        case .success(let o):
            outcomes[i] = o
            remaining -= 1
            if remaining == 0 { finish(.success(outcomes.map { $0! })) }
        case .failure(let e):
            failed = true
            finish(.failure(e))
        }
    }
}
