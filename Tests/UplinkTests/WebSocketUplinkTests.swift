import FieldgateCore
import HubEmulator
import HubServiceClient
import HubTestSupport
import HubTunnel
import IoTHub
import Spool
import ProtonAMQP
import Testing
import Uplink

import Foundation

/// AMQP over WebSockets (issue 20): the same uplink over a real TLS WebSocket to fieldgate-hub's HTTPS port.
@Suite("Uplink over WebSockets")
struct WebSocketUplinkTests {
    private func webSocket(_ hub: TestHub, _ config: inout UplinkConfiguration) {
        config.route = .webSocket
        config.webSocket.port = hub.running.httpsPort!
        config.webSocket.proxy = .direct
    }

    private func service(_ hub: TestHub) -> HubServiceClient {
        HubServiceClient(host: "127.0.0.1", port: hub.running.httpPort, authorization: nil)
    }

    /// Telemetry, C2D with feedback, a method and a desired change for several leaves, all on one WebSocket through
    /// a real tinyproxy that wants Basic authentication.
    @Test func everythingOnOneWebSocketThroughAnAuthenticatingProxy() async throws {
        let proxy = try TestProxy.start()
        defer { proxy.stop() }
        try await withHub(configure: { $0.httpsPort = 0 }) { hub in
            let leaves = try await createLeaves(hub, count: 3)
            let adapter = PointAdapter()
            let h = try UplinkHarness(hub: hub, leaves: leaves, router: adapter) {
                webSocket(hub, &$0)
                $0.webSocket.proxy = .url(proxy.url, user: TestProxy.user, password: TestProxy.password)
            }
            h.uplink.start()
            try await eventually(15, "ready") { await h.uplink.status().count(.ready) == 3 }
            let status = await h.uplink.status()
            #expect(status.connections.map(\.transport) == ["amqps-websocket"])
            #expect(try await hub.core.perform { $0.connectionCount } == 1)

            let ids = try h.append((0..<30).map { (leaf: "leaf-\($0 % 3)", json: #"{"n":\#($0)}"#, properties: ["n": String($0)]) })
            try await eventually(15, "30 messages at the hub") { try await hub.core.perform { $0.acceptedEventCount } == 30 }
            #expect(Set(try await allEvents(hub).compactMap { $0.systemProperties["message-id"] }) == Set(ids))

            let method = try await service(hub).request("POST", "/twins/leaf-1/methods",
                                                        body: ["methodName": "ping", "payload": .null, "responseTimeoutInSeconds": 10])
            #expect(method.json?["status"]?.intValue == 200 && method.json?["payload"] == ["pong": true])

            _ = try await hub.core.perform { try $0.patchTwin("leaf-2", patch: ["properties": ["desired": ["pollSeconds": 7]]]) }
            try await eventually(10, "desired applied and reported") {
                try await hub.core.perform { try $0.twinView("leaf-2") }["properties"]?["reported"]?["config"]?["pollSeconds"]?.intValue == 7
            }

            let sent = try await service(hub).request("POST", "/devices/leaf-0/messages/deviceBound",
                                                      body: ["body": "set 21", "messageId": "ws-c2d-1", "ack": "full"])
            #expect(sent.status == 200)
            try await eventually(15, "C2D feedback Success") {
                let r = try await service(hub).request("GET", "/messages/serviceBound/feedback?wait=200")
                return r.json?.arrayValue?.contains { $0["originalMessageId"]?.stringValue == "ws-c2d-1" && $0["statusCode"]?.stringValue == "Success" } == true
            }
            #expect(proxy.log().contains("CONNECT localhost:\(hub.running.httpsPort!)") || proxy.log().contains("CONNECT 127.0.0.1:\(hub.running.httpsPort!)"),
                    "the tunnel went through the proxy: \(proxy.log())")
            await h.stop()
        }
    }

    /// `auto`: AMQPS is refused (nothing listens there), so after the configured failures the uplink moves to
    /// WebSockets, delivers there, and says so in its status.
    @Test func autoFallsBackToWebSockets() async throws {
        try await withHub(configure: { $0.httpsPort = 0 }) { hub in
            let leaves = try await createLeaves(hub, count: 2)
            let h = try UplinkHarness(hub: hub, leaves: leaves) {
                webSocket(hub, &$0)
                $0.route = .auto
                $0.port = 1  // nothing listens on port 1: connection refused at once
                $0.failuresBeforeNextRoute = 2
            }
            h.uplink.start()
            try await eventually(20, "ready over the fallback") { await h.uplink.status().count(.ready) == 2 }
            let connection = try #require(await h.uplink.status().connections.first)
            #expect(connection.transport == "amqps-websocket")
            #expect(connection.opens == 1)
            try h.append([(leaf: "leaf-0", json: #"{"v":1}"#, properties: [:]), (leaf: "leaf-1", json: #"{"v":2}"#, properties: [:])])
            try await eventually(10, "delivered") { try await hub.core.perform { $0.acceptedEventCount } == 2 }
            await h.stop()
        }
    }

    /// A hub restart under a WebSocket connection: everything appended before, during and after arrives, with the
    /// same message ids.
    @Test(.disabled("""
        In-process restart only: under the full parallel suite on 2 cores, the stopped hub's HTTPS listener (Hummingbird) \
        is not released within 10 s, so the restarted hub cannot bind it. The product-level case (fieldgate-hub \
        restarted as a process under a WebSocket connection, mid-stream, through a proxy) is checked by \
        scripts/websocket-e2e.sh step 3. Passes when run alone.
        """))
    func hubRestartLosesNothing() async throws {
        // Ports below the ephemeral range: the restart must bind them again, and a parallel test's outgoing
        // connection could otherwise take a freed ephemeral port meanwhile.
        var hub = try await TestHub.start {
            $0.httpsPort = Int.random(in: 20000..<25000)
            $0.amqpsPort = $0.httpsPort! + 5000  // kept across the restart too
        }
        let leaves = try await createLeaves(hub, count: 2)
        let h = try UplinkHarness(hub: hub, leaves: leaves) { webSocket(hub, &$0) }
        h.uplink.start()
        do {
            try await eventually(15, "ready") { await h.uplink.status().count(.ready) == 2 }
            var ids = try h.append((0..<50).map { (leaf: "leaf-\($0 % 2)", json: #"{"n":\#($0)}"#, properties: [:]) })
            // Mid-stream: the hub refuses new connections and drops the WebSocket (what was in flight is not
            // settled), then restarts. It keeps received events in memory only, so what it accepted before is read
            // once nothing more can arrive there.
            _ = try await service(hub).request("POST", "/faults/refuse-connections", body: ["seconds": 60])
            _ = try await hub.core.perform { $0.dropAllConnections() }
            try await eventually(10, "the WebSocket closed") { try await hub.core.perform { $0.connectionCount } == 0 }
            let before = Set(try await allEvents(hub).compactMap { $0.systemProperties["message-id"] })
            hub = try await hub.restart()
            ids += try h.append((50..<100).map { (leaf: "leaf-\($0 % 2)", json: #"{"n":\#($0)}"#, properties: [:]) })
            let restarted = hub
            try await eventually(40, "all 100 at the hub, before or after the restart") {
                before.union(try await allEvents(restarted).compactMap { $0.systemProperties["message-id"] }).isSuperset(of: ids)
            }
            try await eventually(10, "spool drained") { h.spool.statistics().depth == 0 }
            let connection = await h.uplink.status().connections.first
            #expect(connection?.transport == "amqps-websocket")
            #expect((connection?.opens ?? 0) >= 2, "reconnected after the restart")
        } catch {
            // An uplink left running would retry for the rest of the test run.
            await h.stop()
            await hub.stop()
            throw error
        }
        await h.stop()
        await hub.stop()
    }

    /// X.509 identities over WebSockets, as IoT Hub takes them: each presents its certificate at the tunnel's TLS,
    /// through the authenticating proxy, on a connection of its own (no CBS); by thumbprint and CA-signed. One the
    /// hub does not know is refused with the hub's reason while the others carry on.
    @Test func x509LeavesOverWebSocketsThroughTheProxy() async throws {
        let proxy = try TestProxy.start()
        defer { proxy.stop() }
        try await withHub(configure: { $0.httpsPort = 0 }) { hub in
            let dir = hub.directory + "/x509"
            let selfSigned = try LocalCertificates.createDeviceCertificate(in: dir + "/self", deviceID: "x509-self")
            let issued = try LocalCertificates.createDeviceCertificate(in: dir + "/issued", deviceID: "x509-ca", issuer: hub.certificates)
            let stranger = try LocalCertificates.createDeviceCertificate(in: dir + "/stranger", deviceID: "x509-stranger")
            let caPEM = try String(contentsOfFile: hub.certificates.caCertificate, encoding: .utf8)
            try await hub.core.perform { core in
                try core.upsertX509Device(id: "x509-self", status: nil, .selfSigned(primaryThumbprint: selfSigned.thumbprintSHA1, secondaryThumbprint: nil))
                try core.upsertX509Device(id: "x509-ca", status: nil, .certificateAuthority)
                try core.upsertX509Device(id: "x509-stranger", status: nil,
                                          .selfSigned(primaryThumbprint: String(repeating: "AB", count: 20), secondaryThumbprint: nil))
                _ = try core.putCACertificate(name: "fleet", pem: caPEM, verified: true)
            }
            let sas = try await createLeaves(hub, count: 1)
            let certified = [("x509-self", selfSigned), ("x509-ca", issued), ("x509-stranger", stranger)].map {
                LeafConfiguration(deviceID: $0.0, credential: .x509(certificateFile: $0.1.certificate, keyFile: $0.1.key))
            }
            let h = try UplinkHarness(hub: hub, leaves: sas + certified) {
                webSocket(hub, &$0)
                $0.webSocket.proxy = .url(proxy.url, user: TestProxy.user, password: TestProxy.password)
            }
            h.uplink.start()
            let known = ["leaf-0", "x509-self", "x509-ca"]
            try await eventually(20, "the SAS leaf and both known certificates ready, the stranger refused") {
                let s = await h.uplink.status()
                return known.allSatisfy { s.leaves[$0]?.phase == .ready } && s.leaves["x509-stranger"]?.phase == .refused
            }
            let status = await h.uplink.status()
            #expect(status.leaves["x509-stranger"]?.lastError?.contains("thumbprint matches neither") == true,
                    "\(String(describing: status.leaves["x509-stranger"]?.lastError))")
            #expect(status.connections.count == 4 && status.connections.allSatisfy { $0.transport == "amqps-websocket" },
                    "one connection for the SAS leaf, one per certificate: \(status.connections.map { ($0.transport, $0.leaves) })")
            // curl asks the proxy for the address it connects to (the harness's 127.0.0.1) or for the hub's name.
            let tunnels = ["localhost", "127.0.0.1"].map { proxy.log().components(separatedBy: "CONNECT \($0):\(hub.running.httpsPort!)").count - 1 }
            #expect(tunnels.reduce(0, +) >= 4, "every connection went through the proxy: \(proxy.log())")

            let ids = try h.append(known.map { (leaf: $0, json: #"{"from":"\#($0)"}"#, properties: [:]) })
            try await eventually(15, "a message of each at the hub") { try await hub.core.perform { $0.acceptedEventCount } == 3 }
            let events = try await allEvents(hub)
            #expect(Set(events.compactMap { $0.systemProperties["message-id"] }) == Set(ids))
            for device in ["x509-self", "x509-ca"] {
                let method = events.first { $0.deviceId == device }?.annotations[IoTHubAMQP.connectionAuthMethod] ?? ""
                #expect(method.contains(#""type":"x509""#), "\(device): \(method)")
            }
            await h.stop()
        }
    }

    /// A TLS peer that is not the hub (another certificate) is refused before any token leaves.
    @Test func foreignCertificateIsRefused() async throws {
        try await withHub(configure: { $0.httpsPort = 0 }) { hub in
            let other = try LocalCertificates.create(in: hub.directory + "/other-ca", dnsNames: ["localhost"])
            let leaves = try await createLeaves(hub, count: 1)
            let h = try UplinkHarness(hub: hub, leaves: leaves) {
                webSocket(hub, &$0)
                $0.transport = .tls(.init(caFile: other.caCertificate))
            }
            h.uplink.start()
            try await eventually(10, "a TLS error in the status") {
                await h.uplink.status().connections.first?.lastError?.contains("TLS") == true
            }
            #expect(try await hub.core.perform { $0.connectionCount } == 0)
            await h.stop()
        }
    }
}

/// fieldgate-hub's WebSocket endpoint refuses what IoT Hub refuses, with the status it gives (400).
@Suite("fieldgate-hub WebSocket endpoint")
struct WebSocketEndpointTests {
    /// Opens a tunnel as `configure` says and returns why it ended.
    private func outcome(_ hub: TestHub, _ configure: (inout WebSocketTunnelConfiguration) -> Void) async -> String {
        var c = WebSocketTunnelConfiguration(hostName: hub.hostName)
        c.address = "127.0.0.1"
        c.port = hub.running.httpsPort!
        c.caFile = hub.certificates.caCertificate
        c.proxy = .direct
        configure(&c)
        let tunnel = WebSocketTunnel(configuration: c)
        let ended = await withCheckedContinuation { (cont: CheckedContinuation<String, Never>) in
            tunnel.start(AMQPByteStreamSink(received: { _ in }, ended: { cont.resume(returning: $0?.message ?? "clean") }))
            // A tunnel that opened gets the AMQP header and our Close: the hub answers and the stream ends cleanly.
            tunnel.write(Array("AMQP".utf8) + [0, 1, 0, 0])
            tunnel.close()
        }
        return ended
    }

    @Test func refusesOtherSubprotocolsPathsAndPlainRequests() async throws {
        try await withHub(configure: { $0.httpsPort = 0 }) { hub in
            #expect(await outcome(hub) { _ in } == "clean")
            let mqtt = await outcome(hub) { $0.subprotocol = "mqtt" }
            #expect(mqtt.contains("HTTP 400"), "\(mqtt)")
            let path = await outcome(hub) { $0.path = "/$iothub/other" }
            #expect(path.contains("HTTP 400"), "\(path)")
            // A plain HTTPS request to the WebSocket path, with curl.
            let out = await runCommand("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", hub.certificates.caCertificate,
                                                     "--connect-to", "localhost:\(hub.running.httpsPort!):127.0.0.1:\(hub.running.httpsPort!)",
                                                     "https://localhost:\(hub.running.httpsPort!)/$iothub/websocket"])
            #expect(out == "400")
        }
    }
}

/// Runs a program and returns its standard output, off the cooperative pool. Through the shell's `system`, not
/// Foundation's Process, which once closed a descriptor twice (see TestProxy).
private func runCommand(_ path: String, _ arguments: [String]) async -> String {
    let output = FileManager.default.temporaryDirectory.path + "/fieldgate-command-\(UInt64.random(in: 0...UInt64.max))"
    let quoted = ([path] + arguments).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
    await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
        DispatchQueue(label: "fieldgate.tests.command").async {
            _ = system(quoted + " > '" + output + "'")
            cont.resume()
        }
    }
    defer { unlink(output) }
    return (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
}
