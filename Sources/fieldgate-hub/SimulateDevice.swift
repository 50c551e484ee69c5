import ArgumentParser
import FieldgateCore
import HubDeviceClient
import IoTHub
import ProtonAMQP

/// A scripted device for the demo and for people trying the hub: the seed tutorials' device apps in one.
/// It sends telemetry every second (seed 000), prints and completes C2D messages (seeds 000–002), answers
/// `reboot` with 200 "Reboot started" and reports `iothubDM.reboot.lastReboot` (seed 004), and prints desired
/// property updates.
struct SimulateDevice: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run a scripted device against a hub (demo).")

    @Option(help: "Device connection string (HostName=…;DeviceId=…;SharedAccessKey=…).")
    var connectionString: String
    @Option(help: "Hub address to connect to.") var host = "127.0.0.1"
    @Option(help: "AMQPS port.") var port = 5671
    @Option(help: "CA certificate that signed the hub's certificate.") var caFile: String?
    @Flag(help: "Plain AMQP (a hub started with --amqp-port).") var plain = false
    @Option(help: "Seconds between telemetry messages.") var interval = 1.0
    @Option(help: "Stop after this many seconds (default: run until killed).") var duration: Double?

    func run() async throws {
        let cs = try ConnectionString(parsing: connectionString)
        guard let deviceId = cs.deviceID else { throw CLIError("the connection string has no DeviceId") }
        let reactor = AMQPReactor()
        let tls = plain ? nil : AMQPClientTLS(trustedCAFile: caFile, peerHostname: cs.hostName)
        let c = try await DeviceConnection.connect(reactor: reactor, host: host, port: port, hostName: cs.hostName, tls: tls, sasl: plain ? .none : .mssbcbs)
        let (status, description) = try await c.authenticate(deviceId: deviceId, key: cs.sharedAccessKey)
        guard status == 200 else { throw CLIError("put-token for \(deviceId) failed: \(status) \(description)") }
        try await c.attachTelemetry(deviceId: deviceId)
        try await c.attachCloudToDevice(deviceId: deviceId)
        try await c.attachMethods(deviceId: deviceId)
        try await c.attachTwin(deviceId: deviceId)
        _ = try await c.subscribeDesired(deviceId: deviceId)
        say("[\(deviceId)] connected; waiting for C2D messages, methods and desired properties")

        let events = Task {
            for await event in c.events {
                switch event {
                case .cloudToDevice(let m):
                    let id = m.message.messageID.map { $0.stringValue ?? "\($0)" } ?? "-"
                    let props = m.message.applicationProperties.filter { !$0.key.hasPrefix("iothub-") }.mapValues { $0.stringValue ?? "\($0)" }
                    say("[\(deviceId)] C2D Id: \(id) Body: \(String(decoding: m.message.body.bytes, as: UTF8.self)) Properties: \(props) — completing")
                    c.settle(m, .accepted)
                case .methodRequest(let r):
                    if r.name == "reboot" {
                        try? await c.respond(to: r, status: 200, payload: "Reboot started")
                        let patch: JSONValue = ["iothubDM": ["reboot": ["lastReboot": .string(WallClock.iso8601Now())]]]
                        let reply = try? await c.patchReported(deviceId: deviceId, patch)
                        say("[\(deviceId)] method reboot → 200 \"Reboot started\"; reported lastReboot (status \(reply?.status ?? -1))")
                    } else {
                        try? await c.respond(to: r, status: 404, payload: ["message": .string("unknown method \(r.name)")])
                        say("[\(deviceId)] method \(r.name) → 404")
                    }
                case .desiredUpdate(_, let patch, let version):
                    say("[\(deviceId)] desired update v\(version ?? -1): \(patch.serialized)")
                case .linkDetached(let name, let condition):
                    say("[\(deviceId)] link \(name) detached: \(condition?.name ?? "") \(condition?.description ?? "")")
                case .connectionClosed(let error):
                    say("[\(deviceId)] connection closed \(error.map { "\($0)" } ?? "")")
                }
            }
        }
        let start = ContinuousClock.now
        var g = SystemRandomNumberGenerator()
        while duration.map({ ContinuousClock.now - start < .seconds($0) }) ?? true {
            let temperature = 20 + Double.random(in: 0..<15, using: &g)
            let humidity = 60 + Double.random(in: 0..<20, using: &g)
            let body: JSONValue = ["deviceId": .string(deviceId), "temperature": .double((temperature * 100).rounded() / 100),
                                   "humidity": .double((humidity * 100).rounded() / 100)]
            var m = AMQPMessage(data: body.bytes)
            m.messageID = .string(AMQPUUID.random().description)
            m.contentType = "application/json"
            m.contentEncoding = "utf-8"
            m.applicationProperties = ["temperatureAlert": .string(temperature > 30 ? "true" : "false")]
            do {
                let outcome = try await c.send(m, deviceId: deviceId)
                say("[\(deviceId)] sent \(body.serialized): \(outcome == .accepted ? "accepted" : "\(outcome)")")
            } catch {
                say("[\(deviceId)] send failed: \(error)")
                break
            }
            try await Task.sleep(for: .seconds(interval))
        }
        events.cancel()
        c.close()
        await reactor.shutdown()
    }
}
