import FieldgateCore
import HubEmulator
import HubTestSupport
import IoTHub
import Spool
import Testing
import Synchronization
import Uplink

@Suite("Uplink isolation, identities and TLS")
struct IsolationTests {
    /// Issue 4 test 10: one leaf disabled, one with a wrong key, one throttled: every other leaf keeps ≥ 99.9 %
    /// delivery and the gateway never closes the connection.
    @Test func oneBadLeafDoesNotHurtTheOthers() async throws {
        try await withHub { hub in
            var leaves = try await createLeaves(hub, count: 50)
            _ = try await hub.core.perform { try $0.upsertDevice(id: "leaf-0", status: "disabled", primaryKey: nil, secondaryKey: nil) }
            leaves[1].credential = .symmetricKey(primary: generateSymmetricKey(), secondary: generateSymmetricKey())
            try await hub.core.perform { try $0.throttle("leaf-2", forSeconds: 3600) }
            let h = try UplinkHarness(hub: hub, leaves: leaves) { $0.throttleBackoff = Backoff(initialMilliseconds: 200, maximumMilliseconds: 400) }
            h.uplink.start()
            try await eventually(20, "healthy leaves ready") { await h.uplink.status().count(.ready) >= 48 }

            let healthy = leaves.dropFirst(3).map(\.deviceID)
            var ids: [String] = []
            for round in 0..<40 {
                ids += try h.append(leaves.map { (leaf: $0.deviceID, json: #"{"r":\#(round)}"#, properties: [:]) })
                try await Task.sleep(for: .milliseconds(10))
            }
            let expected = healthy.count * 40
            try await eventually(30, "healthy leaves delivered") {
                try await hub.core.perform { $0.acceptedEventCount } >= Int64(expected)
            }
            let events = try await allEvents(hub)
            let healthySet = Set(healthy)
            let delivered = events.filter { healthySet.contains($0.deviceId) }.count
            #expect(Double(delivered) / Double(expected) >= 0.999, "healthy leaves delivered \(delivered) of \(expected)")
            #expect(!events.contains { ["leaf-0", "leaf-1", "leaf-2"].contains($0.deviceId) })

            let status = await h.uplink.status()
            #expect(status.leaves["leaf-0"]?.phase == .refused, "disabled: \(String(describing: status.leaves["leaf-0"]))")
            #expect(status.leaves["leaf-0"]?.lastError?.contains("disabled") == true)
            #expect(status.leaves["leaf-1"]?.phase == .refused)
            #expect(status.leaves["leaf-1"]?.lastError?.contains("signature") == true)
            #expect(status.leaves["leaf-2"]?.phase == .ready)
            #expect((status.leaves["leaf-2"]?.counters.throttled ?? 0) >= 1)
            #expect(status.leaves["leaf-2"]?.lastError?.contains("throttled") == true)
            #expect(status.connections.count == 1 && status.connections[0].opens == 1, "the connection was never dropped")
            // Nothing of the three bad leaves was lost: it waits in the spool.
            let depth = h.spool.statistics().depthByLeaf
            #expect(depth["leaf-0"] == 40 && depth["leaf-1"] == 40 && depth["leaf-2"] == 40)

            // The throttle lifts: the throttled leaf drains, in order, without a restart.
            try await hub.core.perform { try $0.throttle("leaf-2", forSeconds: 0) }
            try await eventually(10, "leaf-2 drained") { h.spool.statistics().depthByLeaf["leaf-2", default: 0] == 0 }
            let rounds = try await allEvents(hub).filter { $0.deviceId == "leaf-2" }.compactMap { $0.body }
            #expect(rounds == (0..<40).map { #"{"r":\#($0)}"# })
            await h.stop()
        }
    }

    /// A leaf whose links the hub refuses while its other attaches are still on the wire (an unknown device under a
    /// hub-scope token: put-token passes, every link is refused 404): the gateway closes the rest at the first
    /// refusal, and frees each only when the hub's detach for it has come. Freed earlier, Proton took the hub's
    /// late refusal for a new link of the same name and answered it, and the hub refused that again: tens of
    /// thousands of attaches a second until the connection closed.
    @Test func linksClosedMidAttachDoNotEchoAttaches() async throws {
        try await withHub { hub in
            let policy = try #require(await hub.core.perform { $0.policy("device") })
            var leaves = try await createLeaves(hub, count: 3).map {
                LeafConfiguration(deviceID: $0.deviceID, credential: .sharedAccessPolicy(name: policy.keyName, key: policy.primaryKey, scope: .hub))
            }
            // Many, so the hub's refusals span several reads and some arrive after the first one's handling.
            leaves += (0..<50).map { LeafConfiguration(deviceID: "never-registered-\($0)", credential: leaves[0].credential) }
            let h = try UplinkHarness(hub: hub, leaves: leaves, router: PointAdapter())
            h.uplink.start()
            try await eventually(10, "the registered leaves ready") { await h.uplink.status().count(.ready) == 3 }
            try await eventually(10, "the unknown ones refused") { await h.uplink.status().count(.refused) == 50 }
            try await Task.sleep(for: .seconds(2))
            // One attach of six links each, each refused once; the refused back-off (30 s) holds the next try.
            let refused = try await hub.core.perform { $0.refusedLinks }
            #expect(refused <= 50 * 6, "attaches refused: \(refused)")
            await h.stop()
        }
    }

    /// A refused leaf is retried slowly and recovers by itself once the hub takes it again.
    @Test func refusedLeafRecoversWhenEnabled() async throws {
        try await withHub { hub in
            let leaves = try await createLeaves(hub, count: 3)
            _ = try await hub.core.perform { try $0.upsertDevice(id: "leaf-0", status: "disabled", primaryKey: nil, secondaryKey: nil) }
            let h = try UplinkHarness(hub: hub, leaves: leaves) { $0.refusedBackoff = Backoff(initialMilliseconds: 300, maximumMilliseconds: 600) }
            h.uplink.start()
            try h.append(leaves.map { (leaf: $0.deviceID, json: "{}", properties: [:]) })
            try await eventually(10, "leaf-0 refused") { await h.uplink.status().leaves["leaf-0"]?.phase == .refused }
            _ = try await hub.core.perform { try $0.upsertDevice(id: "leaf-0", status: "enabled", primaryKey: nil, secondaryKey: nil) }
            try await eventually(10, "leaf-0 ready") { await h.uplink.status().leaves["leaf-0"]?.phase == .ready }
            try await eventually(10, "everything delivered") { h.spool.statistics().depth == 0 }
            await h.stop()
        }
    }

    /// Issue 4 test 11: a hub certificate from an untrusted CA, and a certificate for another host name: refused,
    /// with a clear error, and nothing reaches the hub.
    @Test(arguments: ["untrusted CA", "wrong host name"])
    func refusesAnUnverifiableHub(_ problem: String) async throws {
        try await withHub { hub in
            let leaves = try await createLeaves(hub, count: 2)
            let other = try LocalCertificates.create(in: hub.directory + "/other-ca", dnsNames: ["localhost"])
            let h = try UplinkHarness(hub: hub, leaves: leaves) { config in
                if problem == "untrusted CA" {
                    config.transport = .tls(.init(caFile: other.caCertificate))
                } else {
                    // The hub's certificate names localhost; this gateway expects another host.
                    config.hostName = "hub.example.net"
                }
            }
            h.uplink.start()
            try h.append(leaves.map { (leaf: $0.deviceID, json: "{}", properties: [:]) })
            try await eventually(10, "a TLS error") { await h.uplink.status().connections[0].lastError != nil }
            let status = await h.uplink.status()
            let error = status.connections[0].lastError ?? ""
            #expect(error.contains("TLS handshake with \(h.uplink.configuration.hostName) failed"), "unclear error: \(error)")
            #expect(status.connections[0].opens == 0)
            #expect(status.leaves.values.allSatisfy { $0.phase == .offline })
            #expect(try await hub.core.perform { $0.acceptedEventCount } == 0)
            await h.stop()
        }
    }

    /// Identities: device keys (a rotated primary falls back to the secondary), per-device policy tokens with
    /// `skn`, and group-derived keys all authenticate on one connection.
    @Test func everyCredentialKindAuthenticates() async throws {
        try await withHub { hub in
            let groupKey = generateSymmetricKey()
            let derived = try deriveDeviceKey(groupKey: groupKey, registrationID: "grouped")
            _ = try await hub.core.perform { try $0.upsertDevice(id: "grouped", status: nil, primaryKey: derived, secondaryKey: nil) }
            let policy = try #require(await hub.core.perform { $0.policy("device") })
            let base = try await createLeaves(hub, count: 2)
            guard case .symmetricKey(_, let secondary?) = base[0].credential else { throw CancellationError() }
            let leaves = [
                LeafConfiguration(deviceID: base[0].deviceID, credential: .symmetricKey(primary: generateSymmetricKey(), secondary: secondary)),
                LeafConfiguration(deviceID: base[1].deviceID, credential: .sharedAccessPolicy(name: policy.keyName, key: policy.primaryKey)),
                LeafConfiguration(deviceID: "grouped", credential: .groupKey(groupKey)),
            ]
            let h = try UplinkHarness(hub: hub, leaves: leaves)
            h.uplink.start()
            try await eventually(10, "all three ready") { await h.uplink.status().count(.ready) == 3 }
            try h.append(leaves.map { (leaf: $0.deviceID, json: "{}", properties: [:]) })
            try await eventually(10, "three messages") { try await hub.core.perform { $0.acceptedEventCount } == 3 }
            let events = try await allEvents(hub)
            let scopes = Dictionary(uniqueKeysWithValues: events.map { ($0.deviceId, $0.annotations[IoTHubAMQP.connectionAuthMethod] ?? "") })
            #expect(scopes[base[1].deviceID]?.contains(#""scope":"hub""#) == true, "policy token: \(scopes)")
            #expect(scopes["grouped"]?.contains(#""scope":"device""#) == true)
            await h.stop()
        }
    }

    /// Issue 18.4: the key slot that worked is kept across reconnects: a leaf with a wrong primary and a right
    /// secondary costs one refused put-token in all, not one per connection.
    @Test func workingKeySlotIsRememberedAcrossReconnects() async throws {
        try await withHub { hub in
            let base = try await createLeaves(hub, count: 1)
            guard case .symmetricKey(_, let secondary?) = base[0].credential else { throw CancellationError() }
            let leaves = [LeafConfiguration(deviceID: base[0].deviceID, credential: .symmetricKey(primary: generateSymmetricKey(), secondary: secondary))]
            let h = try UplinkHarness(hub: hub, leaves: leaves)
            h.uplink.start()
            try await eventually(10, "ready") { await h.uplink.status().count(.ready) == 1 }
            for round in 1...3 {
                let opens = await h.uplink.status().connections[0].opens
                _ = try await hub.core.perform { $0.dropAllConnections() }
                try await eventually(10, "reconnected (\(round))") {
                    let s = await h.uplink.status()
                    return s.connections[0].opens > opens && s.count(.ready) == 1
                }
            }
            #expect(await h.uplink.status().leaves[base[0].deviceID]?.counters.tokenFailures == 1)
            // Issue 18.7: the hub's TCP close is said as such, not as a TLS framing error.
            let lastError = await h.uplink.status().connections[0].lastDisconnect ?? ""
            #expect(lastError.hasPrefix("connection closed by the hub/peer"), "\(lastError)")
            await h.stop()
        }
    }

    /// Beyond the token cap per connection another connection opens; each leaf still gets through.
    @Test func moreLeavesThanOneConnectionHoldsOpenAnother() async throws {
        try await withHub { hub in
            let leaves = try await createLeaves(hub, count: 7)
            let h = try UplinkHarness(hub: hub, leaves: leaves) { $0.maxIdentitiesPerConnection = 3 }
            h.uplink.start()
            try await eventually(10, "all ready") { await h.uplink.status().count(.ready) == 7 }
            #expect(await h.uplink.status().connections.map(\.leaves) == [3, 3, 1])
            #expect(try await hub.core.perform { $0.connectionCount } == 3)
            try h.append(leaves.map { (leaf: $0.deviceID, json: "{}", properties: [:]) })
            try await eventually(10, "seven messages") { try await hub.core.perform { $0.acceptedEventCount } == 7 }
            await h.stop()
        }
    }

    /// Attach pacing keeps a restart with many leaves under the hub's device-connection throttle.
    @Test func pacingStaysUnderTheHubThrottle() async throws {
        try await withHub(configure: { $0.hub.deviceAuthenticationsPerSecond = 40 }) { hub in
            let leaves = try await createLeaves(hub, count: 60)
            let h = try UplinkHarness(hub: hub, leaves: leaves) { $0.attachesPerSecond = 25 }
            let started = ContinuousClock.now
            h.uplink.start()
            try await eventually(20, "all ready") { await h.uplink.status().count(.ready) == 60 }
            let elapsed = ContinuousClock.now - started
            let status = await h.uplink.status()
            #expect(status.leaves.values.map(\.counters.tokenFailures).reduce(0, +) == 0, "a put-token was throttled")
            #expect(elapsed >= .milliseconds(2000), "60 leaves at 25/s (burst 5) take at least ~2.2 s, took \(elapsed)")
            #expect(elapsed < .seconds(12), "pacing took \(elapsed) (generous: the suites run in parallel on as few as 2 cores)")
            await h.stop()
        }
    }

    /// However fast the pace, a connection has at most `attachingPerConnection` leaves between admission and ready
    /// (Proton pools as many deliveries as were ever in flight at once), and a leaf that gets ready makes room at once.
    @Test func attachesAtOnceAreBoundedPerConnection() async throws {
        try await withHub { hub in
            let leaves = try await createLeaves(hub, count: 120)
            let h = try UplinkHarness(hub: hub, leaves: leaves) { $0.attachingPerConnection = 6 }  // unpaced
            h.uplink.start()
            // Sampled from outside as well as counted inside: a loaded machine may not sample any attach at all.
            var sampled = 0
            let deadline = ContinuousClock.now + .seconds(30)
            while ContinuousClock.now < deadline {
                let status = await h.uplink.status()
                sampled = max(sampled, status.count(.authenticating) + status.count(.attaching))
                if status.count(.ready) == 120 { break }
            }
            let status = await h.uplink.status()
            #expect(status.count(.ready) == 120)
            #expect(sampled <= 6, "\(sampled) leaves seen attaching at once")
            // 120 unpaced leaves fill the bound at the first admission.
            #expect(status.connections.map(\.mostAttachingAtOnce) == [6])
            await h.stop()
        }
    }

    /// No SAS token is minted while the clock reads 1970; once it is set, the leaves authenticate.
    @Test func waitsForAPlausibleClock() async throws {
        try await withHub { hub in
            let leaves = try await createLeaves(hub, count: 2)
            let synchronized = Atomic<Bool>(false)
            let h = try UplinkHarness(hub: hub, leaves: leaves, clock: TestClock {
                synchronized.load(ordering: .relaxed) ? WallClock.nowMilliseconds() : 30_000
            })
            h.uplink.start()
            try await eventually(10, "connected") { await h.uplink.status().connections[0].state == "open" }
            try await Task.sleep(for: .milliseconds(500))
            #expect(await h.uplink.status().leaves.values.allSatisfy { $0.phase == .queued })
            synchronized.store(true, ordering: .relaxed)
            try await eventually(10, "ready once the clock is set") { await h.uplink.status().count(.ready) == 2 }
            await h.stop()
        }
    }
}
