import ArgumentParser
import FieldgateCore
import HubDeviceClient
import HubServiceClient
import IoTHub
import ProtonAMQP

#if canImport(Glibc)
import Glibc
#endif

@main
struct FieldgateBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fieldgate-bench",
        abstract: "Benchmarks that print figures (not tests).",
        subcommands: [HubBench.self, SpoolBench.self, UplinkBench.self, UplinkAgent.self, UDPBench.self, UDPSender.self, ModbusBench.self, SpoolMemoryChild.self, DaemonMemoryBench.self, SoakBench.self, WebSocketBench.self, CostBench.self, ConnectBench.self])
}

/// Drives a separate fieldgate-hub process with 1, 100 and 1000 identities over one AMQP connection and prints
/// accepted messages/s (single and batched transfers of 200 B bodies), the hub's CPU seconds per 100k messages and
/// its RSS. The hub runs in its own process so its CPU and memory are measured alone (from /proc).
struct HubBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "hub", abstract: "fieldgate-hub throughput, CPU and memory.")

    @Option(help: "Messages per run.") var messages = 200_000
    @Option(help: "Messages per batched transfer.") var batchSize = 50
    @Option(help: "Identity counts to run.") var identities: [Int] = [1, 100, 1000]
    @Option(help: "Body size in bytes.") var bodySize = 200
    @Option(help: "fieldgate-hub binary. Default: next to this one.") var hubBinary: String?

    func run() async throws {
        let binary = hubBinary ?? siblingExecutable("fieldgate-hub")
        print("fieldgate-hub benchmark: \(messages) messages of \(bodySize) B per run, batches of \(batchSize), one AMQP connection, plain AMQP on loopback")
        print("machine: \(sysconf(Int32(_SC_NPROCESSORS_ONLN))) cores")
        print("")
        print("identities  mode     msg/s      hub CPU s/100k  bench CPU s/100k  hub RSS MB")
        for n in identities {
            for batched in [false, true] {
                let r = try await runOnce(binary: binary, identities: n, batched: batched)
                print(pad(String(n), 10) + "  " + (batched ? "batched" : "single ") + "  " + pad(fixed(r.rate, 0), 9) + "  "
                      + pad(fixed(r.hubCPUPer100k, 2), 14) + "  " + pad(fixed(r.benchCPUPer100k, 2), 16) + "  " + pad(fixed(r.hubRSSMB, 1), 10))
            }
        }
        print("\ntargets: ≥ 100k msg/s batched, ≥ 50k msg/s single on 2 cores")
    }

    struct Result { var rate: Double; var hubCPUPer100k: Double; var benchCPUPer100k: Double; var hubRSSMB: Double }

    func runOnce(binary: String, identities n: Int, batched: Bool) async throws -> Result {
        let amqpPort = 20000 + Int.random(in: 0..<10000), httpPort = amqpPort + 10000
        let stateDir = "/tmp/fieldgate-bench-\(getpid())-\(amqpPort)"
        let hub = try ChildProcess.spawn(binary, ["serve", "--no-amqps", "--amqp-port", "\(amqpPort)", "--http-port", "\(httpPort)",
                                                 "--open-service-api", "--state-dir", stateDir, "--log-level", "warning",
                                                 "--event-log-capacity", "100000"])
        defer {
            hub.terminate()
            _ = system("rm -rf '\(stateDir)'")
        }
        let service = HubServiceClient(host: "127.0.0.1", port: httpPort, authorization: nil)
        var up = false
        for _ in 0..<100 where !up {
            up = (try? await service.request("GET", "/statistics"))?.status == 200
            if !up { try await Task.sleep(for: .milliseconds(100)) }
        }
        guard up else { throw BenchError("the hub did not start") }
        var keys: [String] = []
        for i in 0..<n {
            let r = try await service.request("PUT", "/devices/bench-\(i)", body: [:])
            keys.append(r.json?["authentication"]?["symmetricKey"]?["primaryKey"]?.stringValue ?? "")
        }
        let reactor = AMQPReactor()
        defer { Task { await reactor.shutdown() } }
        let c = try await DeviceConnection.connect(reactor: reactor, host: "127.0.0.1", port: amqpPort, hostName: "localhost", tls: nil)
        // Up to 995 identities: one device-key token each (as the uplink does). Beyond, the hub's 999-token cap
        // applies, so one DeviceConnect policy token for {host}/devices covers them all.
        if n <= 995 {
            for i in 0..<n {
                let (status, d) = try await c.authenticate(deviceId: "bench-\(i)", key: keys[i])
                guard status == 200 else { throw BenchError("put-token \(status) \(d)") }
            }
        } else {
            let cs = try ConnectionString(parsing: ChildProcess.readFile(stateDir + "/service-connection-string") ?? "")
            let token = try SASToken.generate(resourceURI: "localhost/devices", key: cs.sharedAccessKey,
                                              expiry: WallClock.nowMilliseconds() / 1000 + 3600, keyName: cs.sharedAccessKeyName)
            let (status, d) = try await c.putToken(token, audience: "localhost/devices")
            guard status == 200 else { throw BenchError("put-token \(status) \(d)") }
        }
        for i in 0..<n { try await c.attachTelemetry(deviceId: "bench-\(i)") }
        let body = [UInt8](repeating: UInt8(ascii: "x"), count: bodySize)
        var single = AMQPMessage(data: body)
        single.contentType = "application/json"
        single.messageID = .string("bench-message-000000")
        let oneEncoded = AMQPMessageCodec.encode(single)
        let transferBytes: [UInt8]
        let perTransfer: Int
        if batched {
            var batch = AMQPMessage()
            batch.body = .data(Array(repeating: oneEncoded, count: batchSize))
            transferBytes = AMQPMessageCodec.encode(batch)
            perTransfer = batchSize
        } else {
            transferBytes = oneEncoded
            perTransfer = 1
        }
        let transfers = messages / perTransfer
        let perDevice = max(1, transfers / n)
        // At most ~20k deliveries in flight on the connection: Proton's per-connection work grows with unsettled
        // deliveries (measured: 100 links × 1000 in flight doubled the driver's CPU per message).
        let chunk = max(1, min(2000, 20_000 / n))

        let hubCPU0 = hub.cpuSeconds(), benchCPU0 = ChildProcess.selfCPUSeconds()
        let start = ContinuousClock.now
        try await withThrowingTaskGroup(of: Int.self) { group in
            for i in 0..<n {
                group.addTask {
                    var sent = 0
                    while sent < perDevice {
                        let k = min(chunk, perDevice - sent)
                        let outcomes = try await c.sendAll(Array(repeating: transferBytes, count: k), deviceId: "bench-\(i)")
                        guard outcomes.allSatisfy({ $0 == .accepted }) else { throw BenchError("a transfer was not accepted") }
                        sent += k
                    }
                    return sent
                }
            }
            _ = try await group.reduce(0, +)
        }
        let elapsed = start.duration(to: .now)
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let delivered = Double(perDevice * n * perTransfer)
        let hubCPU = hub.cpuSeconds() - hubCPU0, benchCPU = ChildProcess.selfCPUSeconds() - benchCPU0
        let stats = try await service.request("GET", "/statistics").json
        let accepted = Double(stats?["acceptedEvents"]?.intValue ?? 0)
        guard accepted >= delivered else { throw BenchError("the hub counted \(accepted) accepted events, expected \(delivered)") }
        let rss = hub.rssMB()
        c.close()
        return Result(rate: delivered / seconds, hubCPUPer100k: hubCPU / delivered * 100_000,
                      benchCPUPer100k: benchCPU / delivered * 100_000, hubRSSMB: rss)
    }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

func pad(_ s: String, _ width: Int) -> String { s.leftPadded(to: width, with: " ") }

func fixed(_ x: Double, _ digits: Int) -> String {
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let v = (x * scale).rounded() / scale
    guard digits > 0 else { return String(Int(v)) }
    let whole = Int(v.rounded(.towardZero))
    let frac = Int((abs(v - Double(whole)) * scale).rounded())
    let f = String(frac)
    return (v < 0 && whole == 0 ? "-" : "") + String(whole) + "." + String(repeating: "0", count: max(0, digits - f.count)) + f
}
