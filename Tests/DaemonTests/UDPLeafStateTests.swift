import Dispatch
import FieldgateCore
import HubEmulator
import HubServiceClient
import HubTestSupport
import MessageAuthentication
import Synchronization
import Testing

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#endif

/// A UDP leaf on its own socket: sends readings to the gateway and answers its commands (C2D, methods, desired),
/// recording what arrived in order.
final class UDPLeafPeer: Sendable {
    let device: String
    let gatewayPort: Int
    private let fd: Int32
    private let stopped = Atomic<Bool>(false)
    private let received = Mutex<[JSONValue]>([])

    init(device: String, gatewayPort: Int) {
        self.device = device
        self.gatewayPort = gatewayPort
        fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var local = sockaddr_in()
        local.sin_family = sa_family_t(AF_INET)
        inet_pton(AF_INET, "127.0.0.1", &local.sin_addr)
        _ = withUnsafePointer(to: &local) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        DispatchQueue(label: "udp-leaf-\(device)").async { [self] in
            var buffer = [UInt8](repeating: 0, count: 65536)
            while !stopped.load(ordering: .acquiring) {
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&p, 1, 100) > 0 else { continue }
                let n = recv(fd, &buffer, buffer.count, 0)
                guard n > 0, let command = JSONValue.parse(Array(buffer[0..<n])), let id = command["id"] else { continue }
                received.withLock { $0.append(command) }
                send(["device": .string(device), "type": "reply", "id": id, "status": 200, "payload": ["ok": true]])
            }
            close(fd)  // here, not in `stop`: the loop may still be polling it, and the number could be reused
        }
    }

    func send(_ value: JSONValue) { send(bytes: value.bytes) }

    func send(bytes: [UInt8]) {
        guard !stopped.load(ordering: .acquiring) else { return }  // the loop closes the socket once stopped
        var to = sockaddr_in()
        to.sin_family = sa_family_t(AF_INET)
        to.sin_port = in_port_t(UInt16(gatewayPort).bigEndian)
        inet_pton(AF_INET, "127.0.0.1", &to.sin_addr)
        _ = withUnsafePointer(to: &to) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, bytes, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }

    func reading(_ value: Double) { send(["device": .string(device), "values": ["t": .double(value)]]) }

    /// The ids of the commands of `type` that arrived, in order.
    func commands(_ type: String) -> [String] {
        received.withLock { $0.filter { $0["type"]?.stringValue == type }.compactMap { $0["id"]?.stringValue } }
    }

    /// Ends the peer (its loop closes the socket); calling it again does nothing.
    func stop() {
        stopped.store(true, ordering: .releasing)
    }
}

@Suite("fieldgated UDP leaf state", .serialized)
struct UDPLeafStateTests {
    private func service(_ hub: TestHub) -> HubServiceClient {
        HubServiceClient(host: "127.0.0.1", port: hub.running.httpPort, authorization: nil)
    }

    private func feedback(_ hub: TestHub, into records: inout [String: String]) async {
        for f in (try? await service(hub).request("GET", "/messages/serviceBound/feedback?wait=200").json?.arrayValue) ?? [] {
            if let id = f["originalMessageId"]?.stringValue { records[id] = f["statusCode"]?.stringValue }
        }
    }

    private func sendC2D(_ hub: TestHub, to leaf: String, id: String) async throws {
        try await hub.core.perform { core in
            _ = try core.sendCloudToDevice(leaf, message: CloudToDeviceMessage(messageId: id, body: Array(#"{"set":"\#(id)"}"#.utf8), ack: .full),
                                           ttlMilliseconds: nil)
        }
    }

    /// Issue 18.1: C2D queued for 10 UDP leaves before fieldgated starts; the leaves speak 30 s later. Meanwhile a
    /// method to such a leaf answers 404 "leaf not connected" at once. Every message then arrives once, in order,
    /// with feedback Success and no redelivery. After a restart the leaves' addresses are remembered: a new C2D
    /// message reaches a leaf that has not spoken since.
    @Test func cloudToDeviceWaitsForLeavesNotYetHeardFrom() async throws {
        try await withHub { hub in
            let leaves = (0..<10).map { "quiet-\($0)" }
            for leaf in leaves {
                _ = try await hub.createDevice(leaf)
                for k in 0..<3 { try await sendC2D(hub, to: leaf, id: "\(leaf)-m\(k)") }
            }
            let d = try await DaemonUnderTest.start(hub: hub, leaves: leaves)
            defer { d.cleanUp() }
            #expect(await d.eventually(seconds: 20) { d.devices(in: "ready").isSuperset(of: leaves) }, "\(d.stderr)")
            let started = MonotonicClock.milliseconds()
            let method = try await service(hub).request("POST", "/twins/quiet-0/methods",
                                                        body: ["methodName": "read", "payload": nil, "responseTimeoutInSeconds": 10])
            #expect(method.json?["status"]?.intValue == 404, "\(method.text)")
            #expect(method.text.contains("leaf not connected"), "\(method.text)")
            #expect(MonotonicClock.milliseconds() - started < 2000, "answered at once, not at the deadline")

            try await Task.sleep(for: .seconds(30))
            var records: [String: String] = [:]
            await feedback(hub, into: &records)
            #expect(records.isEmpty, "nothing settled while the leaves were silent: \(records)")
            let peers = leaves.map { UDPLeafPeer(device: $0, gatewayPort: d.udpPort) }
            defer { for p in peers { p.stop() } }
            for p in peers { p.reading(1) }
            let expected = leaves.flatMap { leaf in (0..<3).map { "\(leaf)-m\($0)" } }
            _ = await d.eventually(seconds: 30) {
                await feedback(hub, into: &records)
                return records.count >= expected.count
            }
            #expect(records == Dictionary(uniqueKeysWithValues: expected.map { ($0, "Success") }))
            for p in peers { #expect(p.commands("c2d") == (0..<3).map { "\(p.device)-m\($0)" }, "\(p.device)") }
            let queues = try await hub.core.perform { core in leaves.map { core.cloudToDeviceQueueCount($0) } }
            #expect(queues.allSatisfy { $0 == 0 })

            // Restart: the addresses survive, so a command reaches a leaf that has not spoken since.
            d.signal(SIGTERM)
            #expect(await d.waitForExit(seconds: 20) == 0)
            let again = try d.restarted()
            defer { again.cleanUp() }
            #expect(await again.eventually(seconds: 20) { again.devices(in: "ready").isSuperset(of: leaves) })
            try await sendC2D(hub, to: "quiet-3", id: "after-restart")
            _ = await again.eventually(seconds: 15) {
                await feedback(hub, into: &records)
                return records["after-restart"] != nil
            }
            #expect(records["after-restart"] == "Success")
            #expect(peers[3].commands("c2d").last == "after-restart")
        }
    }

    private func replays(_ d: DaemonUnderTest) -> Int64 {
        let status = try? d.control(["command": "status"])
        return status?["adapters"]?["udp:\(d.udpPort)"]?["rejected"]?["replay"]?.intValue ?? 0
    }

    private func events(_ hub: TestHub, of leaf: String) async -> [ReceivedEvent] {
        ((try? await hub.events()) ?? []).filter { $0.deviceId == leaf }
    }

    /// Issue 18.6: a signed datagram captured once is refused after a reload and after a restart (the replay
    /// floor is kept in the adapter's state file); a new one is accepted.
    @Test func signedDatagramIsNotReplayedAfterReloadOrRestart() async throws {
        try await withHub { hub in
            let key = "a shared leaf secret"
            let d = try await DaemonUnderTest.start(hub: hub, leaves: [], otherDevices: ["signed-0"],
                                                    files: ["devices.d/signed.toml": "[[leaf]]\ndevice_id = \"signed-0\"\nadapter = \"udp\"\nhmac = true\n"],
                                                    secrets: "[hmac]\n\"signed-0\" = \"\(key)\"\n")
            defer { d.cleanUp() }
            #expect(await d.eventually(seconds: 20) { d.devices(in: "ready").contains("signed-0") }, "\(d.stderr)")
            func signed(_ n: Int) -> [UInt8] {
                let body = JSONValue.object(["device": "signed-0", "ts": .int(WallClock.nowMilliseconds()), "values": ["n": .int(Int64(n))]]).bytes
                let mac = HMACSHA256.authenticationCode(for: body, key: Array(key.utf8))
                return body + Array("\nsig=\(Data(mac).base64EncodedString())".utf8)
            }
            let captured = signed(1)
            let leaf = UDPLeafPeer(device: "signed-0", gatewayPort: d.udpPort)
            defer { leaf.stop() }
            leaf.send(bytes: captured)
            #expect(await d.eventually { await events(hub, of: "signed-0").count == 1 })
            leaf.send(bytes: captured)
            #expect(await d.eventually { replays(d) == 1 }, "refused while running")

            d.signal(SIGHUP)
            try await Task.sleep(for: .seconds(2))
            leaf.send(bytes: captured)
            #expect(await d.eventually { replays(d) == 2 }, "refused after a reload")

            d.signal(SIGTERM)
            #expect(await d.waitForExit(seconds: 20) == 0)
            let again = try d.restarted()
            defer { again.cleanUp() }
            #expect(await again.eventually(seconds: 20) { again.devices(in: "ready").contains("signed-0") })
            leaf.send(bytes: captured)
            #expect(await again.eventually { replays(again) == 1 }, "refused after a restart")
            leaf.send(bytes: signed(2))
            #expect(await again.eventually { await events(hub, of: "signed-0").count == 2 })
            try await Task.sleep(for: .seconds(1))
            #expect(await events(hub, of: "signed-0").count == 2, "the captured datagram never reached the hub again")
        }
    }

    /// Issue 18.9: a desired-properties datagram goes to a leaf only when its twin has desired properties and only
    /// when they changed since the leaf acknowledged them, across restarts.
    @Test func desiredDatagramsOnlyWhenThereIsSomethingNew() async throws {
        try await withHub { hub in
            let d = try await DaemonUnderTest.start(hub: hub, leaves: ["plain-0", "tuned-0"])
            defer { d.cleanUp() }
            let plain = UDPLeafPeer(device: "plain-0", gatewayPort: d.udpPort)
            let tuned = UDPLeafPeer(device: "tuned-0", gatewayPort: d.udpPort)
            defer { plain.stop(); tuned.stop() }
            #expect(await d.eventually(seconds: 20) { d.devices(in: "ready").isSuperset(of: ["plain-0", "tuned-0"]) }, "\(d.stderr)")
            plain.reading(1)
            tuned.reading(1)
            #expect(await d.eventually { await events(hub, of: "tuned-0").count == 1 })
            _ = try await hub.core.perform { try $0.patchTwin("tuned-0", patch: ["properties": ["desired": ["interval": 5]]]) }
            #expect(await d.eventually { tuned.commands("desired").count == 1 }, "\(d.stderr)")

            var current = d
            for _ in 0..<2 {
                current.signal(SIGTERM)
                #expect(await current.waitForExit(seconds: 20) == 0)
                current = try d.restarted()
                let running = current
                #expect(await running.eventually(seconds: 20) { running.devices(in: "ready").isSuperset(of: ["plain-0", "tuned-0"]) })
                try await Task.sleep(for: .seconds(2))
            }
            current.signal(SIGTERM)
            #expect(await current.waitForExit(seconds: 20) == 0)
            #expect(plain.commands("desired").isEmpty, "no desired properties: no datagram")
            #expect(tuned.commands("desired").count == 1, "unchanged across two restarts: not sent again")

            let last = try d.restarted()
            defer { last.cleanUp() }
            #expect(await last.eventually(seconds: 20) { last.devices(in: "ready").contains("tuned-0") })
            _ = try await hub.core.perform { try $0.patchTwin("tuned-0", patch: ["properties": ["desired": ["interval": 10]]]) }
            #expect(await last.eventually { tuned.commands("desired").count == 2 }, "a change is sent")
        }
    }
}

@Suite("fieldgated operational log lines")
struct OperationalLogTests {
    /// Issue 18.7: plaintext mode warns at every connect (not once, where it scrolls away); a throttled leaf is
    /// logged with its id and the hub's text.
    @Test func plaintextWarnsAtEveryConnectAndThrottlingIsLogged() async throws {
        try await withHub { hub in
            let d = try await DaemonUnderTest.start(hub: hub, leaves: ["hot-0"], plainAMQP: true)
            defer { d.cleanUp() }
            #expect(await d.eventually(seconds: 20) { d.devices(in: "ready").contains("hot-0") }, "\(d.stderr)")
            _ = try await hub.core.perform { $0.dropAllConnections() }
            #expect(await d.eventually { d.stderr.components(separatedBy: "WITHOUT TLS").count - 1 >= 2 }, "warned at each connect: \(d.stderr)")
            #expect(await d.eventually(seconds: 20) { d.devices(in: "ready").contains("hot-0") })
            try await hub.core.perform { core in try core.throttle("hot-0", forSeconds: 30) }
            let peer = UDPLeafPeer(device: "hot-0", gatewayPort: d.udpPort)
            defer { peer.stop() }
            peer.reading(1)
            #expect(await d.eventually { d.stderr.contains("hot-0: the hub throttled telemetry") }, "\(d.stderr)")
            let line = d.stderr.split(separator: "\n").first { $0.contains("the hub throttled telemetry") } ?? ""
            #expect(line.contains("leaf=hot-0") && line.contains("hub_error=") && line.contains("pauses"), "leaf, hub condition and pause: \(line)")
        }
    }
}
