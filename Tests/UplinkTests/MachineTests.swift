import FieldgateCore
import IoTHub
import ProtonAMQP
import Spool
import Testing
@testable import Uplink

@Suite("Uplink state machines (no sockets)")
struct MachineTests {
    static let timing = LeafMachine.Timing(
        tokenTTLMilliseconds: 3_600_000, renewFraction: 0.8, renewJitter: 0.05,
        leafBackoff: Backoff(initialMilliseconds: 100, maximumMilliseconds: 10_000),
        throttleBackoff: Backoff(initialMilliseconds: 10_000, maximumMilliseconds: 60_000),
        refusedBackoff: Backoff(initialMilliseconds: 30_000, maximumMilliseconds: 600_000),
        operationTimeoutMilliseconds: 30_000)

    private func readyLeaf(secondary: Bool = false) -> LeafMachine {
        var m = LeafMachine(hasSecondaryKey: secondary, timing: Self.timing)
        m.connectionOpened()
        let admitted = m.admitted(nowMs: 0)
        #expect(admitted == [.putToken(.primary)])
        let answered = m.tokenAnswered(status: 200, description: "OK", nowMs: 0, random: 0.5)
        #expect(answered == [.attachLinks])
        m.linksAttached()
        #expect(m.phase == .ready)
        return m
    }

    @Test func renewsAtEightyPercentWithJitterKeepingLinks() {
        var m = readyLeaf()
        #expect(m.tick(nowMs: 2_879_999) == [])
        #expect(m.tick(nowMs: 2_880_000) == [.putToken(.primary)])
        #expect(m.tick(nowMs: 2_880_001) == [], "one renewal at a time")
        #expect(m.tokenAnswered(status: 200, description: "OK", nowMs: 2_880_000, random: 1) == [])
        #expect(m.phase == .ready)
        // Jitter: random 1 → 85 % of the TTL after the renewal.
        let renewAt = m.renewAtMs ?? 0
        #expect(abs(renewAt - (2_880_000 + 3_060_000)) <= 1)
    }

    @Test func refusedRenewalDetachesButThrottledRenewalRetries() {
        var m = readyLeaf()
        _ = m.tick(nowMs: 2_880_000)
        #expect(m.tokenAnswered(status: 429, description: "throttled", nowMs: 2_880_000, random: 0) == [])
        #expect(m.phase == .ready, "the old token still holds")
        let retryAt = try! #require(m.renewAtMs)
        #expect(retryAt > 2_880_000 && retryAt <= 2_880_100)
        _ = m.tick(nowMs: retryAt)
        #expect(m.tokenAnswered(status: 401, description: "disabled", nowMs: retryAt, random: 0) == [.detachLinks])
        #expect(m.phase == .refused)
    }

    @Test func secondaryKeyAfterAPrimaryRefusalThenSlowRetry() {
        var m = LeafMachine(hasSecondaryKey: true, timing: Self.timing)
        m.connectionOpened()
        _ = m.admitted(nowMs: 0)
        #expect(m.tokenAnswered(status: 401, description: "bad signature", nowMs: 0, random: 0) == [])
        #expect(m.phase == .queued)
        #expect(m.admitted(nowMs: 1) == [.putToken(.secondary)])
        _ = m.tokenAnswered(status: 401, description: "bad signature", nowMs: 1, random: 0)
        #expect(m.phase == .refused)
        #expect(m.deadlineMs == 1 + 15_000, "first slow retry: half of 30 s at random 0")
        _ = m.tick(nowMs: 15_001)
        #expect(m.phase == .queued)
        #expect(m.admitted(nowMs: 15_001) == [.putToken(.primary)], "the primary is tried again")
        _ = m.tokenAnswered(status: 404, description: "not registered", nowMs: 15_001, random: 0)
        #expect(m.deadlineMs == 15_001 + 30_000, "the refused back-off grows")
    }

    /// Issue 18.4: the slot that worked is kept across reconnects and through refusals that are not about the
    /// key (a disabled or re-created device); a refused signature tries the other slot first.
    @Test func workingKeySlotIsKept() {
        var m = LeafMachine(hasSecondaryKey: true, timing: Self.timing)
        m.connectionOpened()
        _ = m.admitted(nowMs: 0)
        _ = m.tokenAnswered(status: 401, description: "bad signature", nowMs: 0, random: 0)
        #expect(m.admitted(nowMs: 1) == [.putToken(.secondary)])
        _ = m.tokenAnswered(status: 200, description: "OK", nowMs: 1, random: 0)
        m.connectionLost()
        m.connectionOpened()
        #expect(m.admitted(nowMs: 2) == [.putToken(.secondary)], "reconnect: the working slot")
        _ = m.tokenAnswered(status: 404, description: "device not found", nowMs: 2, random: 0)
        #expect(m.phase == .refused)
        _ = m.tick(nowMs: 100_000)
        #expect(m.admitted(nowMs: 100_000) == [.putToken(.secondary)], "a 404 says nothing about the key")
        _ = m.tokenAnswered(status: 401, description: "keys rotated", nowMs: 100_000, random: 0)
        #expect(m.phase == .queued)
        #expect(m.admitted(nowMs: 100_001) == [.putToken(.primary)], "a refused signature tries the other slot at once")
    }

    @Test func throttledTelemetryPausesOnlyThisLeaf() {
        var m = readyLeaf()
        m.delivered()  // past the first message on new links, which probes alone too
        #expect(m.inFlightLimit(64) == 64)
        m.throttled(description: "429001", nowMs: 1000, random: 0)
        #expect(!m.canSend(nowMs: 1000) && !m.canSend(nowMs: 5999))
        #expect(m.canSend(nowMs: 6000))
        m.throttled(description: "429001", nowMs: 6000, random: 0)
        #expect(!m.canSend(nowMs: 15_999) && m.canSend(nowMs: 16_000), "second throttle: 10 s")
        #expect(m.inFlightLimit(64) == 1, "after a throttle one message probes alone")
        m.delivered()
        #expect(m.inFlightLimit(64) == 64)
        m.throttled(description: "429001", nowMs: 20_000, random: 0)
        #expect(m.canSend(nowMs: 25_000), "an accepted message starts the throttle back-off over")
    }

    /// New links send one message alone: a hub that throttles or refuses the leaf answers one message, not a
    /// window; the first acceptance opens it, and every re-attach starts alone again.
    @Test func newLinksProbeWithOneMessage() {
        var m = readyLeaf()
        #expect(m.inFlightLimit(64) == 1, "the first message on new links goes alone")
        m.delivered()
        #expect(m.inFlightLimit(64) == 64, "the first acceptance opens the window")
        m.connectionLost()
        m.connectionOpened()
        _ = m.admitted(nowMs: 10)
        _ = m.tokenAnswered(status: 200, description: "OK", nowMs: 10, random: 0)
        m.linksAttached()
        #expect(m.phase == .ready && m.inFlightLimit(64) == 1, "re-attached: alone again")
    }

    @Test func linkDetachmentAndTimeouts() {
        var m = readyLeaf()
        #expect(m.linkDetached(condition: IoTHubAMQP.unauthorizedAccess, description: "Token Invalid.", nowMs: 0, random: 0) == [.detachLinks])
        #expect(m.phase == .backingOff)
        _ = m.tick(nowMs: 50)
        #expect(m.phase == .queued)
        _ = m.admitted(nowMs: 50)
        #expect(m.tick(nowMs: 30_049) == [])
        #expect(m.tick(nowMs: 30_050) == [], "put-token timed out")
        #expect(m.phase == .backingOff)
        m.connectionLost()
        #expect(m.phase == .offline)
        #expect(m.tick(nowMs: 100_000) == [])
    }

    @Test func connectionBackoffGrowsUntilAConnectionStaysUp() {
        var c = ConnectionMachine(backoff: Backoff(initialMilliseconds: 100, maximumMilliseconds: 10_000), connectTimeoutMilliseconds: 30_000, routes: [HubRoute(host: "hub", kind: .amqps)])
        let first = c.shouldConnect(nowMs: 0)
        #expect(first)
        c.closed(error: "refused", nowMs: 0, random: 1)
        #expect(c.retryAtMs == 100)
        let early = c.shouldConnect(nowMs: 99), due = c.shouldConnect(nowMs: 100)
        #expect(!early && due)
        c.opened(nowMs: 100)
        c.closed(error: "dropped", nowMs: 200, random: 1)
        #expect(c.retryAtMs == 200 + 200, "a connection that died at once does not reset the back-off")
        _ = c.shouldConnect(nowMs: 400)
        c.opened(nowMs: 400)
        c.closed(error: "dropped", nowMs: 60_000, random: 1)
        #expect(c.retryAtMs == 60_100, "after a healthy connection it starts over")
        _ = c.shouldConnect(nowMs: 60_100)
        #expect(c.attemptTimedOut(nowMs: 90_100))
        for _ in 0..<20 { c.closed(error: nil, nowMs: 0, random: 1) }
        #expect(c.retryAtMs == 10_000, "capped")
    }

    /// Issue 20: `auto` tries AMQPS, moves to WebSockets after N failures, stays there while it works, then the
    /// next host; a connection that stayed up gives its route its full count again.
    @Test func routesFallBackInTurnAndStayWhileTheyWork() {
        var config = UplinkConfiguration(hostName: "a.example")
        config.fallbackHosts = ["b.example", "a.example"]  // a repeat of the first host is ignored
        #expect(config.routes.map(\.description) == ["a.example over AMQPS", "a.example over AMQP over WebSockets",
                                                      "b.example over AMQPS", "b.example over AMQP over WebSockets"])
        config.route = .webSocket
        #expect(config.routes.map(\.kind) == [.webSocket, .webSocket])
        config.route = .auto
        var c = ConnectionMachine(backoff: Backoff(initialMilliseconds: 100, maximumMilliseconds: 10_000), connectTimeoutMilliseconds: 30_000,
                                  routes: config.routes, failuresBeforeNextRoute: 2)
        var now: Int64 = 0
        func fail() -> HubRoute? {
            now = c.retryAtMs
            _ = c.shouldConnect(nowMs: now)
            return c.closed(error: "refused", nowMs: now, random: 1)
        }
        #expect(fail() == nil && c.route.kind == .amqps)
        #expect(fail() == HubRoute(host: "a.example", kind: .webSocket))
        // The WebSocket connection works for a minute, then drops: still WebSockets, with two more tries.
        _ = c.shouldConnect(nowMs: c.retryAtMs)
        c.opened(nowMs: 1_000)
        #expect(c.closed(error: "dropped", nowMs: 61_000, random: 1) == nil)
        now = 61_000
        #expect(fail() == nil && c.route == HubRoute(host: "a.example", kind: .webSocket))
        #expect(fail() == HubRoute(host: "b.example", kind: .amqps))
        // A connection that dies young counts as a failure of its route.
        _ = c.shouldConnect(nowMs: c.retryAtMs)
        c.opened(nowMs: c.retryAtMs)
        #expect(c.closed(error: "dropped", nowMs: c.openedAtMs + 500, random: 1) == nil)
        #expect(fail() == HubRoute(host: "b.example", kind: .webSocket))
        _ = fail()
        #expect(fail() == HubRoute(host: "a.example", kind: .amqps), "round and round, never stuck")
    }

    @Test func identitiesPerConnectionWhereWebSocketsMayCarryThem() {
        var config = UplinkConfiguration(hostName: "h")
        config.route = .amqps
        #expect(config.identitiesPerConnection == 995)
        config.route = .auto
        #expect(config.identitiesPerConnection == 500)
        config.maxIdentitiesPerConnection = 3
        #expect(config.identitiesPerConnection == 3)
    }

    @Test func backoffAndTokenBucket() {
        let b = Backoff(initialMilliseconds: 100, maximumMilliseconds: 10_000)
        #expect((1...8).map { b.delay(attempt: $0, random: 1) } == [100, 200, 400, 800, 1600, 3200, 6400, 10_000])
        #expect(b.delay(attempt: 3, random: 0) == 200, "jitter keeps at least half")
        #expect(b.delay(attempt: 1000, random: 0.5) <= 10_000)
        var bucket = TokenBucket(ratePerSecond: 10, burst: 2)
        #expect(bucket.take(5, nowMs: 0) == 2)
        #expect(bucket.take(5, nowMs: 100) == 1)
        #expect(bucket.take(5, nowMs: 10_000) == 2, "never above the burst")
        bucket.refund(1)
        #expect(bucket.available(nowMs: 10_000) == 1)
        // Borrowing: a heartbeat goes though the bulk took every token; the bulk then waits for the debt.
        #expect(bucket.take(1, nowMs: 10_000) == 1)
        let first = bucket.borrow(nowMs: 10_000)
        let second = bucket.borrow(nowMs: 10_000)
        let third = bucket.borrow(nowMs: 10_000)
        #expect(first && second && !third, "one burst of debt at most")
        #expect(bucket.take(5, nowMs: 10_100) == 0, "a debt is no token")
        #expect(bucket.take(5, nowMs: 10_300) == 1, "back above zero after the debt is paid")
        // The clock steps back 16 minutes: the bucket refills from the new reading, not from the old one.
        var stepped = TokenBucket(ratePerSecond: 10, burst: 2)
        #expect(stepped.take(2, nowMs: 1_000_000) == 2)
        #expect(stepped.take(2, nowMs: 1_000_000 - 960_000) == 0)
        #expect(stepped.take(2, nowMs: 1_000_000 - 960_000 + 200) == 2, "200 ms after the step: two tokens")
    }

    @Test func c2dDedupeRemembersOutcomesBounded() {
        var d = C2DDedupe(capacity: 3)
        #expect(d.arrived(messageID: "a", token: 1) == .deliver)
        #expect(d.arrived(messageID: "a", token: 2) == .wait)
        #expect(d.finished(messageID: "a", outcome: .complete) == [1, 2])
        #expect(d.arrived(messageID: "a", token: 3) == .settle(.complete))
        #expect(d.arrived(messageID: "b", token: 4) == .deliver)
        #expect(d.finished(messageID: "b", outcome: .abandon("busy")) == [4])
        #expect(d.arrived(messageID: "b", token: 5) == .deliver, "an abandoned message reaches the adapter again")
        for id in ["c", "d", "e", "f"] {
            #expect(d.arrived(messageID: id, token: 9) == .deliver)
            _ = d.finished(messageID: id, outcome: .complete)
        }
        #expect(d.entries.count <= 4, "bounded")
        #expect(d.arrived(messageID: "a", token: 10) == .deliver, "the oldest ids are forgotten")
    }

    @Test func partitionCountsTokensNotLeaves() {
        let key = generateSymmetricKey()
        let own = (0..<5).map { LeafConfiguration(deviceID: "d\($0)", credential: .symmetricKey(primary: key, secondary: nil)) }
        #expect(UplinkEngine.partition(own, maxTokens: 2).map(\.count) == [2, 2, 1])
        let shared = (0..<5000).map { LeafConfiguration(deviceID: "s\($0)", credential: .sharedAccessPolicy(name: "device", key: key, scope: .hub)) }
        #expect(UplinkEngine.partition(shared, maxTokens: 995).map(\.count) == [4000, 1000], "one token, capped by sessions")
        #expect(UplinkEngine.partition(own + Array(shared.prefix(3)), maxTokens: 3).map(\.count) == [3, 2 + 3])
    }

    /// Issue 24: identities of different hubs (DPS assignments) never share a connection, and an X.509 identity has
    /// one of its own (TLS presents one client certificate).
    @Test func partitionByHubAndCertificate() {
        let key = generateSymmetricKey()
        func leaf(_ id: String, hub: String?) -> LeafConfiguration {
            var l = LeafConfiguration(deviceID: id, credential: .symmetricKey(primary: key, secondary: nil))
            l.hubHost = hub
            return l
        }
        let leaves = [leaf("a1", hub: "hub-a"), leaf("b1", hub: "hub-b"), leaf("a2", hub: "hub-a"), leaf("c1", hub: nil), leaf("c2", hub: "configured")]
        let chunks = UplinkEngine.partition(leaves, maxTokens: 995, configuredHost: "configured")
        #expect(chunks.map { $0.map(\.deviceID) } == [["a1", "a2"], ["b1"], ["c1", "c2"]], "nil is the configured hub")
        var gateway = LeafConfiguration(deviceID: "gw", credential: .x509(certificateFile: "/c.pem", keyFile: "/c.key"))
        gateway.hubHost = "hub-a"
        let withCertificate = UplinkEngine.partition([gateway] + leaves, maxTokens: 995, configuredHost: "configured")
        #expect(withCertificate.map { $0.map(\.deviceID) } == [["gw"], ["a1", "a2"], ["b1"], ["c1", "c2"]])
        #expect(UplinkEngine.partition([leaf("a1", hub: "hub-a"), leaf("a2", hub: "hub-a"), leaf("a3", hub: "hub-a")], maxTokens: 2).map(\.count) == [2, 1],
                "the token cap holds per hub")
    }

    /// Where a hub is reached: `address` for the configured host, `hostAddresses` (with or without a port) for others.
    @Test func hubEndpoints() {
        var c = UplinkConfiguration(hostName: "main.example")
        c.address = "10.0.0.1"
        c.hostAddresses = ["hub-b.example": "127.0.0.1:15671", "hub-c.example": "10.0.0.3"]
        #expect(c.endpoint(for: "main.example") == ("10.0.0.1", 5671))
        #expect(c.endpoint(for: "hub-b.example") == ("127.0.0.1", 15671))
        #expect(c.endpoint(for: "hub-c.example") == ("10.0.0.3", 5671))
        #expect(c.endpoint(for: "hub-d.example") == ("hub-d.example", 5671))
        c.hostAddresses["hub-e.example"] = "[fd00::5]:15671"
        c.hostAddresses["hub-f.example"] = "fd00::6"
        #expect(c.endpoint(for: "hub-e.example") == ("fd00::5", 15671))
        #expect(c.endpoint(for: "hub-f.example") == ("fd00::6", 5671))
        #expect(c.routes(for: "hub-b.example").map(\.host) == ["hub-b.example", "hub-b.example"], "AMQPS then WebSockets, no fallback hosts")
        c.fallbackHosts = ["spare.example"]
        #expect(c.routes(for: nil).map(\.host).contains("spare.example"))
        #expect(!c.routes(for: "hub-b.example").map(\.host).contains("spare.example"))
    }

    /// An X.509 identity goes straight to its attaches (no put-token); a refused attach is a refusal (slow retry),
    /// a later detach a transient failure.
    @Test func certificateIdentityAttachesWithoutAToken() {
        var m = LeafMachine(hasSecondaryKey: false, authenticatesAtTLS: true, timing: Self.timing)
        m.connectionOpened()
        #expect(m.admitted(nowMs: 0) == [.attachLinks])
        #expect(m.phase == .attaching)
        _ = m.linkDetached(condition: IoTHubAMQP.unauthorizedAccess, description: "thumbprint", nowMs: 1, random: 0.5)
        #expect(m.phase == .refused && m.lastError?.hasPrefix("401 ") == true)
        m.retrySoon(nowMs: 2)
        _ = m.tick(nowMs: 2)
        #expect(m.phase == .queued, "retrySoon ends the refusal's back-off")
        #expect(m.admitted(nowMs: 3) == [.attachLinks])
        m.linksAttached()
        _ = m.linkDetached(condition: IoTHubAMQP.unauthorizedAccess, description: "evicted", nowMs: 4, random: 0.5)
        #expect(m.phase == .backingOff, "a detach of attached links is retried soon")
    }
}

@Suite("Telemetry encoding")
struct TelemetryEncodingTests {
    private func record(_ seq: UInt64, leaf: String = "d1", body: String, properties: [String: String] = ["k": "v"],
                        contentType: String = "application/json") -> SpoolRecord {
        SpoolRecord(leaf: leaf, sequence: seq, acquiredAtMs: 1_700_000_000_000 + Int64(seq),
                    payload: TelemetryEnvelope(body: Array(body.utf8), contentType: contentType, properties: properties).encoded())
    }

    @Test func envelopeRoundTripsAndRejectsGarbage() {
        let e = TelemetryEnvelope(body: Array(#"{"t":1}"#.utf8), properties: ["alert": "true", "unit": "°C"])
        #expect(TelemetryEnvelope(decoding: e.encoded()) == e)
        #expect(TelemetryEnvelope(decoding: []) == nil)
        #expect(TelemetryEnvelope(decoding: Array(e.encoded().prefix(6))) == nil)
        #expect(TelemetryEnvelope(decoding: [2, 0, 0]) == nil)
    }

    @Test func oneMessagePerRecordWithStableIdentity() throws {
        let encoder = TelemetryEncoder(coalesceTargetBytes: nil, messageIDPrefix: "epoch-")
        let (messages, invalid) = encoder.encode([record(7, body: "{}"), SpoolRecord(leaf: "d1", sequence: 8, acquiredAtMs: 0, payload: [9, 9])])
        #expect(invalid == [8])
        let m = try AMQPMessageCodec.decode(messages[0].bytes)
        #expect(m.messageID == .string("epoch-7"))
        #expect(m.contentType == "application/json" && m.contentEncoding == "utf-8")
        #expect(m.applicationProperties["k"] == .string("v"))
        #expect(m.applicationProperties[IoTHubAMQP.creationTimeProperty] == .string(WallClock.iso8601(milliseconds: 1_700_000_000_007)))
        #expect(m.body == .data([Array("{}".utf8)]))
        #expect(messages[0].sequences == [7])
    }

    @Test func coalescesJSONPerLeafUpToTheTarget() throws {
        let encoder = TelemetryEncoder(coalesceTargetBytes: 20, messageIDPrefix: "e-")
        let records = [
            record(1, body: #"{"a":1}"#), record(2, body: #"{"a":2}"#), record(3, body: #"{"a":3}"#),  // 8+8 fit, the 3rd not
            record(4, leaf: "d2", body: #"{"b":1}"#),
            record(5, leaf: "d2", body: "raw", contentType: "text/plain"),
        ]
        let (messages, _) = encoder.encode(records)
        #expect(messages.map(\.sequences) == [[1, 2], [3], [4], [5]])
        let first = try AMQPMessageCodec.decode(messages[0].bytes)
        #expect(first.body == .data([Array(#"[{"a":1},{"a":2}]"#.utf8)]))
        #expect(first.messageID == .string("e-1-2"))
        #expect(try AMQPMessageCodec.decode(messages[1].bytes).messageID == .string("e-3"))
    }
}
