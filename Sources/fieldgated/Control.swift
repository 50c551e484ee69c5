import ControlSocket
import FieldgateCore
import Gateway
import ModbusAdapter
import ModbusIO
import Provisioning
import SerialAdapter
import Spool
import UDPAdapter
import Uplink

/// What `fieldgatectl` can ask the running daemon (over `ControlServer`).
struct ControlHandler: Sendable {
    let daemon: Daemon
    let allowDebug: Bool
    /// The watchdog's rule, so `status` calls stuck exactly what withholds the pings.
    let liveness: Liveness
    let reloader: Reloader
    let startedAtMs = WallClock.nowMilliseconds()

    func handle(_ request: JSONValue) async -> JSONValue {
        switch request["command"]?.stringValue {
        case "status": return await status()
        case "devices": return await devices()
        case "spool-stats": return spoolJSON(daemon.spool.statistics())
        case "debug-freeze": return freeze(request)
        case "reload":
            let outcome = await reloader.reload(trigger: request["trigger"]?.stringValue ?? "fieldgatectl reload")
            return outcome.ok ? ["reloaded": .string(outcome.detail)] : ["error": .string("reload refused, the running configuration stays: \(outcome.detail)")]
        case let other: return ["error": .string("unknown command \(other ?? "(none)"); known: status, devices, spool-stats, reload, debug-freeze")]
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
                "property_fixes": .object(Self.fixCounts(s)),
                "kernel_drops": .int(Int64(s.kernelDrops)), "receive_buffer_bytes": .int(Int64(s.receiveBufferBytes)),
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
        for bus in daemon.modbus {
            let s = bus.statistics()
            adapters["modbus:\(bus.configuration.name)"] = [
                "endpoint": .string(bus.configuration.endpoint.description), "connected": .bool(s.connected), "connects": .int(Int64(s.connects)),
                "readings": .int(Int64(s.readings.values.reduce(0, +))), "writes": .int(Int64(s.writes)), "spool_refused": .int(Int64(s.spoolRefused)),
                "last_error": s.lastError.map(JSONValue.string) ?? .null,
                "units": .object(Dictionary(uniqueKeysWithValues: bus.configuration.devices.map { d in
                    let u = s.units[d.unit] ?? UnitStatistics()
                    return (String(d.unit), [
                        "leaf": .string(d.leaf), "online": .bool(u.online), "requests": .int(Int64(u.requests)), "timeouts": .int(Int64(u.timeouts)),
                        "crc_errors": .int(Int64(u.crcErrors)), "exceptions": .int(Int64(u.exceptions.values.reduce(0, +))),
                        "missed_polls": .int(Int64(u.missedPolls)), "last_error": u.lastError.map(JSONValue.string) ?? .null,
                    ] as JSONValue)
                })),
            ]
        }
        let stuck = stuckComponents()
        return [
            "summary": .string(StatusLine.compose(uplink: uplink, spool: spool)),
            "version": .string(FieldgateVersion.current),
            "uptime_seconds": .int((WallClock.nowMilliseconds() - startedAtMs) / 1000),
            "connections": .array(uplink.connections.map { c in
                ["index": .int(Int64(c.index)), "state": .string(c.state), "opens": .int(Int64(c.opens)), "leaves": .int(Int64(c.leaves)),
                 "host": .string(c.host), "transport": .string(c.transport), "refused_by_tier": .array(c.refusedByTier.map(JSONValue.string)),
                 "most_attaching_at_once": .int(Int64(c.mostAttachingAtOnce)),
                 "last_error": c.lastError.map(JSONValue.string) ?? .null, "last_disconnect": c.lastDisconnect.map(JSONValue.string) ?? .null]
            }),
            "leaves_by_state": .object(byPhase),
            "provisioning": daemon.provisioner.map { p in
                var phases: [String: JSONValue] = [:]
                for s in p.status.values { phases[s.phase.rawValue] = .int((phases[s.phase.rawValue]?.intValue ?? 0) + 1) }
                return ["id_scope": .string(p.configuration.idScope), "endpoint": .string(p.configuration.endpoint),
                        "identities": .object(phases)] as JSONValue
            } ?? .null,
            "telemetry_paused": uplink.telemetryPause?.json ?? .null,
            "offload": uplink.offload.map { o in
                ["pending_files": .int(Int64(o.pendingFiles)), "pending_records": .int(Int64(o.pendingRecords)),
                 "uploaded_files": .int(Int64(o.uploadedFiles)), "uploaded_records": .int(Int64(o.uploadedRecords)),
                 "last_error": o.lastError.map(JSONValue.string) ?? .null] as JSONValue
            } ?? .null,
            "spool": spoolJSON(spool),
            "adapters": .object(adapters),
            "stuck": .array(stuck.map { .string($0.name) }),
            "reload": reloader.json,
        ]
    }

    private func devices() async -> JSONValue {
        let uplink = await daemon.uplink.status()
        let depth = daemon.spool.statistics().depthByLeaf
        let owners = daemon.adapterNames
        let provisioning = daemon.provisioner?.status ?? [:]
        // Identities still waiting for DPS are not on a connection yet: they show with their provisioning state.
        let waiting: [JSONValue] = provisioning.keys.sorted().filter { uplink.leaves[$0] == nil }.map { id in
            let p = provisioning[id]!
            return ["device_id": .string(id), "adapter": .string(owners[id] ?? "gateway"),
                    "state": .string(p.phase == .refused ? "provisioning-refused" : "provisioning"),
                    "last_error": p.lastError.map(JSONValue.string) ?? .null, "spooled": .int(Int64(depth[id] ?? 0))]
        }
        return .array(waiting + uplink.leaves.keys.sorted().map { id in
            let leaf = uplink.leaves[id]!
            return [
                "hub": provisioning[id]?.hub.map(JSONValue.string) ?? .null,
                "device_id": .string(id), "adapter": .string(owners[id] ?? "gateway"), "state": .string(leaf.phase.rawValue),
                "last_error": leaf.lastError.map(JSONValue.string) ?? .null, "spooled": .int(Int64(depth[id] ?? 0)),
                "sent": .int(Int64(leaf.counters.sent)), "accepted": .int(Int64(leaf.counters.acceptedRecords)),
                "rejected": .int(Int64(leaf.counters.rejectedRecords)), "throttled": .int(Int64(leaf.counters.throttled)),
                "c2d_received": .int(Int64(leaf.counters.cloudToDeviceReceived)), "in_flight": .int(Int64(leaf.outstanding)),
                "tier_limitation": leaf.tierLimitation.map(JSONValue.string) ?? .null,
                "heartbeats_sent": .int(Int64(leaf.counters.heartbeatsSent)), "heartbeats_accepted": .int(Int64(leaf.counters.heartbeatsAccepted)),
            ]
        })
    }

    /// Prometheus metrics (`[control] metrics`): the figures of `status`, per leaf where it matters.
    func metrics() async -> String {
        let uplink = await daemon.uplink.status()
        let spool = daemon.spool.statistics()
        var m = PrometheusText()
        m.add("fieldgate_spool_records", Double(spool.depth), help: "Readings in the spool, not yet accepted by the hub.")
        m.add("fieldgate_spool_bytes", Double(spool.bytes), help: "Bytes the spool uses on disk.")
        m.add("fieldgate_spool_oldest_age_seconds", Double((spool.oldestAgeMilliseconds ?? 0) / 1000), help: "Age of the oldest undelivered reading.")
        for reason in DropReason.allCases {
            m.add("fieldgate_spool_dropped_total", Double(spool.dropped[reason]?.values.reduce(0, +) ?? 0), labels: ["reason": reason.rawValue],
                  help: "Readings that left the spool undelivered, by reason.", type: "counter")
        }
        for c in uplink.connections {
            m.add("fieldgate_hub_connection_open", c.state == "open" ? 1 : 0, labels: ["connection": String(c.index)], help: "1 while the AMQP connection is open.")
            m.add("fieldgate_hub_connection_opens_total", Double(c.opens), labels: ["connection": String(c.index)], help: "Connections opened.", type: "counter")
            m.add("fieldgate_hub_most_attaching_at_once", Double(c.mostAttachingAtOnce), labels: ["connection": String(c.index)],
                  help: "The most leaves this connection had authenticating or attaching at once ([hub] attaches_at_once bounds it).")
        }
        m.add("fieldgate_telemetry_paused", uplink.telemetryPause == nil ? 0 : 1, help: "1 while telemetry pauses for every leaf: the hub's daily quota is spent.")
        if let o = uplink.offload {
            m.add("fieldgate_offload_pending_records", Double(o.pendingRecords), help: "Old readings staged as files, not yet at the hub.")
            m.add("fieldgate_offload_uploaded_records_total", Double(o.uploadedRecords), help: "Old readings the hub took as files (file upload).", type: "counter")
        }
        for c in uplink.connections {
            for feature in ["C2D", "methods", "twin"] {
                m.add("fieldgate_hub_tier_refuses", c.refusedByTier.contains(feature) ? 1 : 0, labels: ["connection": String(c.index), "feature": feature],
                      help: "1 while the hub refuses this feature's links as not in its tier (IoT Hub Basic); leaves go on without it.")
            }
        }
        for phase in LeafPhase.allCases {
            m.add("fieldgate_leaves", Double(uplink.leaves.values.filter { $0.phase == phase }.count), labels: ["state": phase.rawValue],
                  help: "Leaf identities by state.")
        }
        for (id, leaf) in uplink.leaves.sorted(by: { $0.key < $1.key }) {
            m.add("fieldgate_leaf_accepted_total", Double(leaf.counters.acceptedRecords), labels: ["leaf": id], help: "Readings the hub accepted.", type: "counter")
            m.add("fieldgate_leaf_rejected_total", Double(leaf.counters.rejectedRecords), labels: ["leaf": id], help: "Readings the hub refused for good.", type: "counter")
            m.add("fieldgate_leaf_throttled_total", Double(leaf.counters.throttled), labels: ["leaf": id], help: "Throttled sends.", type: "counter")
            m.add("fieldgate_leaf_spooled", Double(spool.depthByLeaf[id] ?? 0), labels: ["leaf": id], help: "Readings waiting in the spool.")
        }
        if let udp = daemon.udp {
            let s = udp.statistics()
            m.add("fieldgate_udp_readings_total", Double(s.leaves.values.reduce(0) { $0 + $1.readings }), help: "UDP readings taken into the spool.", type: "counter")
            var rejected: [DatagramRejection: Int] = s.unattributed
            for l in s.leaves.values { rejected.merge(l.rejected, uniquingKeysWith: +) }
            for reason in DatagramRejection.allCases {
                m.add("fieldgate_udp_rejected_total", Double(rejected[reason] ?? 0), labels: ["reason": reason.rawValue], help: "UDP datagrams rejected, by reason.", type: "counter")
            }
            m.add("fieldgate_udp_kernel_drops_total", Double(s.kernelDrops), help: "UDP datagrams the kernel dropped: the socket's receive buffer was full.", type: "counter")
            m.add("fieldgate_udp_receive_buffer_bytes", Double(s.receiveBufferBytes), help: "The UDP socket's receive buffer as the kernel granted it.")
            let fixes = Self.fixCounts(s)
            for fix in MessageRules.Fix.allCases {
                m.add("fieldgate_udp_property_fixes_total", Double(fixes[fix.rawValue]?.intValue ?? 0), labels: ["fix": fix.rawValue],
                      help: "Leaf properties escaped or dropped to meet the hub's message rules.", type: "counter")
            }
        }
        for port in daemon.serial {
            let s = port.statistics()
            m.add("fieldgate_serial_connected", s.connected ? 1 : 0, labels: ["port": port.configuration.path], help: "1 while the serial device is open.")
            m.add("fieldgate_serial_readings_total", Double(s.readings.values.reduce(0, +)), labels: ["port": port.configuration.path], help: "Serial readings taken.", type: "counter")
        }
        for bus in daemon.modbus {
            let s = bus.statistics()
            let name = bus.configuration.name
            m.add("fieldgate_modbus_connected", s.connected ? 1 : 0, labels: ["bus": name], help: "1 while the Modbus connection or port is open.")
            for d in bus.configuration.devices {
                let u = s.units[d.unit] ?? UnitStatistics()
                let labels = ["bus": name, "unit": String(d.unit), "leaf": d.leaf]
                m.add("fieldgate_modbus_unit_online", u.online ? 1 : 0, labels: labels, help: "1 while the unit answers.")
                m.add("fieldgate_modbus_requests_total", Double(u.requests), labels: labels, help: "Poll requests sent.", type: "counter")
                m.add("fieldgate_modbus_timeouts_total", Double(u.timeouts), labels: labels, help: "Polls without an answer in time.", type: "counter")
                m.add("fieldgate_modbus_crc_errors_total", Double(u.crcErrors), labels: labels, help: "Garbled answers (CRC, length, unit).", type: "counter")
                m.add("fieldgate_modbus_exceptions_total", Double(u.exceptions.values.reduce(0, +)), labels: labels, help: "Modbus exception responses.", type: "counter")
                m.add("fieldgate_modbus_missed_polls_total", Double(u.missedPolls), labels: labels, help: "Poll slots that passed unpolled.", type: "counter")
            }
        }
        let stuck = stuckComponents()
        m.add("fieldgate_components_stuck", Double(stuck.count), help: "Components without progress (the watchdog is withheld).")
        return m.text
    }

    private func stuckComponents() -> [(name: String, forMs: Int64)] {
        liveness.stuck(daemon.heartbeats.map(Liveness.Reading.init), nowMs: MonotonicClock.milliseconds())
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

    private static func fixCounts(_ s: UDPAdapterStatistics) -> [String: JSONValue] {
        var out: [String: Int] = [:]
        for l in s.leaves.values { for (k, v) in l.propertyFixes { out[k.rawValue, default: 0] += v } }
        return out.mapValues { .int(Int64($0)) }
    }

    private static func counts(_ pairs: [(DatagramRejection, Int)]) -> [String: JSONValue] {
        var out: [String: Int] = [:]
        for (k, v) in pairs { out[k.rawValue, default: 0] += v }
        return out.mapValues { .int(Int64($0)) }
    }
}
