import ArgumentParser
import FieldgateCore

#if canImport(Glibc)
import Glibc
#endif

/// What one delivered message costs the gateway, against a baseline that does the least any sender must: a
/// bare-Proton sender (`uplink-agent --mode baseline`) with the same hub, TLS, links and credit, sending one
/// pre-encoded message over and over with no spool. Three views:
///
/// 1. instructions per message (callgrind, counted from the moment every leaf is attached until the last reading is
///    acknowledged: producer, spool `sync=always`, encoding, uplink, Proton and TLS);
/// 2. system calls per message (strace over the same window);
/// 3. msg/s and CPU per message at 1000 leaves, fieldgate's as ratios to the baseline's (median of alternating
///    rounds); then coalescing: readings/s, readings per hub message and instructions per reading.
struct CostBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cost", abstract: "Per-message instructions and system calls, and msg/s, against a bare-Proton baseline.")

    @Option(help: "Leaves in the callgrind and strace runs.") var leaves = 100
    @Option(help: "Readings per leaf in the callgrind and strace runs.") var perLeaf = 500
    @Option(help: "Leaves in the throughput rounds.") var throughputLeaves = 1000
    @Option(help: "Readings per throughput round.") var messages = 100_000
    @Option(help: "Alternating rounds (fieldgate, baseline) for the throughput medians.") var rounds = 3
    @Option(help: "Coalescing target of the coalescing runs (0: skip them).") var coalesceBytes = 4000
    @Option(help: "fieldgate's `[uplink] max_in_flight` (default: the uplink's own, 800). The baseline keeps 2000 in flight whatever this says.")
    var maxInFlight: Int?
    @Option(help: "Directory for the spools (on the disk to measure).") var dir = "/var/tmp/fieldgate-cost-bench"
    @Flag(help: "Skip the callgrind runs (slow: a few minutes).") var noCallgrind = false
    @Option(help: "Run only these parts, comma-separated: instructions, coalescing, syscalls, throughput (all by default).")
    var only: String?
    @Option(help: "Keep the callgrind profiles in this directory (for callgrind_annotate; with per-instruction costs).") var profiles: String?
    @Option(help: "The gateway-side binary (a fieldgate-bench). Valgrind 3.19 runs Swift's statically linked builds only, as fieldgated ships: build one with --static-swift-stdlib (README).")
    var agent: String?

    func run() async throws {
        let agent = self.agent ?? CommandLine.arguments[0]
        let n = leaves * perLeaf
        print("cost benchmark: 200 B JSON readings, fieldgate (producer → spool sync=always → uplink) vs a bare-Proton sender")
        print("(pre-encoded message, same links, credit and hub, no spool), both over TLS on loopback to fieldgate-hub")
        print("machine: \(sysconf(Int32(_SC_NPROCESSORS_ONLN))) cores\n")
        let window = maxInFlight.map { ["--max-in-flight", String($0)] } ?? []
        let coalesce = coalesceBytes > 0 ? ["--coalesce-bytes", String(coalesceBytes)] + window : nil

        let hub = try await BenchHub.start(binary: siblingExecutable("fieldgate-hub"), devices: max(leaves, throughputLeaves))
        defer { hub.stop() }

        let parts = Set((only ?? "instructions,coalescing,syscalls,throughput").split(separator: ",").map(String.init))
        if !noCallgrind, !parts.isDisjoint(with: ["instructions", "coalescing"]) {
            print("instructions per delivered message (callgrind, \(leaves) leaves × \(perLeaf))")
            if parts.contains("instructions") {
                let gw = try await instructions(hub: hub, agent: agent, mode: "throughput", count: n, extra: window)
                let base = try await instructions(hub: hub, agent: agent, mode: "baseline", count: n)
                print("  fieldgate  " + pad(fixed(gw.perMessage, 0), 8) + "   baseline " + pad(fixed(base.perMessage, 0), 8)
                      + "   ratio " + fixed(gw.perMessage / base.perMessage, 2) + "   (fieldgate over the baseline: " + fixed(gw.perMessage - base.perMessage, 0) + ")")
            }
            if let coalesce, parts.contains("coalescing") {
                let co = try await instructions(hub: hub, agent: agent, mode: "backlog", count: n, extra: coalesce)
                print("  coalescing to \(coalesceBytes) B, a backlog of \(n): " + fixed(co.perMessage, 0) + " per reading, " + fixed(Double(n) / Double(max(1, co.hubMessages)), 1)
                      + " readings per hub message")
            }
            print("  targets: ≤ 30,000 per message; ≤ 4,000 per reading coalescing\n")
        }

        if parts.contains("syscalls") { try await syscallFigures(hub: hub, agent: agent, n: n, coalesce: coalesce, window: window) }
        if parts.contains("throughput") { try await throughputFigures(hub: hub, agent: agent, coalesce: coalesce, window: window) }
        _ = system("rm -rf '\(dir)'")
    }

    private func syscallFigures(hub: BenchHub, agent: String, n: Int, coalesce: [String]?, window: [String]) async throws {
        print("system calls per delivered message (strace -f -c, \(leaves) leaves × \(perLeaf))")
        var runs: [(label: String, mode: String, extra: [String])] = [("fieldgate", "throughput", window), ("baseline", "baseline", [])]
        if let coalesce { runs.append(("coalescing", "backlog", coalesce)) }
        for (label, mode, extra) in runs {
            let s = try await syscalls(hub: hub, agent: agent, mode: mode, count: n, extra: extra)
            let top = s.byName.sorted { $0.value > $1.value }.prefix(5).map { "\($0.key) " + fixed(Double($0.value) / Double(n), 3) }
            print("  " + label.padding(10) + pad(fixed(Double(s.total) / Double(n), 3), 7) + "   (" + top.joined(separator: ", ") + ")")
        }
        print("  target: ≤ 0.3 per message, fdatasyncs included\n")
    }

    private func throughputFigures(hub: BenchHub, agent: String, coalesce: [String]?, window: [String]) async throws {
        print("throughput, \(throughputLeaves) leaves, \(messages) readings per round, \(rounds) alternating rounds (medians)")
        var gwRate: [Double] = [], gwCPU: [Double] = [], baseRate: [Double] = [], baseCPU: [Double] = []
        for _ in 0..<rounds {
            let g = try await UplinkBench.throughput(hub: hub, leaves: throughputLeaves, agent: agent, messages: messages, dir: dir, extra: window)
            let b = try await UplinkBench.throughput(hub: hub, leaves: throughputLeaves, agent: agent, messages: messages, dir: dir, mode: "baseline")
            gwRate.append(g.rate); gwCPU.append(g.gatewayMicros); baseRate.append(b.rate); baseCPU.append(b.gatewayMicros)
        }
        print("             msg/s     CPU µs/msg")
        print("  fieldgate  " + pad(fixed(median(gwRate), 0), 7) + "   " + pad(fixed(median(gwCPU), 1), 10))
        print("  baseline   " + pad(fixed(median(baseRate), 0), 7) + "   " + pad(fixed(median(baseCPU), 1), 10))
        print("  ratio      " + pad(fixed(median(zip(gwRate, baseRate).map { $0 / $1 }), 2), 7) + "   " + pad(fixed(median(zip(gwCPU, baseCPU).map { $0 / $1 }), 2), 10)
              + "   (per round: " + zip(gwRate, baseRate).map { fixed($0 / $1, 2) }.joined(separator: " ") + ")")
        if let coalesce {
            let c = try await UplinkBench.throughput(hub: hub, leaves: throughputLeaves, agent: agent, messages: messages, dir: dir, extra: coalesce,
                                                    mode: "backlog", coalescing: true)
            print("  coalescing to \(coalesceBytes) B, a backlog of \(messages) (one append): " + fixed(c.rate, 0) + " readings/s, " + fixed(Double(messages) / Double(max(1, c.hubMessages)), 1)
                  + " readings per hub message, " + fixed(c.gatewayMicros, 2) + " CPU µs per reading")
            print("  target: ≥ 15 readings per hub message")
        }
    }

    struct Instructions { var perMessage: Double; var hubMessages: Int }

    /// Runs the agent under callgrind; counts from attached to done (callgrind_control zeroes, then dumps).
    private func instructions(hub: BenchHub, agent: String, mode: String, count: Int, extra: [String] = []) async throws -> Instructions {
        let out = dir + "/callgrind-\(mode)-\(getpid())"
        // A kept profile carries per-instruction costs, so callgrind_annotate (or addr2line) can place them on lines.
        let (valgrind, prefix) = try Callgrind.prefix(running: agent, profile: out, dir: dir, extra: profiles == nil ? [] : ["--dump-instr=yes"])
        let (child, result) = try UplinkBench.runAgent(valgrind, hub: hub, leaves: leaves, mode: mode, count: count, dir: dir, extra: extra, prefix: prefix)
        defer { child.terminate() }
        _ = try await UplinkBench.waitForResult(result, key: "attached-ms", child: child, seconds: 600)
        try Callgrind.zero(pid: child.pid)
        let events0 = try await hub.acceptedEvents()
        try await hub.signal(result + ".go")
        _ = try await UplinkBench.waitForResult(result, key: "done", child: child, seconds: 1800)
        let hubMessages = try await hub.acceptedEvents() - events0
        let total = try await Callgrind.total(pid: child.pid, profile: out)
        if let profiles { _ = system("mkdir -p '\(profiles)' && cp '\(out).1' '\(profiles)/callgrind.\(mode)\(mode == "backlog" ? "-coalescing" : "")'") }
        return Instructions(perMessage: total / Double(count), hubMessages: hubMessages)
    }

    struct Syscalls { var total: Int; var byName: [String: Int] }

    /// Runs the agent with strace attached (every thread) from attached to done.
    private func syscalls(hub: BenchHub, agent: String, mode: String, count: Int, extra: [String]) async throws -> Syscalls {
        let (child, result) = try UplinkBench.runAgent(agent, hub: hub, leaves: leaves, mode: mode, count: count, dir: dir, extra: extra)
        defer { child.terminate() }
        _ = try await UplinkBench.waitForResult(result, key: "attached-ms", child: child)
        let summary = dir + "/strace-\(mode)-\(getpid())"
        let strace = try ChildProcess.spawn("/usr/bin/strace", ["-f", "-c", "-o", summary, "-p", String(child.pid)])
        try await Task.sleep(for: .milliseconds(500))  // every thread attached
        try await hub.signal(result + ".go")
        _ = try await UplinkBench.waitForResult(result, key: "done", child: child, seconds: 600)
        kill(strace.pid, SIGINT)
        strace.wait()
        var out = Syscalls(total: 0, byName: [:])
        for line in (ChildProcess.readFile(summary) ?? "").split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 5, let calls = Int(fields[3]) else { continue }
            if fields.last == "total" { out.total = calls } else { out.byName[String(fields.last!)] = calls }
        }
        guard out.total > 0 else { throw BenchError("strace counted nothing (\(summary))") }
        return out
    }
}

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    guard !s.isEmpty else { return .nan }
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

extension String {
    func padding(_ width: Int) -> String { self + String(repeating: " ", count: max(0, width - count)) }
}
