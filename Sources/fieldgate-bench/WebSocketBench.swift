import ArgumentParser
import FieldgateCore

#if canImport(Glibc)
import Glibc
#endif

/// AMQP over WebSockets against AMQPS, side by side (issue 20): the same gateway side (spool, uplink, producer in
/// `uplink-agent`) and the same fieldgate-hub, the runs interleaved so drift on the machine hits both alike. A third
/// column goes through tinyproxy (Basic auth) on loopback, as a site behind a proxy would.
struct WebSocketBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "websocket", abstract: "msg/s, CPU per message and RSS: WebSockets (direct and through a proxy) vs AMQPS.")

    @Option(help: "Leaves (1000: one hub-scope token, one connection).") var leaves = 1000
    @Option(help: "Readings per run.") var messages = 100_000
    @Option(help: "Rounds; each runs every transport once, in turn.") var rounds = 3
    @Option(help: "Directory for the spools.") var dir = "/var/tmp/fieldgate-websocket-bench"

    func run() async throws {
        let hub = try await BenchHub.start(binary: siblingExecutable("fieldgate-hub"), devices: leaves, webSockets: true)
        defer { hub.stop() }
        let proxy = try TinyProxy.start(dir: dir)
        defer { proxy?.stop() }
        var variants: [(name: String, extra: [String])] = [
            ("AMQPS", ["--transport", "amqps"]),
            ("WebSocket", ["--transport", "websocket", "--https-port", String(hub.httpsPort!)]),
        ]
        if let proxy {
            variants.append(("WS via proxy", ["--transport", "websocket", "--https-port", String(hub.httpsPort!), "--proxy", proxy.url,
                                              "--proxy-user", TinyProxy.user, "--proxy-password", TinyProxy.password]))
        }
        print("AMQP over WebSockets vs AMQPS: \(leaves) leaves, \(messages) readings of 200 B per run, spool sync always, \(rounds) rounds")
        print("machine: \(sysconf(Int32(_SC_NPROCESSORS_ONLN))) cores; gateway side and fieldgate-hub in separate processes, TLS on loopback")
        if proxy == nil { print("(tinyproxy not installed: no proxy column)") }
        print("\nround  transport      conns  attach s  msg/s   gw CPU µs/msg  hub CPU µs/msg  gw RSS MB")
        var results: [String: [UplinkBench.Throughput]] = [:]
        for round in 1...rounds {
            for v in variants {
                let t = try await UplinkBench.throughput(hub: hub, leaves: leaves, agent: CommandLine.arguments[0], messages: messages,
                                                         dir: dir, extra: v.extra)
                results[v.name, default: []].append(t)
                print(pad(String(round), 5) + "  " + pad(v.name, 13) + "  " + pad(String(t.connections), 5) + "  " + pad(fixed(t.attachSeconds, 2), 8)
                      + "  " + pad(fixed(t.rate, 0), 6) + "  " + pad(fixed(t.gatewayMicros, 1), 13) + "  " + pad(fixed(t.hubMicros, 1), 14)
                      + "  " + pad(fixed(t.rssMB, 1), 9))
                try await Task.sleep(for: .seconds(1))  // the previous agent's connection closes at the hub
            }
        }
        let base = results["AMQPS"]!
        print("\nmedians and ratios to AMQPS (target: WebSocket within 15 % on each)")
        print("transport      msg/s   ratio  gw CPU µs/msg  ratio  gw RSS MB  ratio")
        for v in variants {
            let r = results[v.name]!
            let rate = median(r.map(\.rate)), cpu = median(r.map(\.gatewayMicros)), rss = median(r.map(\.rssMB))
            print(pad(v.name, 13) + "  " + pad(fixed(rate, 0), 6) + "  " + pad(fixed(rate / median(base.map(\.rate)), 2), 5)
                  + "  " + pad(fixed(cpu, 1), 13) + "  " + pad(fixed(cpu / median(base.map(\.gatewayMicros)), 2), 5)
                  + "  " + pad(fixed(rss, 1), 9) + "  " + pad(fixed(rss / median(base.map(\.rssMB)), 2), 5))
        }
        _ = system("rm -rf '\(dir)'")
    }
}

/// tinyproxy from Debian on a free loopback port with Basic auth, for the proxied column.
struct TinyProxy {
    static let user = "bench", password = "bench-pw"
    let process: ChildProcess
    let url: String

    static func start(dir: String) throws -> TinyProxy? {
        guard access("/usr/bin/tinyproxy", X_OK) == 0 else { return nil }
        let port = 30000 + Int.random(in: 0..<10000)
        _ = system("mkdir -p '\(dir)'")
        let conf = dir + "/tinyproxy.conf"
        try ChildProcess.writeFile(conf, """
            Port \(port)
            Listen 127.0.0.1
            Timeout 600
            MaxClients 20
            Allow 127.0.0.1
            BasicAuth \(user) \(password)
            LogLevel Warning
            LogFile "\(dir)/tinyproxy.log"

            """)
        let process = try ChildProcess.spawn("/usr/bin/tinyproxy", ["-d", "-c", conf])
        usleep(300_000)
        return TinyProxy(process: process, url: "http://127.0.0.1:\(port)")
    }

    func stop() {
        kill(process.pid, SIGKILL)  // a child spawned from a task thread may inherit a mask that blocks SIGTERM
        process.terminate()
    }
}
