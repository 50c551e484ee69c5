import FieldgateCore
import HubEmulator
import HubServiceClient
import HubTestSupport
import IoTHub
import Spool
import Synchronization
import Testing
import Uplink

/// A stand-in adapter with named points: `read`, `write`, `ping`, a slow method, desired properties.
final class PointAdapter: LeafRouter {
    let points = Mutex<[String: JSONValue]>(["setpoint": 20.5, "mode": "auto"])
    let desiredSeen = Mutex<[(String, Int64, JSONValue)]>([])

    func cloudToDevice(_ message: C2DMessage) async -> C2DOutcome { .complete }

    func invoke(_ call: MethodCall) async -> MethodResponse? {
        switch call.name {
        case "ping":
            return MethodResponse(status: 200, payload: ["pong": true])
        case "read":
            guard let names = call.payload["points"]?.arrayValue?.compactMap(\.stringValue) else {
                return .error(400, "read needs {\"points\": [names]}")
            }
            let values = points.withLock { p in names.compactMap { n in p[n].map { (n, $0) } } }
            return MethodResponse(status: 200, payload: .object(Dictionary(uniqueKeysWithValues: values)))
        case "write":
            guard case .object(let values)? = call.payload["values"] else { return .error(400, "write needs {\"values\": {…}}") }
            if case .string? = values["setpoint"] { return .error(400, "setpoint must be a number") }
            points.withLock { p in for (k, v) in values { p[k] = v } }
            return MethodResponse(status: 200, payload: ["written": .int(Int64(values.count))])
        case "slow":
            try? await Task.sleep(for: .seconds(5))
            return MethodResponse(status: 200, payload: .null)
        default:
            return nil
        }
    }

    func desiredProperties(_ desired: JSONValue, version: Int64, deviceID: String) async -> JSONValue? {
        desiredSeen.withLock { $0.append((deviceID, version, desired)) }
        return ["config": ["appliedVersion": .int(version), "pollSeconds": desired["pollSeconds"] ?? .null]]
    }
}

/// Records the desired versions it is handed and how many of its calls ran at once; holds calls while `holding`.
final class HoldingTwinAdapter: LeafRouter {
    struct State {
        var versions: [Int64] = []
        var running = 0
        var mostAtOnce = 0
        var holding = false
        var held: [CheckedContinuation<Void, Never>] = []
    }
    let state = Mutex(State())

    func cloudToDevice(_ message: C2DMessage) async -> C2DOutcome { .complete }
    func invoke(_ call: MethodCall) async -> MethodResponse? { nil }

    func desiredProperties(_ desired: JSONValue, version: Int64, deviceID: String) async -> JSONValue? {
        let hold = state.withLock { s -> Bool in
            s.versions.append(version)
            s.running += 1
            s.mostAtOnce = max(s.mostAtOnce, s.running)
            return s.holding
        }
        if hold { await withCheckedContinuation { cont in state.withLock { $0.held.append(cont) } } }
        state.withLock { $0.running -= 1 }
        return ["config": ["appliedVersion": .int(version), "pollSeconds": desired["pollSeconds"] ?? .null]]
    }

    func release() {
        for c in state.withLock({ s in s.holding = false; defer { s.held = [] }; return s.held }) { c.resume() }
    }
}

@Suite("Uplink methods and twins")
struct MethodTwinUplinkTests {
    /// Starts the uplink, waits for the twin's first document, then has the adapter hold desired version 2.
    private func startAndHoldVersionTwo(_ hub: TestHub, _ h: UplinkHarness, _ adapter: HoldingTwinAdapter) async throws {
        h.uplink.start()
        try await eventually(30, "the twin's first document applied") { adapter.state.withLock { $0.versions } == [1] }
        adapter.state.withLock { $0.holding = true }
        _ = try await hub.core.perform { try $0.patchTwin("leaf-0", patch: ["properties": ["desired": ["pollSeconds": 5]]]) }
        try await eventually(10, "version 2 handed over and held") { adapter.state.withLock { $0.versions } == [1, 2] }
    }

    /// Reported patches queued from an adapter's thread reach the twin in the order they were queued: the last
    /// state wins, as it must for `online: false` then `online: true` (a task per patch could swap them).
    @Test func queuedReportsKeepTheirOrder() async throws {
        try await withHub { hub in
            let leaves = try await createLeaves(hub, count: 1)
            let h = try UplinkHarness(hub: hub, leaves: leaves, router: PointAdapter())
            h.uplink.start()
            try await eventually(30, "ready") { await h.uplink.status().count(.ready) == 1 }
            for n in 0..<200 { h.uplink.queueReport(["state": ["online": .bool(n % 2 == 1), "n": .int(Int64(n))]], for: "leaf-0") }
            try await eventually(15, "the last state reported") {
                try await hub.core.perform { try $0.twinView("leaf-0") }["properties"]?["reported"]?["state"]?["n"]?.intValue == 199
            }
            let state = try await hub.core.perform { try $0.twinView("leaf-0") }["properties"]?["reported"]?["state"]
            #expect(state?["online"] == true, "\(String(describing: state))")
            await h.stop()
        }
    }

    /// An adapter stuck on a desired document does not hold its leaf up for good: after the apply timeout the next
    /// document goes to it anyway, and it is that one which is reported.
    @Test func aStuckDesiredCallStopsHoldingItsLeafAtItsDeadline() async throws {
        try await withHub { hub in
            let leaves = try await createLeaves(hub, count: 1)
            let adapter = HoldingTwinAdapter()
            let h = try UplinkHarness(hub: hub, leaves: leaves, router: adapter) { $0.desiredApplyTimeoutMilliseconds = 500 }
            defer { adapter.release() }
            try await startAndHoldVersionTwo(hub, h, adapter)
            adapter.state.withLock { $0.holding = false }  // version 2 stays stuck; the next ones return
            _ = try await hub.core.perform { try $0.patchTwin("leaf-0", patch: ["properties": ["desired": ["pollSeconds": 6]]]) }
            try await eventually(10, "version 3 applied and reported past the stuck one") {
                try await hub.core.perform { try $0.twinView("leaf-0") }["properties"]?["reported"]?["config"]?["appliedVersion"]?.intValue == 3
            }
            #expect(adapter.state.withLock { $0.versions } == [1, 2, 3])
            adapter.release()
            try await Task.sleep(for: .milliseconds(300))
            let reported = try await hub.core.perform { try $0.twinView("leaf-0") }["properties"]?["reported"]?["config"]
            #expect(reported?["appliedVersion"]?.intValue == 3, "the late version 2 is not reported over 3: \(String(describing: reported))")
            await h.stop()
        }
    }

    /// Desired documents reach a leaf's adapter one at a time and in the hub's order, even when the adapter is slow
    /// and newer versions arrive meanwhile (a task per document once applied 1, 3, 4, then 2: the device ended on a
    /// stale setpoint while the hub said otherwise). The last version is applied and reported.
    @Test func desiredVersionsReachTheAdapterInOrderOneAtATime() async throws {
        try await withHub { hub in
            let leaves = try await createLeaves(hub, count: 1)
            let adapter = HoldingTwinAdapter()
            let h = try UplinkHarness(hub: hub, leaves: leaves, router: adapter)
            try await startAndHoldVersionTwo(hub, h, adapter)
            for poll in [6, 7] {
                _ = try await hub.core.perform { try $0.patchTwin("leaf-0", patch: ["properties": ["desired": ["pollSeconds": .int(Int64(poll))]]]) }
            }
            try await Task.sleep(for: .milliseconds(300))  // the notifications reach the uplink while 2 is held
            adapter.release()
            try await eventually(10, "version 4 applied and reported") {
                let reported = try await hub.core.perform { try $0.twinView("leaf-0") }["properties"]?["reported"]?["config"]
                return reported?["appliedVersion"]?.intValue == 4 && reported?["pollSeconds"]?.intValue == 7
            }
            let s = adapter.state.withLock { $0 }
            #expect(s.mostAtOnce == 1, "one call at a time: \(s.mostAtOnce)")
            #expect(s.versions == s.versions.sorted() && Set(s.versions).count == s.versions.count && s.versions.last == 4,
                    "in the hub's order, each once, the last one last: \(s.versions)")
            #expect(await h.uplink.status().leaves["leaf-0"]?.counters.desiredApplied == s.versions.count,
                    "the count is of documents handed over, not of those replaced while waiting")
            await h.stop()
        }
    }

    private func invoke(_ hub: TestHub, _ device: String, _ name: String, _ payload: JSONValue) async throws -> (Int, JSONValue?) {
        let r = try await HubServiceClient(host: "127.0.0.1", port: hub.running.httpPort, authorization: nil)
            .request("POST", "/twins/\(device)/methods", body: ["methodName": .string(name), "payload": payload, "responseTimeoutInSeconds": 10])
        return (r.json?["status"]?.intValue.map(Int.init) ?? -r.status, r.json?["payload"])
    }

    /// Issue 5 test 7: `write` lands on the device, `read` returns typed values, unknown → 404, bad payload → 400,
    /// a slow device → 504 at the local deadline (2 s here; the method takes 5 s).
    @Test func leafMethods() async throws {
        try await withHub { hub in
            let leaves = try await createLeaves(hub, count: 2)
            let adapter = PointAdapter()
            let h = try UplinkHarness(hub: hub, leaves: leaves, router: adapter) { $0.methodDeadlineMilliseconds = 2000 }
            h.uplink.start()
            try await eventually(10, "ready") { await h.uplink.status().count(.ready) == 2 }
            #expect(try await invoke(hub, "leaf-0", "ping", .null) == (200, ["pong": true]))
            #expect(try await invoke(hub, "leaf-0", "write", ["values": ["setpoint": 22.5, "mode": "manual"]]) == (200, ["written": 2]))
            #expect(adapter.points.withLock { $0["setpoint"] } == 22.5)
            #expect(try await invoke(hub, "leaf-1", "read", ["points": ["setpoint", "mode"]]) == (200, ["setpoint": 22.5, "mode": "manual"]))
            #expect(try await invoke(hub, "leaf-0", "write", ["values": ["setpoint": "hot"]]).0 == 400)
            let unknown = try await invoke(hub, "leaf-0", "selfDestruct", .null)
            #expect(unknown.0 == 404 && unknown.1?["error"]?.stringValue?.contains("selfDestruct") == true)
            // 504: answered at the local deadline (2 s), before the method finished (5 s), which would have been 200.
            // (No wall-clock bound: on a loaded machine the answer's trip alone can take seconds.)
            #expect(try await invoke(hub, "leaf-1", "slow", .null).0 == 504)
            let c = await h.uplink.status().leaves["leaf-1"]?.counters
            #expect(c?.methodTimeouts == 1 && c?.methodCalls == 2)
            await h.stop()
        }
    }

    /// Issue 5 test 8: a desired change made while the gateway is disconnected is applied exactly once after the
    /// reconnect; 100 reported updates while offline arrive as one patch.
    @Test func twinAcrossADisconnect() async throws {
        try await withHub { hub in
            let leaves = try await createLeaves(hub, count: 1)
            let adapter = PointAdapter()
            let h = try UplinkHarness(hub: hub, leaves: leaves, router: adapter) { $0.reportedIntervalMilliseconds = 100 }
            h.uplink.start()
            try await eventually(10, "ready") { await h.uplink.status().count(.ready) == 1 }
            // Ready comes before the twin's first GET is answered: a patch made sooner is what that GET returns, and
            // version 1 is never seen (it happened under emulation).
            try await eventually(10, "desired v1 applied") { adapter.desiredSeen.withLock { !$0.isEmpty } }
            _ = try await hub.core.perform { try $0.patchTwin("leaf-0", patch: ["properties": ["desired": ["pollSeconds": 5]]]) }
            try await eventually(10, "desired v2 applied and reported") {
                try await hub.core.perform { try $0.twinView("leaf-0") }["properties"]?["reported"]?["config"]?["appliedVersion"]?.intValue == 2
            }
            // Offline: the hub refuses connections; a desired change and 100 reported updates happen meanwhile.
            let service = HubServiceClient(host: "127.0.0.1", port: hub.running.httpPort, authorization: nil)
            _ = try await service.request("POST", "/faults/refuse-connections", body: ["seconds": 10])
            _ = try await hub.core.perform { $0.dropAllConnections() }
            try await eventually(5, "offline") { await h.uplink.status().leaves["leaf-0"]?.phase != .ready }
            _ = try await hub.core.perform { try $0.patchTwin("leaf-0", patch: ["properties": ["desired": ["pollSeconds": 60]]]) }
            let reportedBefore = try await hub.core.perform { try $0.twinView("leaf-0") }["properties"]?["reported"]?["$version"]?.intValue ?? 0
            for i in 1...100 { try await h.uplink.report(["counter": .int(Int64(i)), "state": .string("offline-\(i)")], for: "leaf-0") }
            let stillOffline = await h.uplink.status().leaves["leaf-0"]?.phase != .ready
            try #require(stillOffline, "the 100 updates must all happen while offline for this test to mean anything")
            try await eventually(30, "back, desired v3 applied, the counter reported") {
                let reported = try await hub.core.perform { try $0.twinView("leaf-0") }["properties"]?["reported"]
                return reported?["counter"]?.intValue == 100 && reported?["config"]?["appliedVersion"]?.intValue == 3
            }
            let reported = try await hub.core.perform { try $0.twinView("leaf-0") }["properties"]?["reported"]
            #expect(reported?["state"]?.stringValue == "offline-100")
            // One patch for the 100 updates, and one for the applied desired version 3 unless it was folded in too.
            let patches = (reported?["$version"]?.intValue ?? 0) - reportedBefore
            #expect(patches == 1 || patches == 2, "\(patches) patches")
            #expect(adapter.desiredSeen.withLock { $0.map(\.1) } == [1, 2, 3], "each desired version applied once")
            await h.stop()
        }
    }

    /// Issue 18.5: a device deleted and re-created starts its twin again at a low `$version`; the GET after the
    /// re-attach resets the remembered version, so the new twin's desired properties are applied.
    @Test func recreatedDeviceTwinStartsOver() async throws {
        try await withHub { hub in
            let leaves = try await createLeaves(hub, count: 1)
            guard case .symmetricKey(let primary, let secondary) = leaves[0].credential else { throw CancellationError() }
            let adapter = PointAdapter()
            let h = try UplinkHarness(hub: hub, leaves: leaves, router: adapter) {
                $0.refusedBackoff = Backoff(initialMilliseconds: 100, maximumMilliseconds: 500)
            }
            h.uplink.start()
            // Generous waits: in the full suite on two cores this test once took ~30 s to attach, and twice missed
            // a 10 s wait for the desired patches (CI, 6 December 2026); alone it passes in 0.3 s.
            try await eventually(30, "ready") { await h.uplink.status().count(.ready) == 1 }
            for poll in [5, 6, 7] {
                _ = try await hub.core.perform { try $0.patchTwin("leaf-0", patch: ["properties": ["desired": ["pollSeconds": .int(Int64(poll))]]]) }
            }
            try await eventually(30, "desired v4 applied") { adapter.desiredSeen.withLock { $0.last?.1 } == 4 }
            try await hub.core.perform { core in
                try core.deleteDevice("leaf-0")
                _ = try core.upsertDevice(id: "leaf-0", status: nil, primaryKey: primary, secondaryKey: secondary)
                _ = try core.patchTwin("leaf-0", patch: ["properties": ["desired": ["pollSeconds": 30]]])
            }
            try await eventually(30, "the new twin's desired v2 applied") {
                let last = adapter.desiredSeen.withLock { $0.last }
                return last?.1 == 2 && last?.2["pollSeconds"]?.intValue == 30
            }
            await h.stop()
        }
    }

    /// Links follow each leaf's capabilities (a leaf's `cloud` key): a telemetry-only leaf sends telemetry and
    /// is ready, but has no methods (the hub answers 404: not connected for methods) and no twin to report to.
    @Test func telemetryOnlyLeafAttachesOnlyItsSender() async throws {
        try await withHub { hub in
            var leaves = try await createLeaves(hub, count: 2)
            leaves[1].capabilities = []
            let h = try UplinkHarness(hub: hub, leaves: leaves, router: PointAdapter())
            h.uplink.start()
            try await eventually(10, "ready") { await h.uplink.status().count(.ready) == 2 }
            try h.spool.append(["leaf-0", "leaf-1"].map { leaf in
                Spool.Entry(leaf: leaf, acquiredAtMs: WallClock.nowMilliseconds(), payload: TelemetryEnvelope(body: Array("{\"t\":1}".utf8)).encoded())
            })
            h.uplink.wake()
            try await eventually(10, "both readings at the hub") { try await allEvents(hub).count == 2 }
            #expect(Set(try await allEvents(hub).map(\.deviceId)) == ["leaf-0", "leaf-1"])
            #expect(try await invoke(hub, "leaf-0", "ping", .null) == (200, ["pong": true]))
            let noMethods = try await invoke(hub, "leaf-1", "ping", .null)
            #expect(noMethods.0 == -404, "no methods links: the hub answers HTTP 404 (device not online for methods): \(noMethods)")
            await #expect(throws: UplinkError.self) { try await h.uplink.report(["x": 1], for: "leaf-1") }
            try await h.uplink.report(["x": 1], for: "leaf-0")
            await h.stop()
        }
    }

    /// Issue 5 test 9: oversized or invalid reported patches are refused locally with a clear error, never sent.
    @Test func invalidReportedPatchesAreRefusedLocally() async throws {
        try await withHub { hub in
            let leaves = try await createLeaves(hub, count: 1)
            let h = try UplinkHarness(hub: hub, leaves: leaves, router: PointAdapter())
            h.uplink.start()
            try await eventually(10, "ready") { await h.uplink.status().count(.ready) == 1 }
            let bad: [(JSONValue, String)] = [
                (["list": [1, 2]], "array"),
                (["a": ["b": ["c": ["d": ["e": ["f": 1]]]]]], "deep"),
                (["big": .string(String(repeating: "x", count: 500)), "big2": .string(String(repeating: "y", count: 500))], "ok-size"),
                (["bad.key": 1], "key"),
            ]
            for (patch, label) in bad where label != "ok-size" {
                await #expect(throws: UplinkError.self, "\(label)") { try await h.uplink.report(patch, for: "leaf-0") }
            }
            var huge: [String: JSONValue] = [:]
            for i in 0..<20 { huge["k\(i)"] = .string(String(repeating: "z", count: 500)) }
            do throws(UplinkError) {
                try await h.uplink.report(.object(huge), for: "leaf-0")
                Issue.record("a 10 KB patch was accepted")
            } catch {
                #expect(error.message.contains("8192"), "clear error: \(error.message)")
            }
            try await Task.sleep(for: .milliseconds(300))
            let reported = try await hub.core.perform { try $0.twinView("leaf-0") }["properties"]?["reported"]
            #expect(reported?["k0"] == nil && reported?["list"] == nil, "nothing was sent")
            await h.stop()
        }
    }
}
