import FieldgateCore
import Gateway
import Gzip
import HubEmulator
import HubServiceClient
import HubTestSupport
import HubTunnel
import IoTHub
import Testing
@testable import Gateway
import Uplink

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Issue 23.2: the gateway's `logs` method. The journal content itself is checked under real systemd
/// (scripts/systemd-e2e.sh); here the method's rules and the upload path, against fieldgate-hub.
@Suite("The gateway's logs method")
struct LogsMethodTests {
    @Test func payloadRules() throws {
        let now: Int64 = 1_796_000_000_000
        #expect(try LogRequest.parse(.null, nowMs: now).get() == LogRequest())
        let r = try LogRequest.parse(["since": "2h", "until": "2026-12-05T14:00:00Z", "priority": "warning", "leaf": "meter-1"], nowMs: now).get()
        #expect(r.sinceMs == now - 7_200_000 && r.untilMs == WallClock.parseISO8601("2026-12-05T14:00:00Z") && r.maxPriority == 4 && r.leaf == "meter-1")
        #expect(try LogRequest.parse(["priority": 3], nowMs: now).get().maxPriority == 3)
        for (bad, says) in [(["since": "yesterday"], "ISO 8601"), (["priority": "loud"], "priority must be"), (["priority": 9], "priority must be"),
                            (["leaf": ""], "device id"), (["lines": 5], "unknown field lines")] as [(JSONValue, String)] {
            guard case .failure(let why) = LogRequest.parse(bad, nowMs: now) else { Issue.record("accepted \(bad)"); continue }
            #expect(why.message.contains(says), "\(bad): \(why.message)")
        }
    }

    @Test func gzipRoundTrip() {
        let text = Array(String(repeating: #"{"time":"2026-12-05T14:00:00.000Z","message":"connected"}"# + "\n", count: 2000).utf8)
        let packed = Gzip.compress(text)
        #expect(packed.count < text.count / 20 && packed.prefix(2) == [0x1f, 0x8b])
        #expect(Gzip.decompress(packed, limit: 1 << 20) == text)
        #expect(Gzip.decompress(packed, limit: 100) == nil, "over the limit")
        #expect(Gzip.decompress(Array(packed.dropLast(10)), limit: 1 << 20) == nil, "truncated")
        #expect(Gzip.decompress(Gzip.compress([]), limit: 10) == [])
    }

    /// Off: 501 with what to set. On: the excerpt (here of an empty journal directory: no journald in this test) is
    /// uploaded through IoT Hub's file upload; the answer names the blob, which is in the hub's store as gzip, and a
    /// bad payload is answered 400 without an upload.
    @Test func offOrUploadedThroughTheHub() async throws {
        try await withHub(configure: { $0.httpsPort = 0 }) { hub in
            let device = try await hub.core.perform { try $0.upsertDevice(id: "gw-logs", status: nil, primaryKey: nil, secondaryKey: nil) }
            let gatewayLeaf = LeafConfiguration(deviceID: "gw-logs", credential: .symmetricKey(primary: device.authentication.symmetricKey.primaryKey, secondary: nil),
                                                capabilities: [.methods, .twin])
            let journal = hub.directory + "/journal"
            try FileManager.default.createDirectory(atPath: journal, withIntermediateDirectories: true)
            for enabled in [false, true] {
                let router = LateRouter()
                let h = try UplinkHarness(hub: hub, leaves: [gatewayLeaf], router: router) { $0.webSocket.port = hub.running.httpsPort!; $0.webSocket.proxy = .direct }
                var config = GatewayIdentity.Configuration(deviceID: "gw-logs", version: "0.1-test")
                if enabled {
                    var upload = GatewayIdentity.LogUpload(maxBytes: 1 << 20)
                    upload.journalDirectory = journal
                    config.logUpload = upload
                }
                let identity = GatewayIdentity(configuration: config, spool: h.spool)
                identity.attach(h.uplink)
                router.set(GatewayRouter(gateway: identity, fallback: PointAdapter()))
                h.uplink.start()
                try await eventually(10, "ready") { await h.uplink.status().count(.ready) == 1 }
                let service = HubServiceClient(host: "127.0.0.1", port: hub.running.httpPort, authorization: nil)
                func call(_ payload: JSONValue) async throws -> JSONValue? {
                    try await service.request("POST", "/twins/gw-logs/methods", body: ["methodName": "logs", "payload": payload, "responseTimeoutInSeconds": 30]).json
                }
                if !enabled {
                    let off = try await call(["since": "1h"])
                    #expect(off?["status"]?.intValue == 501 && off?["payload"]?["error"]?.stringValue?.contains("[upload] logs = true") == true, "\(String(describing: off))")
                } else {
                    let bad = try await call(["since": "soon"])
                    #expect(bad?["status"]?.intValue == 400)
                    let r = try await call(["since": "1h", "priority": "info"])
                    #expect(r?["status"]?.intValue == 200, "\(String(describing: r))")
                    let name = try #require(r?["payload"]?["blobName"]?.stringValue)
                    #expect(name.hasPrefix("gw-logs/logs/fieldgated-") && name.hasSuffix(".jsonl.gz"))
                    let blob = try #require(try await hub.core.perform { $0.blobContent(name) })
                    #expect(Gzip.decompress(blob, limit: 1 << 20) == [], "an empty journal, an empty excerpt")
                    #expect(r?["payload"]?["entries"]?.intValue == 0 && r?["payload"]?["truncated"] == false)
                    #expect(try await hub.core.perform { $0.listBlobs(prefix: "gw-logs/") }.count == 1, "the bad request uploaded nothing")
                }
                await h.stop()
            }
        }
    }
}
