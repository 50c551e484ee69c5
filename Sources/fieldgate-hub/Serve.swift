import ArgumentParser
import FieldgateCore
import HubEmulator
import IoTHub
import Logging
import ProtonAMQP
import ServiceLifecycle
import UnixSignals

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the hub: AMQPS for devices, HTTP for the service side.")

    @Option(help: "The hub's host name; tokens and TLS certificates must name it.")
    var hostName = "localhost"
    @Option(help: "Address to bind.")
    var bind = "127.0.0.1"
    @Option(help: "AMQPS (TLS) port for devices.")
    var amqpsPort = 5671
    @Flag(help: "Do not listen on AMQPS.")
    var noAmqps = false
    @Option(help: "Also listen for plain AMQP on this port (tests only; no TLS).")
    var amqpPort: Int?
    @Option(help: "Service API (HTTP) port.")
    var httpPort = 8080
    @Option(help: "Also serve HTTPS on this port, with the AMQPS certificate: the service API (the official service SDKs call https://{host}, 443) and AMQP over WebSockets for devices (/$iothub/websocket, subprotocol AMQPWSB10).")
    var httpsPort: Int?
    @Option(help: "Directory with server.pem and server.key (created by `fieldgate-hub certs`). Default: <state-dir>/certs.")
    var certsDir: String?
    @Option(help: "Where devices, twins and pending C2D messages persist.")
    var stateDir = ProcessInfo.processInfo.environment["FIELDGATE_HUB_STATE"] ?? "/var/lib/fieldgate-hub"
    @Flag(help: "Serve the service API without authorization (loopback development only).")
    var openServiceApi = false
    @Option(help: "Tolerated token clock skew in seconds.")
    var tokenSkew: Int64 = 300
    @Option(help: "Received events kept for monitor-events.")
    var eventLogCapacity = 100_000
    @Option(help: "Device authentications per second (the hub's device-connection throttle); 0 = unlimited.")
    var deviceConnectRate = 0
    @Option(help: "Daily message quota in 4 KB units, as IoT Hub bills D2C (S1: 400000 per unit); reset at 00:00 UTC; 0 = unlimited.")
    var dailyQuota = 0
    @Option(help: "The hub's tier: standard, or basic (no C2D, twins or direct methods: their links and service calls are refused with 403010, as a Basic-tier IoT Hub refuses them).")
    var tier: HubTier = .standard
    @Flag(help: "Route device twin change events (reported-property updates) to the events endpoint, as an IoT Hub route with source TwinChangeEvents does; monitor-events shows them.")
    var twinChangeEvents = false
    @Flag(help: "No storage account for file upload: device file-upload requests are refused with 400022, as by a hub without one.")
    var noStorage = false
    @Option(help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel = "info"

    func run() async throws {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var logger = Logger(label: "fieldgate.hub")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        var config = HubServerConfiguration()
        config.hub.hostName = hostName
        config.hub.stateDirectory = stateDir
        config.hub.tokenClockSkewSeconds = tokenSkew
        config.hub.eventLogCapacity = eventLogCapacity
        config.hub.deviceAuthenticationsPerSecond = deviceConnectRate > 0 ? deviceConnectRate : nil
        config.hub.dailyMessageQuota = dailyQuota > 0 ? dailyQuota : nil
        config.hub.tier = tier
        config.hub.fileUploadStorage = !noStorage
        config.hub.twinChangeEvents = twinChangeEvents
        config.bindHost = bind
        config.amqpsPort = noAmqps ? nil : amqpsPort
        config.amqpPort = amqpPort
        config.httpPort = httpPort
        config.httpsPort = httpsPort
        if httpsPort != nil && noAmqps { throw CLIError("--https-port uses the AMQPS certificate: drop --no-amqps") }
        config.openServiceAPI = openServiceApi
        if !noAmqps {
            let dir = certsDir ?? stateDir + "/certs"
            let cert = dir + "/server.pem", key = dir + "/server.key"
            guard FileManager.default.fileExists(atPath: cert), FileManager.default.fileExists(atPath: key) else {
                throw CLIError("no TLS certificate in \(dir): run `fieldgate-hub certs --dir \(dir) --dns \(hostName)` first, or pass --no-amqps with --amqp-port for plain AMQP")
            }
            config.tls = AMQPServerTLS(certificateFile: cert, privateKeyFile: key)
        }
        let server = HubServer(configuration: config, logger: logger)
        let running = try await server.start()
        if let owner = try await running.core.perform({ $0.policy("iothubowner") }) {
            let cs = ConnectionString(hostName: hostName, sharedAccessKeyName: owner.keyName, sharedAccessKey: owner.primaryKey).description
            let path = stateDir + "/service-connection-string"
            try Data((cs + "\n").utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
            logger.info("service connection string written to \(path)")
        }
        say("fieldgate-hub ready: host \(hostName), amqps \(running.amqpsPort.map(String.init) ?? "off"), amqp \(running.amqpPort.map(String.init) ?? "off"), http \(running.httpPort)\(running.httpsPort.map { ", https \($0)" } ?? "")")
        let group = ServiceGroup(services: [WaitForShutdown()], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await group.run()
        await running.stop()
    }
}

/// Holds the process until SIGTERM/SIGINT.
struct WaitForShutdown: Service {
    func run() async throws { try? await gracefulShutdown() }
}

struct Certs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create a local CA and a server certificate (DNS SANs) for the hub's TLS.")

    @Option(help: "Output directory (ca.pem, ca.key, server.pem, server.key).")
    var dir = (ProcessInfo.processInfo.environment["FIELDGATE_HUB_STATE"] ?? "/var/lib/fieldgate-hub") + "/certs"
    @Option(name: .customLong("dns"), help: "DNS name for the server certificate (repeatable). Proton matches DNS names only, not IP addresses.")
    var dnsNames: [String] = ["localhost"]

    func run() async throws {
        let paths = try LocalCertificates.create(in: dir, dnsNames: dnsNames)
        say("CA certificate (give this to devices/gateways): \(paths.caCertificate)")
        say("server certificate: \(paths.serverCertificate) (DNS: \(dnsNames.joined(separator: ", ")))")
        say("server key: \(paths.serverKey)")
    }
}

extension HubTier: ExpressibleByArgument {}
