import FieldgateCore
import Gzip
import HubEmulator
import HubTestSupport
import HubTunnel
import IoTHub
import Spool
import Testing
@testable import Uplink

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Issue 23.3: a leaf's old backlog goes to the hub as files (IoT Hub file upload) while its live readings go on as
/// D2C; every reading arrives once, with its message id, creation time and properties.
@Suite("Backlog offload")
struct BacklogOffloadTests {
    @Test func fileLinesCarryWhatTheMessagesWould() throws {
        let records = [
            SpoolRecord(leaf: "m-1", sequence: 7, acquiredAtMs: 1_796_000_000_000,
                        payload: TelemetryEnvelope(body: Array(#"{"t":21.5}"#.utf8), properties: ["unit": "C"]).encoded()),
            SpoolRecord(leaf: "m-1", sequence: 8, acquiredAtMs: 1_796_000_001_000,
                        payload: TelemetryEnvelope(body: [0, 1, 2, 10], contentType: "application/octet-stream").encoded()),
        ]
        let lines = String(decoding: BacklogStager.jsonLines(records, messageIDPrefix: "e1-"), as: UTF8.self).split(separator: "\n")
        #expect(lines.count == 2)
        let first = try #require(JSONValue.parse(String(lines[0])))
        #expect(first["messageId"] == "e1-7" && first["deviceId"] == "m-1" && first["creationTimeUtc"] == .string(WallClock.iso8601(milliseconds: 1_796_000_000_000)))
        #expect(first["body"]?["t"] == .double(21.5) && first["properties"]?["unit"] == "C" && first["contentType"] == "application/json")
        let second = try #require(JSONValue.parse(String(lines[1])))
        #expect(second["bodyBase64"] == "AAECCg==" && second["body"] == nil)
        for leaf in ["m 1", "meter.01", "a.b.c-d"] {
            let name = StagedBacklogFile.name(leaf: leaf, first: 7, last: 8, records: 2)
            #expect(StagedBacklogFile(path: "/x/" + name) == StagedBacklogFile(path: "/x/" + name, leaf: leaf, records: 2, first: 7, last: 8), "\(leaf)")
        }
        #expect(StagedBacklogFile(path: "/x/notes.txt") == nil && StagedBacklogFile(path: "/x/a.jsonl.gz") == nil)
    }

    /// 100,000 readings of one leaf, 25 h old, and live readings of it and another leaf: the old ones go as files
    /// (at most 50,000 each) while the live ones flow as D2C at the configured rate; every reading reaches the hub
    /// exactly once — as a D2C message or a line of a file — with the message id the spool gave it.
    @Test func oldBacklogGoesAsFilesWhileLiveReadingsFlow() async throws {
        try await withHub(configure: { $0.httpsPort = 0 }) { hub in
            let leaves = try await createLeaves(hub, count: 2)
            let staging = hub.directory + "/offload"
            let h = try UplinkHarness(hub: hub, leaves: leaves) {
                $0.webSocket.port = hub.running.httpsPort!
                $0.webSocket.proxy = .direct
                $0.messagesPerSecond = 400
                var policy = BacklogOffloadPolicy(minRecords: 20_000, olderThanMilliseconds: 24 * 3_600_000, stagingDirectory: staging)
                policy.maxRecordsPerFile = 50_000
                policy.checkIntervalMilliseconds = 500
                $0.offload = policy
            }
            // A file an earlier run staged and did not get to upload (it stopped, or crashed, after staging).
            try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: true)
            let leftover = StagedBacklogFile.name(leaf: "leaf-1", first: 1, last: 2, records: 2)
            let leftoverLines = BacklogStager.jsonLines([
                SpoolRecord(leaf: "leaf-1", sequence: 1, acquiredAtMs: 1_796_000_000_000, payload: TelemetryEnvelope(body: Array(#"{"earlier":1}"#.utf8)).encoded()),
                SpoolRecord(leaf: "leaf-1", sequence: 2, acquiredAtMs: 1_796_000_000_001, payload: TelemetryEnvelope(body: Array(#"{"earlier":2}"#.utf8)).encoded()),
            ], messageIDPrefix: "earlier-")
            #expect(StateFile.replace(staging + "/" + leftover, with: Gzip.compress(leftoverLines), durable: true) == nil)
            let old = WallClock.nowMilliseconds() - 25 * 3_600_000
            var ids: Set<String> = []
            for chunk in 0..<20 {
                let entries = (0..<5000).map { i in
                    Spool.Entry(leaf: "leaf-0", acquiredAtMs: old + Int64(chunk * 5000 + i),
                                payload: TelemetryEnvelope(body: Array(#"{"old":\#(chunk * 5000 + i)}"#.utf8), properties: ["kind": "old"]).encoded())
                }
                ids.formUnion(try h.spool.append(entries).map { h.spool.messageID(for: $0) })
            }
            h.uplink.start()
            // Live readings of both leaves while the backlog is handled.
            var live: [String] = []
            for round in 0..<40 {
                live += try h.append([(leaf: "leaf-0", json: #"{"live":\#(round)}"#, properties: [:]), (leaf: "leaf-1", json: #"{"live":\#(round)}"#, properties: [:])])
                try await Task.sleep(for: .milliseconds(100))
            }
            ids.formUnion(live)
            try await eventually(120, "everything delivered, no file left staged") {
                let s = await h.uplink.status()
                return h.spool.statistics().depth == 0 && s.offload?.pendingFiles == 0 && (s.offload?.uploadedFiles ?? 0) > 0
            }
            let offload = try #require(await h.uplink.status().offload)

            // What the hub has: D2C events and the lines of every file.
            let events = try await allEvents(hub)
            let d2c = events.compactMap { $0.systemProperties["message-id"] }
            var fromFiles: [String] = []
            let blobs = try await hub.core.perform { $0.listBlobs(prefix: "leaf-0/backlog/") }
            for blob in blobs {
                let name = try #require(blob["name"]?.stringValue)
                let bytes = try #require(try await hub.core.perform { $0.blobContent(name) })
                let text = try #require(Gzip.decompress(bytes, limit: 64 << 20))
                let lines = String(decoding: text, as: UTF8.self).split(separator: "\n")
                // Every line whole (the first and the last parsed; all of them in fileLinesCarryWhatTheMessagesWould);
                // the ids of all, found by their key (a full parse of 100,000 lines would load a 2-core machine for
                // seconds in a debug build, and starve the tests running beside this one).
                for line in [lines.first, lines.last].compactMap({ $0 }) {
                    let j = try #require(JSONValue.parse(String(line)))
                    #expect(j["properties"]?["kind"] == "old" && j["deviceId"] == "leaf-0" && j["body"]?["old"] != nil)
                }
                for line in lines {
                    guard let start = line.firstRange(of: #""messageId":""#)?.upperBound, let end = line[start...].firstIndex(of: "\"") else {
                        Issue.record("a line without a messageId: \(line.prefix(120))")
                        continue
                    }
                    fromFiles.append(String(line[start..<end]))
                }
            }
            #expect(Set(d2c).count == d2c.count && Set(fromFiles).count == fromFiles.count, "no reading twice")
            #expect(Set(d2c).isDisjoint(with: fromFiles), "no reading both ways")
            #expect(Set(d2c).union(fromFiles) == ids, "every reading: \(d2c.count) as D2C + \(fromFiles.count) in files of \(ids.count)")
            #expect(Set(live).isSubset(of: Set(d2c)), "live readings went as D2C")
            // D2C kept each leaf's order (the spool's sequence is the id's suffix).
            for leaf in ["leaf-0", "leaf-1"] {
                let sequences = events.filter { $0.deviceId == leaf }.compactMap { $0.systemProperties["message-id"]?.split(separator: "-").last.flatMap { UInt64($0) } }
                #expect(sequences == sequences.sorted(), "\(leaf) in order")
            }
            #expect(blobs.count >= 2 && offload.uploadedRecords == fromFiles.count + 2 && offload.uploadedFiles == blobs.count + 1)
            // Quota: two messages per file against one per reading.
            print("backlog offload: \(fromFiles.count) readings in \(blobs.count) files = \(2 * blobs.count) messages of quota; \(d2c.count) as D2C; as D2C alone: \(ids.count)")
            // The earlier run's file went too, and is gone from the staging directory.
            let earlier = try #require(try await hub.core.perform { $0.blobContent("leaf-1/backlog/" + leftover) })
            #expect(Gzip.decompress(earlier, limit: 1 << 20) == leftoverLines)
            #expect(try FileManager.default.contentsOfDirectory(atPath: staging).isEmpty)
            await h.stop()
        }
    }

    /// Old readings of one leaf, `count` of them, 25 h old; their message ids in order.
    private func spoolOldReadings(_ spool: Spool, leaf: String, count: Int) throws -> [String] {
        let old = WallClock.nowMilliseconds() - 25 * 3_600_000
        let entries = (0..<count).map { i in
            Spool.Entry(leaf: leaf, acquiredAtMs: old + Int64(i), payload: TelemetryEnvelope(body: Array(#"{"old":\#(i)}"#.utf8)).encoded())
        }
        return try spool.append(entries).map { spool.messageID(for: $0) }
    }

    /// The ids the hub took as D2C for `leaf`, in arrival order.
    private func d2cIDs(_ hub: TestHub, leaf: String) async throws -> [String] {
        try await allEvents(hub).filter { $0.deviceId == leaf }.compactMap { $0.systemProperties["message-id"] }
    }

    /// A hub without storage for file upload refuses the file (400022): its readings were held in the spool, not
    /// acknowledged, so they go back to D2C — in order, once each — and the file goes; no new file is staged.
    @Test func readingsOfARefusedFileGoBackToD2CInOrder() async throws {
        try await withHub(configure: { $0.httpsPort = 0; $0.hub.fileUploadStorage = false }) { hub in
            let leaves = try await createLeaves(hub, count: 1)
            let staging = hub.directory + "/offload"
            let h = try UplinkHarness(hub: hub, leaves: leaves) {
                $0.webSocket.port = hub.running.httpsPort!
                $0.webSocket.proxy = .direct
                // 20 s of D2C: the check stages a file long before, even on a loaded machine.
                $0.messagesPerSecond = 200
                var policy = BacklogOffloadPolicy(minRecords: 500, olderThanMilliseconds: 24 * 3_600_000, stagingDirectory: staging)
                policy.checkIntervalMilliseconds = 300
                $0.offload = policy
            }
            let ids = try spoolOldReadings(h.spool, leaf: "leaf-0", count: 4000)
            h.uplink.start()
            try await eventually(90, "the file refused and every reading delivered as D2C") {
                let s = await h.uplink.status()
                return s.offload?.refusedForGood == true && h.spool.statistics().depth == 0
            }
            let d2c = try await d2cIDs(hub, leaf: "leaf-0")
            #expect(d2c == ids, "every reading once, in order: \(d2c.count) of \(ids.count)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: staging).isEmpty, "the refused file is gone")
            #expect(try await hub.core.perform { $0.listBlobs(prefix: "") }.isEmpty)
            await h.stop()
        }
    }

    /// A run staged a file and ended before the hub confirmed it: its readings are still spooled. The next run takes
    /// them back before D2C can send them, uploads the file, and only then acknowledges them; newer readings of the
    /// leaf go as D2C. Every reading reaches the hub once.
    @Test func aFileStagedByAnEarlierRunKeepsItsReadingsFromD2C() async throws {
        try await withHub(configure: { $0.httpsPort = 0 }) { hub in
            let leaves = try await createLeaves(hub, count: 1)
            let staging = hub.directory + "/offload"
            var policy = BacklogOffloadPolicy(minRecords: 500, olderThanMilliseconds: 24 * 3_600_000, stagingDirectory: staging)
            policy.checkIntervalMilliseconds = 300
            let h = try UplinkHarness(hub: hub, leaves: leaves) {
                $0.webSocket.port = hub.running.httpsPort!
                $0.webSocket.proxy = .direct
                $0.offload = policy
            }
            let old = try spoolOldReadings(h.spool, leaf: "leaf-0", count: 2000)
            // The earlier run: the file staged and synced, its readings taken — and then it ended, so they are back
            // in the spool's queue as after a restart.
            try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: true)
            let staged = try BacklogStager(policy: policy, spool: h.spool, leaves: ["leaf-0"], waiting: []).stage(nowMs: WallClock.nowMilliseconds())
            #expect(staged.count == 1 && staged.first?.sequences.count == 2000)
            h.spool.release(staged.flatMap(\.sequences))
            #expect(h.spool.statistics().depth == 2000, "nothing acknowledged by staging")
            let newer = try h.append((0..<50).map { (leaf: "leaf-0", json: #"{"new":\#($0)}"#, properties: [:]) })
            h.uplink.start()
            try await eventually(60, "the file uploaded and everything acknowledged") {
                let s = await h.uplink.status()
                return s.offload?.uploadedFiles == 1 && h.spool.statistics().depth == 0
            }
            let d2c = try await d2cIDs(hub, leaf: "leaf-0")
            #expect(d2c == newer, "only the newer readings went as D2C, in order (\(d2c.count))")
            let blobs = try await hub.core.perform { $0.listBlobs(prefix: "leaf-0/backlog/") }
            let name = try #require(blobs.first?["name"]?.stringValue)
            let bytes = try #require(try await hub.core.perform { $0.blobContent(name) })
            let text = String(decoding: try #require(Gzip.decompress(bytes, limit: 16 << 20)), as: UTF8.self)
            let fromFile = text.split(separator: "\n").compactMap { JSONValue.parse(String($0))?["messageId"]?.stringValue }
            #expect(fromFile == old)
            #expect(try FileManager.default.contentsOfDirectory(atPath: staging).isEmpty)
            await h.stop()
        }
    }
}
