import ControlSocket
import FieldgateCore
import Gateway
import SerialAdapter
import Spool
import UDPAdapter
import Uplink

/// What `fieldgatectl` can ask the running daemon (over `ControlServer`).
struct ControlHandler: Sendable {
    let daemon: Daemon
    let allowDebug: Bool
    let startedAtMs = WallClock.nowMilliseconds()

    func handle(_ request: JSONValue) async -> JSONValue {
        switch request["command"]?.stringValue {
        case "status": return await status()
        case "devices": return await devices()
        case "spool-stats": return spoolJSON(daemon.spool.statistics())
        case "debug-freeze": return freeze(request)
        case let other: return ["error": .string("unknown command \(other ?? "(none)"); known: status, devices, spool-stats, debug-freeze")]
        }
    }

    private func status() async -> JSONValue {
        let uplink = await daemon.uplink.status()
        let spool = daemon.spool.statistics()
        var byPhase: [String: JSONValue] = [:]
        for leaf in uplink.leaves.values { byPhase[leaf.phase.rawValue] = .int((byPhase[leaf.phase.rawValue]?.intValue ?? 0) + 1) }
        var adapters: [String: JSONValue] = [:]
        if let udp = daemon.udp {
            let s = udp.statistics()
            adapters["udp:\(udp.port)"] = [
                "readings": .int(Int64(s.leaves.values.reduce(0) { $0 + $1.readings })),
                "rejected": .object(Self.counts(s.leaves.values.flatMap(\.rejected) + s.unattributed.map { ($0.key, $0.value) })),
                "spool_refused": .int(Int64(s.leaves.values.reduce(0) { $0 + $1.spoolRefused })),
            ]
        }
        for port in daemon.serial {
            let s = port.statistics()
            adapters["serial:\(port.configuration.path)"] = [
                "connected": .bool(s.connected), "opens": .int(Int64(s.opens)), "readings": .int(Int64(s.readings.values.reduce(0, +))),
                "rejected": .int(Int64(s.rejected.values.reduce(0, +))), "framing_errors": .int(Int64(s.framingErrors)),
                "spool_refused": .int(Int64(s.spoolRefused)), "last_error": s.lastError.map(JSONValue.string) ?? .null,
            ]
        }
        let stuck = Liveness(stallMilliseconds: 10_000).stuck(daemon.heartbeats.map(Liveness.Reading.init), nowMs: MonotonicClock.milliseconds())
        return [
            "summary": .string(StatusLine.compose(uplink: uplink, spool: spool)),
            "version": .string(Version.current),
            "uptime_seconds": .int((WallClock.nowMilliseconds() - startedAtMs) / 1000),
            "connections": .array(uplink.connections.map { c in
                ["index": .int(Int64(c.index)), "state": .string(c.state), "opens": .int(Int64(c.opens)), "leaves": .int(Int64(c.leaves)),
                 "last_error": c.lastError.map(JSONValue.string) ?? .null]
            }),
            "leaves_by_state": .object(byPhase),
            "spool": spoolJSON(spool),
            "adapters": .object(adapters),
            "stuck": .array(stuck.map { .string($0.name) }),
        ]
    }

    private func devices() async -> JSONValue {
        let uplink = await daemon.uplink.status()
        let depth = daemon.spool.statistics().depthByLeaf
        let owners = daemon.adapterNames
        return .array(uplink.leaves.keys.sorted().map { id in
            let leaf = uplink.leaves[id]!
            return [
                "device_id": .string(id), "adapter": .string(owners[id] ?? "gateway"), "state": .string(leaf.phase.rawValue),
                "last_error": leaf.lastError.map(JSONValue.string) ?? .null, "spooled": .int(Int64(depth[id] ?? 0)),
                "sent": .int(Int64(leaf.counters.sent)), "accepted": .int(Int64(leaf.counters.acceptedRecords)),
                "rejected": .int(Int64(leaf.counters.rejectedRecords)), "throttled": .int(Int64(leaf.counters.throttled)),
                "c2d_received": .int(Int64(leaf.counters.cloudToDeviceReceived)), "in_flight": .int(Int64(leaf.outstanding)),
            ]
        })
    }

    private func spoolJSON(_ s: SpoolStatistics) -> JSONValue {
        var dropped: [String: JSONValue] = [:]
        for (reason, perLeaf) in s.dropped { dropped[reason.rawValue] = .int(Int64(perLeaf.values.reduce(0, +))) }
        return [
            "depth": .int(Int64(s.depth)), "bytes": .int(Int64(s.bytes)),
            "oldest_age_seconds": s.oldestAgeMilliseconds.map { .int($0 / 1000) } ?? .null,
            "dropped": .object(dropped), "depth_by_leaf": .object(s.depthByLeaf.mapValues { .int(Int64($0)) }),
            "corrupt_regions": .int(Int64(s.corruptRegions)), "torn_tails": .int(Int64(s.tornTails)),
            "salvaged_records": .int(Int64(s.salvagedRecords)),
        ]
    }

    /// Freezes one component's loop on purpose (watchdog tests and drills); only with `[control] allow_debug`.
    private func freeze(_ request: JSONValue) -> JSONValue {
        guard allowDebug else { return ["error": "debug commands are off: set allow_debug = true under [control]"] }
        let name = request["component"]?.stringValue ?? ""
        guard let heartbeat = daemon.heartbeats.first(where: { $0.name == name && $0.isLoop }) else {
            return ["error": .string("no component loop named \(name); loops: \(daemon.heartbeats.filter(\.isLoop).map(\.name).joined(separator: ", "))")]
        }
        let seconds = request["seconds"]?.intValue ?? 30
        heartbeat.freeze(milliseconds: seconds * 1000)
        return ["frozen": .string(name), "seconds": .int(seconds)]
    }

    private static func counts(_ pairs: [(DatagramRejection, Int)]) -> [String: JSONValue] {
        var out: [String: Int] = [:]
        for (k, v) in pairs { out[k.rawValue, default: 0] += v }
        return out.mapValues { .int(Int64($0)) }
    }
}
