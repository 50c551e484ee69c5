import ArgumentParser
import ControlSocket
import FieldgateCore
import HubServiceClient
import IoTHub
import Spool

#if canImport(Glibc)
import Glibc
#endif

/// The memory figure of issue 4, measured on the real daemon: `fieldgated` (the binary next to this one) with
/// 1000 UDP leaves attached over one TLS connection and 1 M readings in its spool. The spool is filled before the
/// daemon starts and the hub throttles every leaf, so the readings stay spooled while the leaves stay attached.
struct DaemonMemoryBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "daemon-memory", abstract: "fieldgated's RSS with 1000 leaves attached and 1 M readings spooled.")

    @Option(help: "Leaves attached.") var leaves = 1000
    @Option(help: "Readings spooled.") var records = 1_000_000
    @Option(help: "Seconds to let the daemon run once attached, before measuring. It gives its start-up pages back 10–15 s after the start, and its once-a-minute work (the gateway's health report, the heap trim) maps code of its own: 90 s covers both, so the figure is the steady one.") var settle = 90
    @Option(help: "Directory for the daemon's state (on the disk to measure).") var dir = "/var/tmp/fieldgate-daemon-memory-bench"
    @Option(help: "fieldgated binary. Default: next to this one.") var daemon: String?
    @Option(help: "The leaves' cloud capabilities (their `cloud` key): all (C2D, methods, twin: six links each) or none (telemetry only: one link).")
    var cloud = "all"
    @Flag(help: "Then lift the throttle and measure RSS while the backlog drains to the hub (peak against the idle figure).")
    var drain = false
    @Option(help: ArgumentHelp("Run the daemon under callgrind and write the symbols of the code it runs once attached (idle, and draining with --drain) to this file, most used first: the linker's order file (packaging/hot-code.symbols; README, \"Memory\").", valueName: "file"))
    var hotCode: String?
    @Option(help: ArgumentHelp("Run the daemon under valgrind's massif and write its heap at the measuring moment to this file (a detailed snapshot), and print it summed by owner (library or Swift module). Slow: use --leaves 300.", valueName: "file"))
    var massif: String?
    @Option(help: "The daemon's `[uplink] max_in_flight` (default: its own, 800): what the drain's peak depends on.")
    var maxInFlight: Int?
    @Flag(help: "Then stop the daemon and measure proton-floor (the binary next to this one: C, Proton and OpenSSL only) doing the daemon's AMQP work against the same hub: one connection, the hub-scope token, the same leaves' links with the same addresses, properties and credit. What it takes is the floor of this design on these libraries; the difference is fieldgated's own. Then proton-floor-swift: the same C on a thread of a Swift program whose runtime idles as a daemon's does; its difference from proton-floor is the Swift runtime's share. With --records 0, without --drain, --massif or --hot-code.")
    var floor = false

    func run() async throws {
        guard cloud == "all" || cloud == "none" else { throw ValidationError("--cloud: all or none") }
        // The floor is compared with the idle daemon measured as shipped: a spool, a drain or valgrind's RSS would
        // count as fieldgated's own.
        guard !floor || (records == 0 && !drain && massif == nil && hotCode == nil) else {
            throw ValidationError("--floor: with --records 0, and without --drain, --massif or --hot-code")
        }
        let figures = try await Self.measure(daemon: daemon ?? siblingExecutable("fieldgated"), hubBinary: siblingExecutable("fieldgate-hub"), leaves: leaves,
                                             records: records, settle: settle, dir: dir, telemetryOnly: cloud == "none", drain: drain, hotCode: hotCode,
                                             massif: massif, maxInFlight: maxInFlight, floor: floor)
        print(figures.table)
        if let hotCode { print("hot code: \(figures.hotSymbols) symbols written to \(hotCode)") }
        if let massif, let heap = figures.heap {
            let mb = { (bytes: Int) in fixed(Double(bytes) / 1_048_576, 2) }
            print("heap (massif, \(massif)): \(mb(heap.useful)) MB asked for + \(mb(heap.extra)) MB malloc overhead; by owner of the allocating function:")
            for (owner, bytes) in heap.owners.prefix(20) {
                print("  " + pad(mb(bytes), 7) + " MB  " + pad(fixed(Double(bytes) / Double(max(leaves, 1)), 0), 6) + " B per leaf  " + owner)
            }
            let before = Dictionary(heap.owners, uniquingKeysWith: +)
            for (label, file, later) in [("while draining", ".draining", figures.drainingHeap), ("once drained", ".drained", figures.drainedHeap)] {
                guard let later else { continue }
                print("heap \(label) (\(massif)\(file)): \(mb(later.useful)) MB asked for + \(mb(later.extra)) MB overhead; change by owner:")
                let after = Dictionary(later.owners, uniquingKeysWith: +)
                let changes = Set(before.keys).union(after.keys).map { ($0, (after[$0] ?? 0) - (before[$0] ?? 0)) }
                for (owner, delta) in changes.sorted(by: { abs($0.1) > abs($1.1) }).prefix(12) where delta != 0 {
                    print("  " + pad((delta > 0 ? "+" : "") + mb(delta), 7) + " MB  " + owner)
                }
            }
        }
    }

    struct Figures {
        var leaves, spooled, connections: Int
        var telemetryOnly: Bool
        var atStart, attached, settled: ChildProcess.Memory
        var mappings: [(kB: Int, name: String)]
        /// With --drain: the largest RSS seen while the backlog drained, how long it took, what was delivered.
        var drainPeak: ChildProcess.Memory?
        var drainSeconds = 0.0
        var drained = 0
        var drainSeries: [Double] = []
        var hotSymbols = 0
        var heap: Massif.Breakdown?
        /// With --massif and --drain: the heap 15 s into the drain (a full window in flight), and once the backlog is
        /// delivered.
        var drainingHeap: Massif.Breakdown?
        var drainedHeap: Massif.Breakdown?
        /// With --floor: proton-floor's memory with the same links, idle for as long, and its resident files; then
        /// the same inside a Swift program (proton-floor-swift), whose difference is the Swift runtime's share.
        var floor: ChildProcess.Memory?
        var floorMappings: [(kB: Int, name: String)] = []
        var swiftFloor: ChildProcess.Memory?
        var swiftFloorMappings: [(kB: Int, name: String)] = []

        var table: String {
            let kind = telemetryOnly ? "telemetry-only UDP leaves (cloud = [], one link each)" : "UDP leaves (C2D, methods, twin: six links each)"
            var out = "fieldgated memory: \(leaves) \(kind) + the gateway attached over \(connections) TLS connection(s), \(spooled) readings spooled\n"
            out += "moment                    VmRSS MB  anonymous MB  file MB\n"
            for (name, m) in [("started", atStart), ("leaves attached", attached), ("attached + settled", settled)] {
                out += name + String(repeating: " ", count: max(0, 24 - name.count)) + "  " + pad(fixed(m.rssKB / 1024, 1), 8) + "  " + pad(fixed(m.anonKB / 1024, 1), 12) + "  "
                    + pad(fixed(m.fileKB / 1024, 1), 7) + "\n"
            }
            if let peak = drainPeak {
                out += "draining (peak)         " + "  " + pad(fixed(peak.rssKB / 1024, 1), 8) + "  " + pad(fixed(peak.anonKB / 1024, 1), 12) + "  " + pad(fixed(peak.fileKB / 1024, 1), 7) + "\n"
                out += "drain: \(drained) readings delivered in \(fixed(drainSeconds, 0)) s; peak RSS \(fixed(peak.rssKB / settled.rssKB * 100 - 100, 1)) % above the idle figure (target: within 10 %)\n"
                out += "RSS MB every 10 s while draining: " + drainSeries.map { fixed($0, 1) }.joined(separator: " ") + "\n"
            }
            out += "resident file mappings: " + mappings.prefix(6).map { "\($0.name) \(fixed(Double($0.kB) / 1024, 1)) MB" }.joined(separator: ", ") + "\n"
            if let floor {
                let mb = { (kB: Double) in fixed(kB / 1024, 1) }
                let signed = { (kB: Double) in (kB >= 0 ? "+" : "") + fixed(kB / 1024, 1) }
                let target = telemetryOnly ? 12.0 : 26.0
                out += "proton-floor (C: Proton and OpenSSL only, the same \(leaves) leaves' links, idle as long): VmRSS \(mb(floor.rssKB)) MB, anonymous "
                    + "\(mb(floor.anonKB)), file \(mb(floor.fileKB)); its files: " + floorMappings.prefix(5).map { "\($0.name) \(fixed(Double($0.kB) / 1024, 1)) MB" }.joined(separator: ", ") + "\n"
                out += "fieldgated above the floor: \(signed(settled.rssKB - floor.rssKB)) MB (anonymous \(signed(settled.anonKB - floor.anonKB)), file "
                    + "\(signed(settled.fileKB - floor.fileKB))); the \(fixed(target, 0)) MB target leaves \(signed(target * 1024 - floor.rssKB)) MB above the floor\n"
                if let swift = swiftFloor {
                    out += "proton-floor-swift (the same C on a thread of a Swift program idling as a daemon does): VmRSS \(mb(swift.rssKB)) MB, anonymous "
                        + "\(mb(swift.anonKB)), file \(mb(swift.fileKB)); its files: " + swiftFloorMappings.prefix(5).map { "\($0.name) \(fixed(Double($0.kB) / 1024, 1)) MB" }.joined(separator: ", ") + "\n"
                    out += "the Swift runtime's share: \(signed(swift.rssKB - floor.rssKB)) MB (anonymous \(signed(swift.anonKB - floor.anonKB)), file "
                        + "\(signed(swift.fileKB - floor.fileKB))); fieldgated above this floor: \(signed(settled.rssKB - swift.rssKB)) MB; the "
                        + "\(fixed(target, 0)) MB target leaves \(signed(target * 1024 - swift.rssKB)) MB above it\n"
                }
            }
            out += "targets (1000 leaves attached and idle): VmRSS ≤ 26 MB with six links per leaf, ≤ 12 MB telemetry-only; + ≤ 2 MB with 1 M readings spooled; draining ≤ 10 % above idle"
            return out
        }
    }

    static func measure(daemon: String, hubBinary: String, leaves: Int, records: Int, settle: Int, dir: String, telemetryOnly: Bool = false,
                        drain: Bool = false, hotCode: String? = nil, massif: String? = nil, maxInFlight: Int? = nil, floor: Bool = false) async throws -> Figures {
        guard hotCode == nil || massif == nil else { throw BenchError("--hot-code and --massif each run the daemon under valgrind: one at a time") }
        let hub = try await BenchHub.start(binary: hubBinary, devices: leaves)
        defer { hub.stop() }
        _ = system("rm -rf '\(dir)'; mkdir -p '\(dir)/devices.d'")
        defer { _ = system("rm -rf '\(dir)'") }
        let gateway = try await hub.service.request("PUT", "/devices/bench-gateway", body: [:])
        let gatewayKey = gateway.json?["authentication"]?["symmetricKey"]?["primaryKey"]?.stringValue ?? ""
        for i in 0..<leaves {
            _ = try await hub.service.request("POST", "/faults/throttle", body: ["deviceId": .string("bench-\(i)"), "seconds": 3600])
        }
        try fillSpool(dir + "/spool", leaves: leaves, records: records)

        _ = try await writeConfiguration(dir: dir, hub: hub, gatewayKey: gatewayKey, leaves: leaves, telemetryOnly: telemetryOnly,
                                         maxInFlight: maxInFlight)

        var binary = daemon, arguments = ["run", "--config", dir + "/fieldgate.toml", "--log-level", "error"]
        let profile = dir + "/hot-code.callgrind"
        if hotCode != nil {
            let (valgrind, prefix) = try Callgrind.prefix(running: daemon, profile: profile, dir: dir + "-callgrind", extra: ["--demangle=no"])
            binary = valgrind
            arguments = prefix + arguments
        }
        if massif != nil {
            // Its RSS figures are valgrind's; what it is for is the heap breakdown.
            let (valgrind, prefix) = try Massif.prefix(running: daemon, profile: dir + "-massif.out", dir: dir + "-massif")
            binary = valgrind
            arguments = prefix + arguments
        }
        defer { if hotCode != nil { _ = system("rm -rf '\(dir)-callgrind'") } }
        defer { if massif != nil { _ = system("rm -rf '\(dir)-massif.out' '\(dir)-massif'") } }
        let child = try ChildProcess.spawn(binary, arguments)
        var childStopped = false
        defer { if !childStopped { child.terminate() } }
        try await Task.sleep(for: .milliseconds(300))
        let atStart = child.memory()
        let deadline = ContinuousClock.now + .seconds(hotCode == nil && massif == nil ? 120 : 900)
        while true {
            guard child.isRunning() else { throw BenchError("fieldgated exited (its log is on this terminal)") }
            let status = try? ControlClient.request(["command": "status"], socketPath: dir + "/control.sock")
            if status?["leaves_by_state"]?["ready"]?.intValue == Int64(leaves + 1) { break }
            guard ContinuousClock.now < deadline else { throw BenchError("the leaves did not attach in time: \(status.map { "\($0)" } ?? "no status")") }
            try await Task.sleep(for: .milliseconds(100))
        }
        let attached = child.memory()
        if hotCode != nil {
            // What the start ran is not hot: count from the moment the daemon has released its start-up pages.
            try await Task.sleep(for: .seconds(20))
            try Callgrind.zero(pid: child.pid)
        }
        try await Task.sleep(for: .seconds(settle))
        let settled = child.memory()
        let depth = try ControlClient.request(["command": "spool-stats"], socketPath: dir + "/control.sock")["depth"]?.intValue ?? 0
        let connections = try ControlClient.request(["command": "status"], socketPath: dir + "/control.sock")["connections"]?.arrayValue?.count ?? 0
        var figures = Figures(leaves: leaves, spooled: Int(depth), connections: connections, telemetryOnly: telemetryOnly, atStart: atStart, attached: attached,
                              settled: settled, mappings: fileMappings(pid: child.pid))
        let program = daemon.split(separator: "/").last.map(String.init) ?? "fieldgated"
        if let massif { figures.heap = try Massif.capture(pid: child.pid, into: massif, program: program) }
        if drain {
            try await drainBacklog(child: child, hub: hub, dir: dir, leaves: leaves, from: settled, into: &figures) { figures in
                if let massif { figures.drainingHeap = try Massif.capture(pid: child.pid, into: massif + ".draining", program: program) }
            }
            // What the drain left behind (Proton's delivery pool, buffers grown to the largest write) against idle.
            if let massif { figures.drainedHeap = try Massif.capture(pid: child.pid, into: massif + ".drained", program: program) }
        }
        if let hotCode {
            _ = try await Callgrind.total(pid: child.pid, profile: profile)
            let symbols = Callgrind.executedFunctions(profile: profile + ".1", object: "-nodebug").map(\.symbol)
            try ChildProcess.writeFile(hotCode, symbols.joined(separator: "\n") + "\n")
            figures.hotSymbols = symbols.count
        }
        if floor {
            // The hub would detach the daemon's links for the floor's (a device's links on a new connection win).
            child.terminate()
            childStopped = true
            (figures.floor, figures.floorMappings) = try await measureFloor(
                "proton-floor", hub: hub, leaves: leaves, telemetryOnly: telemetryOnly, settle: settle, dir: dir)
            (figures.swiftFloor, figures.swiftFloorMappings) = try await measureFloor(
                "proton-floor-swift", hub: hub, leaves: leaves, telemetryOnly: telemetryOnly, settle: settle, dir: dir)
        }
        return figures
    }

    /// Runs `program` (proton-floor or proton-floor-swift, next to this binary) with the daemon's leaves until they are
    /// attached, lets it idle for `settle` seconds and reads its memory and resident files.
    private static func measureFloor(_ program: String, hub: BenchHub, leaves: Int, telemetryOnly: Bool, settle: Int,
                                     dir: String) async throws -> (ChildProcess.Memory, [(kB: Int, name: String)]) {
        let ready = dir + "/floor-ready", keyFile = dir + "/floor-policy-key"
        unlink(ready)
        try ChildProcess.writeFile(keyFile, hub.ownerPolicyKey + "\n")
        chmod(keyFile, 0o600)
        let floor = try ChildProcess.spawn(siblingExecutable(program), [
            "--port", String(hub.amqpsPort), "--ca", hub.caFile, "--policy-key-file", keyFile, "--ready-file", ready, "--leaves", String(leaves),
        ] + (telemetryOnly ? ["--telemetry-only"] : []))
        defer { floor.terminate() }
        let deadline = ContinuousClock.now + .seconds(120)
        while access(ready, F_OK) != 0 {
            guard floor.isRunning() else { throw BenchError("\(program) exited (its error is on this terminal)") }
            guard ContinuousClock.now < deadline else { throw BenchError("\(program)'s leaves did not attach in time") }
            try await Task.sleep(for: .milliseconds(100))
        }
        try await Task.sleep(for: .seconds(settle))
        guard floor.isRunning() else { throw BenchError("\(program) exited (its error is on this terminal)") }
        return (floor.memory(), fileMappings(pid: floor.pid))
    }

    /// Lifts the throttle and follows RSS until the spool is empty.
    /// `midway` runs once, 15 s into the drain.
    private static func drainBacklog(child: ChildProcess, hub: BenchHub, dir: String, leaves: Int, from settled: ChildProcess.Memory, into figures: inout Figures,
                                     midway: (inout Figures) throws -> Void = { _ in }) async throws {
        // The throttle ends; each leaf resumes after its own pause and the backlog goes to the hub.
        let before = try await hub.acceptedEvents()
        for i in 0..<leaves {
            _ = try await hub.service.request("POST", "/faults/throttle", body: ["deviceId": .string("bench-\(i)"), "seconds": 0])
        }
        let started = ContinuousClock.now
        var peak = settled
        var lastSample = ContinuousClock.now - .seconds(10)
        var wentMidway = false
        while ContinuousClock.now - started < .seconds(1800) {
            guard child.isRunning() else { throw BenchError("fieldgated exited while draining") }
            let m = child.memory()
            if m.rssKB > peak.rssKB { peak = m }
            if ContinuousClock.now - lastSample >= .seconds(10) { figures.drainSeries.append(m.rssKB / 1024); lastSample = .now }
            let left = (try? ControlClient.request(["command": "spool-stats"], socketPath: dir + "/control.sock"))?["depth"]?.intValue ?? -1
            if left == 0 { break }
            if !wentMidway, ContinuousClock.now - started >= .seconds(15) {
                wentMidway = true
                try midway(&figures)
            }
            try await Task.sleep(for: .milliseconds(250))
        }
        figures.drainSeconds = secondsSince(started)
        figures.drainPeak = peak
        figures.drained = try await hub.acceptedEvents() - before
    }

    /// fieldgated's configuration for `leaves` UDP leaves `bench-<i>` behind the hub's owner policy, in `dir`.
    /// Returns the UDP port.
    static func writeConfiguration(dir: String, hub: BenchHub, gatewayKey: String, leaves: Int, telemetryOnly: Bool,
                                   maxInFlight: Int? = nil) async throws -> Int {
        let udpPort = 30000 + Int.random(in: 0..<20000)
        let policyKey = hub.ownerPolicyKey
        try ChildProcess.writeFile(dir + "/fieldgate.toml", """
            [hub]
            host = "localhost"
            address = "127.0.0.1"
            port = \(hub.amqpsPort)
            ca_file = "\(hub.caFile)"
            attaches_per_second = 1000
            [gateway]
            device_id = "bench-gateway"
            reboot_command = ["true"]
            [spool]
            directory = "\(dir)/spool"
            cap_mb = 4096
            [udp]
            bind = "127.0.0.1"
            port = \(udpPort)
            [control]
            socket = "\(dir)/control.sock"
            """ + (maxInFlight.map { "\n[uplink]\nmax_in_flight = \($0)\n" } ?? ""))
        try ChildProcess.writeFile(dir + "/secrets.toml", "[keys]\nbench-gateway = \"\(gatewayKey)\"\n[policies]\niothubowner = \"\(policyKey)\"\n")
        chmod(dir + "/secrets.toml", 0o600)
        try ChildProcess.writeFile(dir + "/devices.d/leaves.toml", (0..<leaves).map {
            "[[leaf]]\ndevice_id = \"bench-\($0)\"\nadapter = \"udp\"\ncredential = \"policy:iothubowner:hub\"\n" + (telemetryOnly ? "cloud = []\n" : "")
        }.joined(separator: "\n"))

        return udpPort
    }

    /// The spool the daemon will find: `records` 200 B readings round-robin over the leaves.
    @discardableResult
    private static func fillSpool(_ directory: String, leaves: Int, records: Int) throws -> Int {
        var config = SpoolConfiguration(directory: directory)
        config.capBytes = 4096 * 1024 * 1024
        config.sync = .interval(milliseconds: 100)
        let spool = try Spool(configuration: config)
        defer { spool.close() }
        let envelope = UplinkAgent.reading
        var next = 0
        while next < records {
            let now = WallClock.nowMilliseconds()
            let batch = (0..<min(1000, records - next)).map { k in Spool.Entry(leaf: "bench-\((next + k) % leaves)", acquiredAtMs: now, payload: envelope) }
            _ = try spool.append(batch)
            next += batch.count
        }
        return spool.statistics().depth
    }

    /// Resident kB per mapped file, largest first.
    private static func fileMappings(pid: pid_t) -> [(kB: Int, name: String)] {
        var byName: [String: Int] = [:]
        var current = ""
        for line in (ChildProcess.readFile("/proc/\(pid)/smaps") ?? "").split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if let first = fields.first, first.contains("-"), fields.count >= 5 {
                current = fields.count >= 6 ? String(fields[5].split(separator: "/").last ?? "") : ""
            } else if fields.first == "Rss:", !current.isEmpty, !current.hasPrefix("[") {
                byName[current, default: 0] += Int(fields[1]) ?? 0
            }
        }
        return byName.map { (kB: $0.value, name: $0.key) }.sorted { $0.kB > $1.kB }
    }
}
