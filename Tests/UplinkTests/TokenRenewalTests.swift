import FieldgateCore
import HubEmulator
import HubTestSupport
import IoTHub
import Spool
import Testing
import Uplink

@Suite("Uplink token renewal")
struct TokenRenewalTests {
    /// Issue 4 test 8: tokens of a few seconds over a 30 s run are renewed in-band: no link lost, no reconnect, no
    /// message lost. Device-key leaves and a hub-scope policy leaf both renew.
    @Test func shortLivedTokensRenewWithoutLinkLoss() async throws {
        try await withHub { hub in
            let policy = try #require(await hub.core.perform { $0.policy("device") })
            var leaves = try await createLeaves(hub, count: 6)
            leaves[5].credential = .sharedAccessPolicy(name: policy.keyName, key: policy.primaryKey, scope: .hub)
            let h = try UplinkHarness(hub: hub, leaves: leaves) { $0.tokenTTLSeconds = 4 }
            h.uplink.start()
            try await eventually(10, "ready") { await h.uplink.status().count(.ready) == 6 }
            var ids: [String] = []
            let end = ContinuousClock.now + .seconds(30)
            var round = 0
            while ContinuousClock.now < end {
                ids += try h.append(leaves.map { (leaf: $0.deviceID, json: #"{"r":\#(round)}"#, properties: [:]) })
                round += 1
                try await Task.sleep(for: .milliseconds(100))
            }
            try await eventually(10, "everything delivered") { h.spool.statistics().depth == 0 }
            let events = try await allEvents(hub)
            #expect(Set(events.compactMap { $0.systemProperties["message-id"] }) == Set(ids))
            let status = await h.uplink.status()
            #expect(status.connections[0].opens == 1, "no reconnect")
            for (id, leaf) in status.leaves {
                #expect(leaf.counters.linkFailures == 0, "\(id) lost a link")
                #expect(leaf.counters.tokenFailures == 0, "\(id) had a refused renewal")
                #expect(leaf.counters.tokenRenewals >= 6, "\(id) renewed \(leaf.counters.tokenRenewals) times in 30 s with 4 s tokens")
                #expect(leaf.phase == .ready)
            }
            await h.stop()
        }
    }
}
