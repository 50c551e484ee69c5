import FieldgateCore
import HubDeviceClient
import HubEmulator
import IoTHub
import Logging
import ProtonAMQP
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A real fieldgate-hub on loopback (plain AMQP, AMQPS with a fresh CA, HTTP) for one test. Shared by the test
/// targets that need a hub (HubEmulatorTests, UplinkTests).
public final class TestHub: Sendable {
    public let running: RunningHub
    public let reactor: AMQPReactor
    public let directory: String
    public let certificates: LocalCertificates.Paths
    let configuration: HubServerConfiguration
    /// What clients of this hub registered to stop before it does, newest first; shared with a restarted hub.
    private let cleanups: Cleanups

    final class Cleanups: Sendable {
        let actions = Mutex<[@Sendable () async -> Void]>([])
    }

    /// - Parameter certificates: the CA and server certificate to use (several hubs under one CA); default: new ones
    ///   for localhost.
    public static func start(certificates: LocalCertificates.Paths? = nil,
                             configure: (inout HubServerConfiguration) -> Void = { _ in }) async throws -> TestHub {
        let dir = FileManager.default.temporaryDirectory.path + "/fieldgate-hub-test-" + AMQPUUID.random().description
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let certs = try certificates ?? LocalCertificates.create(in: dir + "/certs", dnsNames: ["localhost"])
        var config = HubServerConfiguration()
        config.hub.tokenClockSkewSeconds = 0
        config.hub.stateDirectory = dir + "/state"
        config.amqpsPort = 0
        config.amqpPort = 0
        config.httpPort = 0
        config.openServiceAPI = true
        config.tls = AMQPServerTLS(certificateFile: certs.serverCertificate, privateKeyFile: certs.serverKey)
        configure(&config)
        var logger = Logger(label: "test.hub")
        logger.logLevel = ProcessInfo.processInfo.environment["HUB_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .warning
        let running = try await HubServer(configuration: config, logger: logger).start()
        return TestHub(running: running, reactor: AMQPReactor(), directory: dir, certificates: certs, configuration: config,
                       cleanups: Cleanups())
    }

    private init(running: RunningHub, reactor: AMQPReactor, directory: String, certificates: LocalCertificates.Paths,
                 configuration: HubServerConfiguration, cleanups: Cleanups) {
        self.cleanups = cleanups
        self.running = running
        self.reactor = reactor
        self.directory = directory
        self.certificates = certificates
        self.configuration = configuration
    }

    public var core: HubCore { running.core }
    public var hostName: String { core.configuration.hostName }

    /// Registers a client's own stop to run when this hub stops, so a test that throws half-way does not leave
    /// that client running (retrying a closed port and loading the tests after it). The stop must be idempotent:
    /// a test that finishes calls it itself as well.
    public func onStop(_ action: @escaping @Sendable () async -> Void) {
        cleanups.actions.withLock { $0.append(action) }
    }

    public func stop() async {
        for action in cleanups.actions.withLock({ a in defer { a = [] }; return a }).reversed() { await action() }
        await reactor.shutdown()
        await running.stop()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Stops this hub (its state stays on disk) and starts a new one on the same ports, state and certificates,
    /// as a hub restart looks to its clients. Use the returned hub from then on.
    public func restart() async throws -> TestHub {
        await running.stop()
        var config = configuration
        // Only the AMQPS port must stay (clients reconnect to it); the others take fresh ports, so a parallel
        // test that grabbed one of the freed ephemeral ports cannot block the restart.
        config.amqpsPort = running.amqpsPort
        config.httpsPort = running.httpsPort  // WebSocket clients reconnect to it too
        config.amqpPort = running.amqpPort == nil ? nil : 0
        config.httpPort = 0
        var logger = Logger(label: "test.hub")
        logger.logLevel = .warning
        var started: RunningHub?
        var lastError: (any Error)?
        for _ in 0..<100 {  // the old listener may need a moment to let go of the port
            let server = HubServer(configuration: config, logger: logger)
            do { started = try await server.start(); break } catch {
                // A start that bound some ports before failing on another must let go of them before the next try.
                await server.stop()
                lastError = error
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        guard let started else {
            throw HubError(.badRequest, "the hub could not restart on its ports (amqps \(config.amqpsPort ?? 0), https \(config.httpsPort ?? 0)): \(lastError.map { "\($0)" } ?? "?")")
        }
        return TestHub(running: started, reactor: reactor, directory: directory, certificates: certificates, configuration: config,
                       cleanups: cleanups)
    }

    /// Creates a device and returns its primary key.
    @discardableResult
    public func createDevice(_ id: String, status: String = "enabled") async throws -> DeviceRecord {
        try await core.perform { core in try core.upsertDevice(id: id, status: status, primaryKey: nil, secondaryKey: nil) }
    }

    /// A device connection over plain AMQP (or TLS when `tls`).
    public func connect(tls: Bool = false, sasl: AMQPClientSASL = .none) async throws -> DeviceConnection {
        if tls {
            return try await DeviceConnection.connect(
                reactor: reactor, host: "127.0.0.1", port: running.amqpsPort!, hostName: hostName,
                tls: AMQPClientTLS(trustedCAFile: certificates.caCertificate, peerHostname: "localhost"), sasl: sasl)
        }
        return try await DeviceConnection.connect(reactor: reactor, host: "127.0.0.1", port: running.amqpPort!, hostName: hostName, tls: nil, sasl: sasl)
    }

    /// Connects, authenticates `deviceId` with its primary key and attaches telemetry.
    public func connectDevice(_ deviceId: String, tls: Bool = false) async throws -> DeviceConnection {
        let record = try await core.perform { try $0.device(deviceId) }
        let c = try await connect(tls: tls)
        let (status, description) = try await c.authenticate(deviceId: deviceId, key: record.authentication.symmetricKey.primaryKey)
        guard status == 200 else { throw HubError(.unauthorized, "put-token \(status) \(description)") }
        try await c.attachTelemetry(deviceId: deviceId)
        return c
    }

    /// One connection carrying several devices, each authenticated with its primary key and with telemetry attached.
    public func connectDevices(_ records: [DeviceRecord]) async throws -> DeviceConnection {
        let c = try await connect()
        for d in records {
            let (status, description) = try await c.authenticate(deviceId: d.deviceId, key: d.authentication.symmetricKey.primaryKey)
            guard status == 200 else { throw HubError(.unauthorized, "put-token \(status) \(description)") }
            try await c.attachTelemetry(deviceId: d.deviceId)
        }
        return c
    }

    public func events(from: Int64 = 1) async throws -> [ReceivedEvent] {
        try await withCheckedThrowingContinuation { cont in
            core.reactor.execute { [core] in core.readEvents(from: from, limit: 10_000, waitMilliseconds: 0) { cont.resume(returning: $0) } }
        }
    }
}

/// Runs `body` with a fresh hub and always stops it.
public func withHub(configure: (inout HubServerConfiguration) -> Void = { _ in }, _ body: (TestHub) async throws -> Void) async throws {
    let hub = try await TestHub.start(configure: configure)
    do {
        try await body(hub)
    } catch {
        await hub.stop()
        throw error
    }
    await hub.stop()
}

public func jsonMessage(_ text: String, id: String? = nil) -> AMQPMessage {
    var m = AMQPMessage(data: Array(text.utf8))
    m.messageID = id.map(AMQPValue.string)
    m.contentType = "application/json"
    m.contentEncoding = "utf-8"
    return m
}

/// Waits for the first event matching `match`, bounded by `seconds`.
public func nextEvent(_ connection: DeviceConnection, seconds: Double = 10, where match: @escaping @Sendable (DeviceEvent) -> Bool) async throws -> DeviceEvent {
    try await connection.nextEvent(timeout: .milliseconds(Int(seconds * 1000)), where: match)
}
