import ArgumentParser
import FieldgateCore
import Spool
import UDPAdapter

#if canImport(Glibc)
import Glibc
#endif

/// UDP ingest into the spool (issue 7 benchmark): 200 B JSON datagrams from many senders at a paced rate; the
/// adapter and spool run in this process, the senders in a child (`udp-sender`), so CPU is the gateway's alone.
struct UDPBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "udp", abstract: "UDP ingest: datagrams/s, CPU per datagram, drops.")

    @Option(help: "Simulated senders (one socket and one leaf each).") var senders = 1000
    @Option(help: "Offered rates, datagrams/s.") var rates: [Int] = [20_000, 50_000, 80_000]
    @Option(help: "Seconds per rate.") var seconds = 5
    @Option(help: "Directory for the spool (on the disk to measure).") var dir = "/var/tmp/fieldgate-udp-bench"

    func run() async throws {
        print("UDP ingest benchmark: \(senders) senders, 200 B JSON datagrams, spool sync always, loopback, \(seconds) s per rate")
        print("machine: \(sysconf(Int32(_SC_NPROCESSORS_ONLN))) cores\n")
        print("offered/s  sent/s  received/s  CPU µs/datagram  dropped  rejected")
        for rate in rates {
            _ = system("rm -rf '\(dir)'; mkdir -p '\(dir)'")
            var sc = SpoolConfiguration(directory: dir + "/spool")
            sc.capBytes = 1 << 30
            let spool = try Spool(configuration: sc)
            var config = UDPAdapterConfiguration(port: 0, leaves: (0..<senders).map { UDPLeaf(deviceID: "udp-\($0)") })
            config.bindAddress = "127.0.0.1"
            let adapter = try UDPAdapter(configuration: config, spool: spool)
            adapter.start()
            let cpu0 = ChildProcess.selfCPUSeconds()
            let start = ContinuousClock.now
            let child = try ChildProcess.spawn(CommandLine.arguments[0], ["udp-sender", "--port", String(adapter.port), "--senders", String(senders),
                                                                          "--rate", String(rate), "--seconds", String(seconds)])
            child.wait()
            let sendSeconds = secondsSince(start)
            let sent = rate * seconds
            // Let the socket drain: the figures are taken when the count stops moving (or all arrived).
            var received = 0
            var lastChange = ContinuousClock.now
            for _ in 0..<50 {
                let now = adapter.statistics().leaves.values.reduce(0) { $0 + $1.readings }
                if now != received { received = now; lastChange = .now }
                if received >= sent || ContinuousClock.now - lastChange > .milliseconds(300) { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            let elapsed = Double((lastChange - start).components.attoseconds) / 1e18 + Double((lastChange - start).components.seconds)
            let cpu = ChildProcess.selfCPUSeconds() - cpu0
            let stats = adapter.statistics()
            let rejected = stats.unattributed.values.reduce(0, +) + stats.leaves.values.reduce(0) { $0 + $1.rejected.values.reduce(0, +) }
            await adapter.stop()
            spool.close()
            print(pad(String(rate), 9) + "  " + pad(fixed(Double(sent) / sendSeconds, 0), 6) + "  " + pad(fixed(Double(received) / elapsed, 0), 10) + "  "
                  + pad(fixed(cpu / Double(max(received, 1)) * 1e6, 2), 15) + "  " + pad(String(sent - received), 7) + "  " + pad(String(rejected), 8))
        }
        _ = system("rm -rf '\(dir)'")
        print("\ntarget: ≥ 50k/s with 0 drops on 2 cores")
    }
}

/// The sending side of `udp`: `senders` sockets, round-robin, paced to `rate` datagrams/s.
struct UDPSender: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "udp-sender", abstract: "(used by `udp`)", shouldDisplay: false)
    @Option var port: Int
    @Option var senders: Int
    @Option var rate: Int
    @Option var seconds: Int
    @Option var prefix = "udp-"

    func run() async throws {
        var to = sockaddr_in()
        to.sin_family = sa_family_t(AF_INET)
        to.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, "127.0.0.1", &to.sin_addr)
        let fds = (0..<senders).map { _ in socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0) }
        let datagrams: [[UInt8]] = (0..<senders).map { i in
            let head = #"{"device":"\#(prefix)\#(i)","values":{"temperature":21.5,"humidity":60.2,"status":"ok","pad":""#
            let tail = #""}}"#
            return Array((head + String(repeating: "x", count: max(0, 200 - head.utf8.count - tail.utf8.count)) + tail).utf8)
        }
        let total = rate * seconds
        let perTick = max(1, rate / 1000)  // 1 ms ticks
        var sent = 0
        let start = ContinuousClock.now
        var tick = 0
        while sent < total {
            for _ in 0..<min(perTick, total - sent) {
                let i = sent % senders
                _ = datagrams[i].withUnsafeBytes { b in
                    withUnsafePointer(to: &to) { p in
                        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fds[i], b.baseAddress, b.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                    }
                }
                sent += 1
            }
            tick += 1
            let due = start + .milliseconds(tick)
            if ContinuousClock.now < due { try await Task.sleep(until: due) }
        }
        for fd in fds { close(fd) }
    }
}
