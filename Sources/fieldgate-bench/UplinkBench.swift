import ArgumentParser
import FieldgateCore
import HubDeviceClient
import HubServiceClient
import IoTHub
import ProtonAMQP
import Logging
import Spool
import HubTunnel
import Uplink

#if canImport(Glibc)
import Glibc
#endif

/// End to end: producer → spool → uplink → fieldgate-hub accepted, over TLS on loopback. The gateway side (spool,
/// uplink, producer) runs in its own process, `uplink-agent`, so its CPU and RSS are measured alone; so does the hub.
struct UplinkBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "uplink", abstract: "Uplink throughput, latency, CPU, attach time and memory.")

    @Option(help: "Leaf counts to run.") var leaves: [Int] = [1, 100, 1000]
    @Option(help: "Readings per throughput run.") var messages = 100_000
    @Option(help: "Readings per second in the latency run.") var latencyRate = 1000
    @Option(help: "Records spooled for the memory figure (1000 leaves attached).") var memoryRecords = 1_000_000
    @Option(help: "Directory for the spool (on the disk to measure).") var dir = "/var/tmp/fieldgate-uplink-bench"

    func run() async throws {
        print("uplink benchmark: 200 B JSON readings, producer → spool (sync always) → uplink → fieldgate-hub over TLS on loopback")
        print("machine: \(sysconf(Int32(_SC_NPROCESSORS_ONLN))) cores; gateway and hub in separate processes\n")
        print("leaves  attach s  msg/s    p50 ms  p99 ms  gw CPU µs/msg  hub CPU µs/msg  gw RSS MB")
        for n in leaves {
            let hub = try await BenchHub.start(binary: siblingExecutable("fieldgate-hub"), devices: n)
            defer { hub.stop() }
            let r = try await measure(hub: hub, leaves: n, agent: CommandLine.arguments[0])
            print(pad(String(n), 6) + "  " + pad(fixed(r.attachSeconds, 2), 8) + "  " + pad(fixed(r.rate, 0), 7) + "  "
                  + pad(fixed(r.p50, 1), 6) + "  " + pad(fixed(r.p99, 1), 6) + "  " + pad(fixed(r.gatewayMicros, 1), 13) + "  "
                  + pad(fixed(r.hubMicros, 1), 14) + "  " + pad(fixed(r.rssMB, 1), 9))
        }
        // The memory figure is the real daemon's (fieldgated next to this binary), not this agent's.
        let memory = try await DaemonMemoryBench.measure(daemon: siblingExecutable("fieldgated"), hubBinary: siblingExecutable("fieldgate-hub"), leaves: 1000,
                                                         records: memoryRecords, settle: 10, dir: dir + "/daemon")
        print("\n" + memory.table)
        let telemetryOnly = try await DaemonMemoryBench.measure(daemon: siblingExecutable("fieldgated"), hubBinary: siblingExecutable("fieldgate-hub"), leaves: 1000,
                                                                records: memoryRecords, settle: 10, dir: dir + "/daemon", telemetryOnly: true)
        print("\n" + telemetryOnly.table)
        print("targets: attach 1000 leaves unpaced ≤ 5 s")
        _ = system("rm -rf '\(dir)'")
    }

    struct Figures { var attachSeconds, rate, p50, p99, gatewayMicros, hubMicros, rssMB: Double }

    /// `prefix`: arguments before `uplink-agent` (with `agent` a wrapper such as valgrind, the agent binary's path).
    static func runAgent(_ agent: String, hub: BenchHub, leaves: Int, mode: String, count: Int, rate: Int = 0, dir: String,
                         extra: [String] = [], prefix: [String] = []) throws -> (ChildProcess, String) {
        let spoolDir = dir + "/spool-\(mode)-\(leaves)"
        let resultFile = dir + "/result-\(mode)-\(leaves)"
        _ = system("rm -rf '\(spoolDir)' '\(resultFile)' '\(resultFile).go'; mkdir -p '\(dir)'")
        let child = try ChildProcess.spawn(agent, prefix + [
            "uplink-agent", "--port", String(hub.amqpsPort), "--ca", hub.caFile, "--keys", hub.keysFile, "--leaves", String(leaves),
            "--spool", spoolDir, "--mode", mode, "--count", String(count), "--rate", String(rate), "--result", resultFile,
        ] + extra)
        return (child, resultFile)
    }

    private func runAgent(_ agent: String, hub: BenchHub, leaves: Int, mode: String, count: Int, rate: Int = 0) throws -> (ChildProcess, String) {
        try Self.runAgent(agent, hub: hub, leaves: leaves, mode: mode, count: count, rate: rate, dir: dir)
    }

    struct Throughput { var attachSeconds, rate, gatewayMicros, hubMicros, rssMB: Double; var connections: Int; var hubMessages = 0 }

    /// `messages` readings as fast as the pipeline drains (the backlog bounded): msg/s, CPU per message on each
    /// side, the agent's RSS at the end.
    /// `mode`: `throughput` (fieldgate's spool and uplink) or `baseline` (the bare-Proton sender). With
    /// `coalescing`, the hub counts fewer messages than readings: the run ends when the agent has drained its spool,
    /// and `hubMessages` says how many messages carried the readings.
    static func throughput(hub: BenchHub, leaves n: Int, agent: String, messages: Int, dir: String, extra: [String] = [],
                           mode: String = "throughput", coalescing: Bool = false) async throws -> Throughput {
        let (child, result) = try runAgent(agent, hub: hub, leaves: n, mode: mode, count: messages, dir: dir, extra: extra)
        defer { child.terminate() }
        let attach = try await waitForResult(result, key: "attached-ms", child: child)
        let connections = try await hub.connections()
        let cpu0 = child.cpuSeconds(), hubCPU0 = hub.process.cpuSeconds()
        let events0 = try await hub.acceptedEvents()
        let start = ContinuousClock.now
        try await hub.signal(result + ".go")
        if coalescing {
            _ = try await waitForResult(result, key: "done", child: child, seconds: 600)
        } else {
            while try await hub.acceptedEvents() < events0 + messages {
                guard child.isRunning() else { throw BenchError("the agent exited early") }
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        let seconds = secondsSince(start)
        let gwCPU = child.cpuSeconds() - cpu0, hubCPU = hub.process.cpuSeconds() - hubCPU0
        let hubMessages = try await hub.acceptedEvents() - events0
        return Throughput(attachSeconds: attach / 1000, rate: Double(messages) / seconds, gatewayMicros: gwCPU / Double(messages) * 1e6,
                          hubMicros: hubCPU / Double(messages) * 1e6, rssMB: child.rssMB(), connections: connections, hubMessages: hubMessages)
    }

    private func measure(hub: BenchHub, leaves n: Int, agent: String) async throws -> Figures {
        // Throughput: as fast as the pipeline drains, with a bounded backlog.
        let t = try await Self.throughput(hub: hub, leaves: n, agent: agent, messages: messages, dir: dir)

        // Latency: a steady rate well below the maximum, acquisition time → the hub's enqueued time.
        let (paced, pacedResult) = try runAgent(agent, hub: hub, leaves: n, mode: "latency", count: latencyRate * 5, rate: latencyRate)
        _ = try await waitForResult(pacedResult, key: "attached-ms", child: paced)
        let from = Int64(try await hub.acceptedEvents()) + 1  // event sequence numbers start at 1
        try await hub.signal(pacedResult + ".go")
        _ = try await waitForResult(pacedResult, key: "done", child: paced, seconds: 60)
        paced.terminate()
        let latencies = try await hub.latencies(from: from).sorted()
        func percentile(_ p: Double) -> Double { latencies.isEmpty ? .nan : latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))] }
        return Figures(attachSeconds: t.attachSeconds, rate: t.rate, p50: percentile(0.5), p99: percentile(0.99),
                       gatewayMicros: t.gatewayMicros, hubMicros: t.hubMicros, rssMB: t.rssMB)
    }

    private func waitForResult(_ file: String, key: String, child: ChildProcess, seconds: Int = 120) async throws -> Double {
        try await Self.waitForResult(file, key: key, child: child, seconds: seconds)
    }

    static func waitForResult(_ file: String, key: String, child: ChildProcess, seconds: Int = 120) async throws -> Double {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            for line in (ChildProcess.readFile(file) ?? "").split(separator: "\n") {
                let parts = line.split(separator: "=")
                if parts.count == 2, parts[0] == key, let v = Double(parts[1]) { return v }
            }
            guard child.isRunning() else { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw BenchError("the agent did not report \(key) within \(seconds) s")
    }
}

/// A fieldgate-hub child process with TLS, `devices` registered, their keys in a file.
struct BenchHub {
    let process: ChildProcess
    let service: HubServiceClient
    let amqpsPort: Int
    /// HTTPS and AMQP over WebSockets; nil unless asked for.
    let httpsPort: Int?
    let stateDir: String
    var caFile: String { stateDir + "/certs/ca.pem" }
    var keysFile: String { stateDir + "/bench-keys" }
    /// The key of the hub's owner policy (`iothubowner`), from the keys file.
    var ownerPolicyKey: String {
        (ChildProcess.readFile(keysFile) ?? "").split(separator: "\n")
            .first { $0.hasPrefix("policy ") }.flatMap { try? ConnectionString(parsing: String($0.dropFirst(7))).sharedAccessKey } ?? ""
    }

    static func start(binary: String, devices: Int, webSockets: Bool = false) async throws -> BenchHub {
        let amqpsPort = 20000 + Int.random(in: 0..<10000), httpPort = amqpsPort + 10000
        let httpsPort = webSockets ? amqpsPort + 20000 : nil
        let stateDir = "/tmp/fieldgate-uplink-bench-hub-\(getpid())-\(amqpsPort)"
        let certs = try ChildProcess.spawn(binary, ["certs", "--dir", stateDir + "/certs", "--dns", "localhost"])
        certs.wait()
        let process = try ChildProcess.spawn(binary, ["serve", "--amqps-port", "\(amqpsPort)", "--http-port", "\(httpPort)",
                                                     "--open-service-api", "--state-dir", stateDir, "--log-level", "warning",
                                                     // Proton's TLS: the hub spends less per message and stays out of the figures' way.
                                                     "--event-log-capacity", "200000", "--no-client-certificates"] + (httpsPort.map { ["--https-port", "\($0)"] } ?? []))
        let service = HubServiceClient(host: "127.0.0.1", port: httpPort, authorization: nil)
        var up = false
        for _ in 0..<100 where !up {
            up = (try? await service.request("GET", "/statistics"))?.status == 200
            if !up { try await Task.sleep(for: .milliseconds(100)) }
        }
        guard up else { process.terminate(); throw BenchError("the hub did not start") }
        var keys = ""
        for i in 0..<devices {
            let r = try await service.request("PUT", "/devices/bench-\(i)", body: [:])
            keys += "bench-\(i) " + (r.json?["authentication"]?["symmetricKey"]?["primaryKey"]?.stringValue ?? "") + "\n"
        }
        // Beyond 995 leaves one hub-scope DeviceConnect token covers them all (the hub holds 999 tokens per connection).
        let cs = ChildProcess.readFile(stateDir + "/service-connection-string") ?? ""
        keys += "policy " + cs.split(separator: "\n").first.map(String.init)! + "\n"
        try ChildProcess.writeFile(stateDir + "/bench-keys", keys)
        return BenchHub(process: process, service: service, amqpsPort: amqpsPort, httpsPort: httpsPort, stateDir: stateDir)
    }

    func stop() {
        process.terminate()
        _ = system("rm -rf '\(stateDir)'")
    }

    func signal(_ file: String) async throws {
        try ChildProcess.writeFile(file, "")
    }

    /// Device connections open at the hub now.
    func connections() async throws -> Int {
        Int(try await service.request("GET", "/statistics").json?["connections"]?.intValue ?? 0)
    }

    func acceptedEvents() async throws -> Int {
        Int(try await service.request("GET", "/statistics").json?["acceptedEvents"]?.intValue ?? 0)
    }

    /// Milliseconds from acquisition (`iothub-creation-time-utc`) to the hub's enqueued time, per event.
    func latencies(from: Int64) async throws -> [Double] {
        var out: [Double] = []
        var next = from
        while true {
            let page = try await service.request("GET", "/events?from=\(next)&limit=10000").json
            let events = page?["events"]?.arrayValue ?? []
            for e in events {
                guard let created = e["properties"]?[IoTHubAMQP.creationTimeProperty]?.stringValue.flatMap(WallClock.parseISO8601),
                      let enqueued = e["enqueuedTimeUtc"]?.stringValue.flatMap(WallClock.parseISO8601) else { continue }
                out.append(Double(enqueued - created))
            }
            guard events.count == 10000, let n = page?["next"]?.intValue else { return out }
            next = n
        }
    }
}

/// The gateway side of the uplink benchmark: spool + uplink + a producer, in its own process.
struct UplinkAgent: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "uplink-agent", abstract: "(used by `uplink`) the gateway side.", shouldDisplay: false)

    @Option var port: Int
    @Option var ca: String
    @Option var keys: String
    @Option var leaves: Int
    @Option var spool: String
    @Option var mode: String
    @Option var count: Int
    @Option var rate: Int = 0
    @Option var result: String
    /// `amqps` or `websocket`.
    @Option var transport = "amqps"
    @Option var httpsPort: Int?
    @Option var proxy: String?
    @Option var proxyUser: String?
    @Option var proxyPassword: String?
    @Option var coalesceBytes: Int?
    @Option var maxInFlight: Int?

    /// The benchmark's reading: a 200 B JSON body in its spool envelope.
    static let reading = TelemetryEnvelope(
        body: Array(#"{"temperature":21.5,"humidity":60.2,"pressure":1013.2,"vibration":[0.01,0.02,0.03],"status":"ok","pad":"\#(String(repeating: "x", count: 94))"}"#.utf8),
        properties: ["kind": "bench"]).encoded()

    /// `BenchHub`'s keys file: each device's key, and the hub's owner policy.
    private func readKeys() -> (byDevice: [String: String], policy: ConnectionString?) {
        var byDevice: [String: String] = [:]
        var policy: ConnectionString?
        for line in (ChildProcess.readFile(keys) ?? "").split(separator: "\n") {
            let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { continue }
            if parts[0] == "policy" { policy = try? ConnectionString(parsing: parts[1]) } else { byDevice[parts[0]] = parts[1] }
        }
        return (byDevice, policy)
    }

    /// The bench reading as fieldgate sends it (its creation time fixed): what the baseline sends.
    static func readingMessage() -> [UInt8] {
        let e = TelemetryEnvelope(decoding: reading)!
        var m = AMQPMessage(data: e.body)
        m.messageID = .string("0123456789abcdef-1000000")
        m.contentType = e.contentType
        m.contentEncoding = e.contentEncoding
        for (k, v) in e.properties { m.applicationProperties[k] = .string(v) }
        m.applicationProperties[IoTHubAMQP.creationTimeProperty] = .string(WallClock.iso8601(milliseconds: WallClock.nowMilliseconds()))
        return AMQPMessageCodec.encode(m)
    }

    func run() async throws {
        if mode == "baseline" { return try await runBaseline() }
        let (keyByDevice, policy) = readKeys()
        let policyKey = policy?.sharedAccessKey ?? ""
        let leafConfigs = (0..<leaves).map { i -> LeafConfiguration in
            let id = "bench-\(i)"
            let credential: LeafCredential = leaves > 995 ? .sharedAccessPolicy(name: "iothubowner", key: policyKey, scope: .hub)
                                                          : .symmetricKey(primary: keyByDevice[id] ?? "", secondary: nil)
            return LeafConfiguration(deviceID: id, credential: credential, capabilities: [])
        }
        var spoolConfig = SpoolConfiguration(directory: spool)
        spoolConfig.capBytes = 2 * 1024 * 1024 * 1024
        let store = try Spool(configuration: spoolConfig)
        var config = UplinkConfiguration(hostName: "localhost")
        config.address = "127.0.0.1"
        config.port = port
        config.transport = .tls(.init(caFile: ca))
        config.attachesPerSecond = nil
        config.coalesceTargetBytes = coalesceBytes
        if let maxInFlight { config.maxInFlightTotal = maxInFlight }
        if transport == "websocket" {
            config.route = .webSocket
            config.webSocket.port = httpsPort ?? 443
            config.webSocket.proxy = proxy.map { .url($0, user: proxyUser, password: proxyPassword) } ?? .direct
        } else {
            config.route = .amqps
        }
        var logger = Logger(label: "bench.uplink")
        logger.logLevel = .error
        let uplink = try Uplink(configuration: config, leaves: leafConfigs, spool: store, logger: logger)
        let start = ContinuousClock.now
        uplink.start()
        while await uplink.status().leaves.values.contains(where: { $0.phase != .ready }) { try await Task.sleep(for: .milliseconds(5)) }
        report("attached-ms=\(Int(secondsSince(start) * 1000))")
        while access(result + ".go", F_OK) != 0 { try await Task.sleep(for: .milliseconds(5)) }

        let envelope = Self.reading
        var next = 0
        // A producer knows its leaves' names: they are made once, not formatted per reading (which cost the
        // callgrind figures ~800 instructions a reading of the benchmark's own work), and numbered once, in a
        // template each batch starts from (`Spool.AppendBatch`).
        var template = Spool.AppendBatch()
        let numbered = leafConfigs.map { template.leaf($0.deviceID) }
        func batch(_ k: Int) -> Spool.AppendBatch {
            let now = WallClock.nowMilliseconds()
            var batch = template
            batch.reserve(records: k, payloadBytes: k * envelope.count)
            envelope.withUnsafeBytes { payload in
                for _ in 0..<k {
                    batch.append(numbered[next % numbered.count], acquiredAtMs: now, payload: payload)
                    next += 1
                }
            }
            return batch
        }
        switch mode {
        case "throughput":
            while next < count {
                if store.depth > 20_000 { try await Task.sleep(for: .milliseconds(1)); continue }
                _ = try store.append(batch(min(200, count - next)))
                uplink.wake()
            }
            while store.depth > 0 { try await Task.sleep(for: .milliseconds(5)) }
        case "backlog":
            // The whole backlog in one append: the uplink finds every leaf's readings queued at once, as after an outage.
            _ = try store.append(batch(count))
            uplink.wake()
            while store.depth > 0 { try await Task.sleep(for: .milliseconds(5)) }
        case "latency":
            let perTick = max(1, rate / 100)
            var tick = ContinuousClock.now
            while next < count {
                _ = try store.append(batch(perTick))
                uplink.wake()
                tick = tick + .milliseconds(10)
                try await Task.sleep(until: tick)
            }
            while store.depth > 0 { try await Task.sleep(for: .milliseconds(5)) }
        default:
            throw BenchError("unknown mode \(mode)")
        }
        report("done=1")
        if mode == "throughput" || mode == "backlog" {
            // Stay (connected, memory as it was) until the parent has read the figures and ends this process.
            for _ in 0..<600 where getppid() != 1 { try await Task.sleep(for: .milliseconds(100)) }
        }
        await uplink.stop()
        store.close()
    }

    /// The baseline: one TLS connection with the same leaves' telemetry links, the same hub and credit, sending one
    /// pre-encoded message over and over; no spool, no encoding, no uplink logic.
    private func runBaseline() async throws {
        let (keyByDevice, policy) = readKeys()
        let reactor = AMQPReactor()
        let start = ContinuousClock.now
        let c = try await DeviceConnection.connect(reactor: reactor, host: "127.0.0.1", port: port, hostName: "localhost",
                                                   tls: AMQPClientTLS(trustedCAFile: ca, peerHostname: "localhost"))
        let ids = (0..<leaves).map { "bench-\($0)" }
        if leaves <= 995 {
            for id in ids {
                let (status, d) = try await c.authenticate(deviceId: id, key: keyByDevice[id] ?? "")
                guard status == 200 else { throw BenchError("put-token \(status) \(d)") }
            }
        } else if let policy {
            let token = try SASToken.generate(resourceURI: "localhost/devices", key: policy.sharedAccessKey,
                                              expiry: WallClock.nowMilliseconds() / 1000 + 3600, keyName: policy.sharedAccessKeyName)
            let (status, d) = try await c.putToken(token, audience: "localhost/devices")
            guard status == 200 else { throw BenchError("put-token \(status) \(d)") }
        }
        for id in ids { try await c.attachTelemetry(deviceId: id) }
        report("attached-ms=\(Int(secondsSince(start) * 1000))")
        while access(result + ".go", F_OK) != 0 { try await Task.sleep(for: .milliseconds(5)) }
        // 64 unsettled per leaf, 2000 on the connection: the uplink's fixed bound before `max_in_flight` (its default
        // is now 1000), kept so that the baseline and the ratios against it stay comparable over time.
        let perLink = max(1, min(64, 2000 / leaves))
        _ = try await c.stream(Self.readingMessage(), deviceIds: ids, total: count, limitPerLink: perLink)
        report("done=1")
        for _ in 0..<600 where getppid() != 1 { try await Task.sleep(for: .milliseconds(100)) }
        c.close()
        await reactor.shutdown()
    }

    private func report(_ line: String) {
        try? ChildProcess.writeFile(result, line + "\n", append: true)
    }
}

func secondsSince(_ start: ContinuousClock.Instant) -> Double {
    let d = start.duration(to: .now)
    return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
}
