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
    @Flag(help: "AMQPS with Proton's own TLS and no client certificate asked for on the HTTPS port: no X.509 devices, but less CPU per message (the throughput benchmarks use it so the hub stays out of their way).")
    var noClientCertificates = false
    @Option(help: "Serve the Device Provisioning Service (HTTPS, the AMQPS certificate) on this port, linked to this hub and every --linked-hub; devices register at https://{host}:{port}/{id-scope}/registrations/{id}/register.")
    var dpsPort: Int?
    @Option(help: "The DPS id scope.")
    var idScope = "0ne00FIELD1"
    @Option(help: "The Retry-After (seconds) DPS answers a register request with, before the operation's status.")
    var dpsRetryAfter = 3
    @Option(help: "Another emulated hub in this process, HOST=AMQPS_PORT (repeatable): its own registry under <state-dir>/hubs/HOST, linked to DPS for allocation; the server certificate must name HOST.")
    var linkedHub: [String] = []
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
        config.clientCertificates = !noClientCertificates
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
        var linked: [RunningHub] = []
        for spec in linkedHub {
            let parts = spec.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, let port = Int(parts[1]), (0...65535).contains(port) else {
                throw CLIError("--linked-hub \(spec): use HOST=AMQPS_PORT, e.g. hub-b.localdomain=5681")
            }
            guard config.tls != nil else { throw CLIError("--linked-hub needs AMQPS (drop --no-amqps)") }
            var other = config
            other.hub.hostName = parts[0]
            other.hub.stateDirectory = stateDir + "/hubs/" + parts[0]
            other.amqpsPort = port
            other.amqpPort = nil
            other.httpPort = 0
            other.httpsPort = nil
            let hub = try await HubServer(configuration: other, logger: logger).start()
            linked.append(hub)
            say("linked hub \(parts[0]): amqps \(hub.amqpsPort.map(String.init) ?? "-"), http \(hub.httpPort) (its service connection string: \(other.hub.stateDirectory!)/service-connection-string)")
            try await writeServiceConnectionString(hub, hostName: parts[0], directory: other.hub.stateDirectory!, logger: logger)
        }
        var dps: ProvisioningServer?
        if let dpsPort {
            guard let tls = config.tls else { throw CLIError("--dps-port serves HTTPS with the AMQPS certificate: drop --no-amqps") }
            var c = ProvisioningServerConfiguration(tls: tls)
            c.idScope = idScope
            c.hostName = hostName
            c.bindHost = bind
            c.port = dpsPort
            c.retryAfterSeconds = dpsRetryAfter
            c.tokenClockSkewSeconds = tokenSkew
            c.openServiceAPI = openServiceApi
            c.stateDirectory = stateDir + "/dps"
            let server = ProvisioningServer(configuration: c, linkedHubs: [running.core] + linked.map(\.core), logger: logger)
            let port = try await server.start()
            let cs = "HostName=\(hostName);SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=\(server.serviceKey)"
            let path = stateDir + "/dps-connection-string"
            try Data((cs + "\n").utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
            say("DPS: id scope \(idScope), https \(port), global endpoint \(hostName):\(port) (service connection string in \(path))")
            dps = server
        }
        try await writeServiceConnectionString(running, hostName: hostName, directory: stateDir, logger: logger)
        say("fieldgate-hub ready: host \(hostName), amqps \(running.amqpsPort.map(String.init) ?? "off"), amqp \(running.amqpPort.map(String.init) ?? "off"), http \(running.httpPort)\(running.httpsPort.map { ", https \($0)" } ?? "")")
        let group = ServiceGroup(services: [WaitForShutdown()], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await group.run()
        await dps?.stop()
        for hub in linked { await hub.stop() }
        await running.stop()
    }

    private func writeServiceConnectionString(_ hub: RunningHub, hostName: String, directory: String, logger: Logger) async throws {
        guard let owner = try await hub.core.perform({ $0.policy("iothubowner") }) else { return }
        let cs = ConnectionString(hostName: hostName, sharedAccessKeyName: owner.keyName, sharedAccessKey: owner.primaryKey).description
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = directory + "/service-connection-string"
        try Data((cs + "\n").utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
        logger.info("service connection string written to \(path)")
    }
}

/// Holds the process until SIGTERM/SIGINT.
struct WaitForShutdown: Service {
    func run() async throws { try? await gracefulShutdown() }
}

struct Certs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create a local CA and a server certificate (DNS SANs) for the hub's TLS.",
                                                    subcommands: [Server.self, DeviceCertificate.self], defaultSubcommand: Server.self)

    struct DeviceCertificate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "device",
            abstract: "Create an X.509 device certificate (CN = the device id) and its key: self-signed (register it by thumbprint) or issued by the local CA (--ca; register the device as certificateAuthority and add the CA with `ca add`).")
        @Argument(help: "Device id (the certificate's subject CN).") var deviceId: String
        @Option(help: "Output directory (<id>.pem, <id>.key).") var dir = "."
        @Flag(help: "Issue it from the local CA in --ca-dir instead of self-signing it.") var ca = false
        @Option(help: "The local CA's directory (ca.pem, ca.key).")
        var caDir = (ProcessInfo.processInfo.environment["FIELDGATE_HUB_STATE"] ?? "/var/lib/fieldgate-hub") + "/certs"

        func run() async throws {
            let issuer = ca ? LocalCertificates.Paths(directory: caDir) : nil
            let c = try LocalCertificates.createDeviceCertificate(in: dir, deviceID: deviceId, issuer: issuer)
            say("certificate: \(c.certificate)")
            say("key: \(c.key) (mode 0600)")
            say("thumbprint (SHA-1): \(c.thumbprintSHA1)")
            say("thumbprint (SHA-256): \(c.thumbprintSHA256)")
        }
    }
}

extension Certs {
    struct Server: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "server", abstract: "Create a local CA and a server certificate (DNS SANs) for the hub's TLS (the default).")

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
}

extension HubTier: ExpressibleByArgument {}
