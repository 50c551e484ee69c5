import FieldgateCore
import FrameCodecs
import Spool
import Synchronization
import Dispatch
import Testing
@testable import UDPAdapter
import Uplink

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

@Suite("UDP datagram decoding (no sockets)")
struct DatagramDecoderTests {
    let key = Array("0123456789abcdef0123456789abcdef".utf8)

    private func decoder() -> DatagramDecoder {
        var config = UDPAdapterConfiguration(port: 0, leaves: [
            UDPLeaf(deviceID: "meter-1"),
            UDPLeaf(deviceID: "meter-2", allowedSources: ["10.0.0.2"]),
            UDPLeaf(deviceID: "scale", mappedSource: "10.0.0.9"),
            UDPLeaf(deviceID: "secure", hmacKey: key),
            UDPLeaf(deviceID: "csv-meter", mappedSource: "10.0.0.10", format: .csv(fields: ["t", "h", "state"], idField: nil)),
            UDPLeaf(deviceID: "kv-meter", mappedSource: "10.0.0.11:5000", format: .keyValue(fieldMap: ["T": "temperature"], onlyMapped: true, idField: nil)),
            UDPLeaf(deviceID: "rx-scale", mappedSource: "10.0.0.12", format: .regex(pattern: #"W:(?<weight>[+-][0-9.]+)kg"#, idField: nil)),
        ])
        config.maxDatagramBytes = 512
        return DatagramDecoder(configuration: config)
    }

    private func reject(_ d: inout DatagramDecoder, _ text: String, ip: String = "10.0.0.1", port: Int = 4000, now: Int64 = 1_700_000_000_000) -> DatagramRejection? {
        if case .failure(let r) = d.decode(Array(text.utf8), sourceIP: ip, sourcePort: port, nowMs: now) { return r.reason }
        return nil
    }

    @Test func jsonReadings() throws {
        var d = decoder()
        let r = d.decode(Array(#"{"device":"meter-1","ts":1700000000123,"values":{"kwh":12.5},"props":{"unit":"kWh"}}"#.utf8),
                         sourceIP: "10.0.0.1", sourcePort: 4000, nowMs: 5)
        guard case .success(.reading(let leaf, let ts, let envelope, _)) = r else { Issue.record("\(r)"); return }
        #expect(leaf == "meter-1" && ts == 1_700_000_000_123)
        #expect(JSONValue.parse(envelope.body) == ["kwh": 12.5])
        #expect(envelope.properties == ["unit": "kWh"] && envelope.contentType == "application/json")
        // No ts: the receive time; ISO 8601 ts accepted.
        if case .success(.reading(_, let t, _, _)) = d.decode(Array(#"{"device":"meter-1","values":{}}"#.utf8), sourceIP: "10.0.0.1", sourcePort: 1, nowMs: 42) {
            #expect(t == 42)
        } else { Issue.record("no ts") }
        if case .success(.reading(_, let t, _, _)) = d.decode(Array(#"{"device":"meter-1","ts":"2026-11-21T10:00:00.000Z","values":{}}"#.utf8), sourceIP: "10.0.0.1", sourcePort: 1, nowMs: 0) {
            #expect(t == WallClock.parseISO8601("2026-11-21T10:00:00.000Z"))
        } else { Issue.record("iso ts") }
    }

    /// A datagram may spell its leaf with other bytes that Swift finds equal ("café" composed or decomposed): the
    /// reading is the configured leaf's, in the configured bytes, which are what the spool and the uplink go by.
    @Test func aLeafSpelledOtherwiseIsTheConfiguredOne() {
        var d = DatagramDecoder(configuration: UDPAdapterConfiguration(port: 0, leaves: [UDPLeaf(deviceID: "caf\u{E9}")]))
        let r = d.decode(Array(#"{"device":"cafe\#u{301}","values":{"t":1}}"#.utf8), sourceIP: "10.0.0.1", sourcePort: 1, nowMs: 5)
        guard case .success(.reading(let leaf, _, _, _)) = r else { Issue.record("\(r)"); return }
        #expect(Array(leaf.utf8) == Array("caf\u{E9}".utf8))
    }

    /// Issue 18.2 at ingest: leaf properties are made to meet the hub's rules (and the fixes counted), timestamps
    /// the hub cannot take are refused.
    @Test func leafPropertiesAndTimesMeetTheHubsRules() {
        var d = decoder()
        let r = d.decode(Array(#"{"device":"meter-1","values":{},"props":{"unit":"°C","bad key":"a\tb","$x":"1","iothub-connection-device-id":"gw"}}"#.utf8),
                         sourceIP: "10.0.0.1", sourcePort: 4000, nowMs: 5)
        guard case .success(.reading(_, _, let envelope, let fixes)) = r else { Issue.record("\(r)"); return }
        #expect(envelope.properties == ["unit": "%C2%B0C", "bad%20key": "a%09b"])
        #expect(fixes.sorted { $0.rawValue < $1.rawValue } == [.escapedName, .escapedValue, .escapedValue, .reservedName, .reservedName])
        #expect(reject(&d, #"{"device":"meter-1","ts":253402300800000,"values":{}}"#) == .implausibleTimestamp)
        #expect(reject(&d, #"{"device":"meter-1","ts":-1,"values":{}}"#) == .implausibleTimestamp)
    }

    @Test func mappedSourcesOwnTheirLeaf() {
        var d = decoder()
        guard case .success(.reading(let leaf, _, let e, _)) = d.decode(Array("W:+0012.50kg".utf8), sourceIP: "10.0.0.9", sourcePort: 7, nowMs: 0) else {
            Issue.record("mapped raw"); return
        }
        #expect(leaf == "scale" && e.body == Array("W:+0012.50kg".utf8) && e.contentType == "application/octet-stream")
        #expect(reject(&d, #"{"device":"meter-1","values":{}}"#, ip: "10.0.0.9") == .notAllowedForLeaf, "a mapped source cannot speak for another leaf")
    }

    /// Mapped sources with the serial decoders (issue 7, part 2): CSV, key=value with a field map, a regex.
    @Test func mappedSourcesWithDecoders() {
        var d = decoder()
        func values(_ text: String, ip: String, port: Int = 7) -> JSONValue? {
            guard case .success(.reading(_, _, let e, _)) = d.decode(Array(text.utf8), sourceIP: ip, sourcePort: port, nowMs: 0) else { return nil }
            #expect(e.contentType == "application/json")
            return JSONValue.parse(e.body)
        }
        #expect(values("21.5,60,ok\r\n", ip: "10.0.0.10") == ["t": 21.5, "h": 60, "state": "ok"])
        #expect(values("T=19.5 X=1", ip: "10.0.0.11", port: 5000) == ["temperature": 19.5])
        #expect(values("W:+0012.50kg", ip: "10.0.0.12") == ["weight": 12.5])
        #expect(reject(&d, "no weight here", ip: "10.0.0.12") == .malformed, "a frame the regex does not match is counted")
        #expect(reject(&d, "T=1", ip: "10.0.0.11", port: 5001) == .malformed, "the kv leaf is mapped to port 5000 only")
    }

    @Test func hostileInputIsRejectedByReason() {
        var d = decoder()
        #expect(reject(&d, String(repeating: "x", count: 600)) == .oversize)
        #expect(reject(&d, "{not json") == .malformed)
        #expect(reject(&d, #"{"values":{}}"#) == .malformed)
        #expect(reject(&d, #"{"device":"meter-1"}"#) == .malformed, "no values")
        #expect(reject(&d, #"{"device":"meter-1","values":{},"props":{"n":1}}"#) == .malformed, "props are strings")
        #expect(reject(&d, #"{"device":"ghost","values":{}}"#) == .unknownLeaf)
        #expect(reject(&d, #"{"device":"meter-2","values":{}}"#, ip: "10.0.0.66") == .notAllowedForLeaf, "spoofed source")
        #expect(reject(&d, #"{"device":"meter-2","values":{}}"#, ip: "10.0.0.2") == nil)
    }

    /// The replay floor a restart starts from: nothing at or below the newest timestamp accepted before it.
    @Test func replayGuardFloor() {
        var guardian = ReplayGuard(floors: ["meter-1": 1_000])
        var changed: [String: Int64] = [:]
        let atFloor = guardian.accept(leaf: "meter-1", signature: "s0", timestampMs: 1_000)
        let above = guardian.accept(leaf: "meter-1", signature: "s1", timestampMs: 1_001)
        let again = guardian.accept(leaf: "meter-1", signature: "s1", timestampMs: 1_001)
        let other = guardian.accept(leaf: "other", signature: "s2", timestampMs: 5)
        let newer = guardian.accept(leaf: "meter-1", signature: "s3", timestampMs: 1_002)
        #expect(!atFloor && above && other && newer)
        #expect(!again, "a signature is accepted once")
        for (leaf, ts) in guardian.takeChanged() { changed[leaf] = ts }
        #expect(changed == ["meter-1": 1_002, "other": 5])
        let none = guardian.takeChanged()
        #expect(none.isEmpty)
    }

    @Test func hmacSignatureTimestampAndReplay() {
        var d = decoder()
        let now: Int64 = 1_700_000_000_000
        let body = Array(#"{"device":"secure","ts":1700000000000,"values":{"v":1}}"#.utf8)
        let signed = DatagramDecoder.sign(body, key: key)
        #expect(reject(&d, String(decoding: body, as: UTF8.self), now: now) == .badSignature, "unsigned")
        #expect(reject(&d, String(decoding: DatagramDecoder.sign(body, key: Array("wrong-key".utf8)), as: UTF8.self), now: now) == .badSignature)
        #expect(reject(&d, String(decoding: signed, as: UTF8.self), now: now + 31_000) == .staleTimestamp)
        #expect(reject(&d, String(decoding: signed, as: UTF8.self), now: now) == nil)
        #expect(reject(&d, String(decoding: signed, as: UTF8.self), now: now) == .replay)
        // Absurd timestamps are stale, never a trap (udp-fuzz found a 1.7e22 ts trapping the Double → Int64 cast).
        for ts in ["17000000000000000000000", "-9223372036854775808", "-1.5e300"] {
            let b = Array(#"{"device":"secure","ts":\#(ts),"values":{}}"#.utf8)
            #expect(reject(&d, String(decoding: DatagramDecoder.sign(b, key: key), as: UTF8.self), now: now) == .staleTimestamp, "\(ts)")
        }
        #expect(reject(&d, #"{"device":"meter-1","ts":17000000000000000000000,"values":{}}"#) == nil, "an unsigned leaf falls back to the receive time")
    }
}

/// Answers commands like a UDP leaf device would.
final class FakeUDPLeaf: Sendable {
    let socket: UDPSocket
    let received = Mutex<[JSONValue]>([])
    let stop = Atomic<Bool>(false)

    init() throws { socket = try UDPSocket(bindAddress: "127.0.0.1", port: 0, receiveBufferBytes: 1 << 20) }

    func send(_ text: String, to port: Int) { socket.send(Array(text.utf8), toIP: "127.0.0.1", port: port) }

    /// Replies to every command with `status` (nil: stay silent).
    func serve(replyingTo adapterPort: Int, status: Int?) {
        DispatchQueue(label: "fake-leaf").async { [self] in
            let batch = UDPReceiveBatch(maxDatagramBytes: 8192)
            while !stop.load(ordering: .relaxed) {
                for k in 0..<socket.receive(into: batch, timeoutMs: 100) {
                    handle(batch.datagram(k).bytes, adapterPort: adapterPort, status: status)
                }
            }
        }
    }

    private func handle(_ bytes: UnsafeBufferPointer<UInt8>, adapterPort: Int, status: Int?) {
        guard let json = JSONValue.parse(Array(bytes)) else { return }
        received.withLock { $0.append(json) }
        guard let status, let id = json["id"]?.stringValue else { return }
        let payload: JSONValue = json["type"] == "method" ? ["echo": json["payload"] ?? .null] : .null
        let reply: JSONValue = ["device": "meter-1", "type": "reply", "id": .string(id), "status": .int(Int64(status)), "payload": payload]
        socket.send(reply.bytes, toIP: "127.0.0.1", port: adapterPort)
    }
}

@Suite("UDP adapter over real sockets")
struct UDPAdapterSocketTests {
    /// Leaves the adapter reported reachable again (its `onReachable`).
    private let reachable = ReachableLog()

    private func withAdapter(_ leaves: [UDPLeaf], receiveBufferBytes: Int = 8 << 20, _ body: (UDPAdapter, Spool) async throws -> Void) async throws {
        let dir = FileManager.default.temporaryDirectory.path + "/fieldgate-udp-" + String(UInt64.random(in: 1...UInt64.max))
        var sc = SpoolConfiguration(directory: dir)
        sc.sync = .interval(milliseconds: 50)
        let spool = try Spool(configuration: sc)
        var config = UDPAdapterConfiguration(port: 0, leaves: leaves)
        config.bindAddress = "127.0.0.1"
        config.replyTimeoutMilliseconds = 500
        config.receiveBufferBytes = receiveBufferBytes
        let reachable = self.reachable
        let adapter = try UDPAdapter(configuration: config, spool: spool, onReachable: { id in reachable.ids.withLock { $0.append(id) } })
        adapter.start()
        do { try await body(adapter, spool) } catch {
            await adapter.stop(); spool.close(); try? FileManager.default.removeItem(atPath: dir); throw error
        }
        await adapter.stop()
        spool.close()
        try? FileManager.default.removeItem(atPath: dir)
    }

    private func eventually(_ what: String, _ condition: () -> Bool) async throws {
        for _ in 0..<100 { if condition() { return }; try await Task.sleep(for: .milliseconds(20)) }
        Issue.record("timed out: \(what)")
    }

    @Test func readingsReachTheSpoolAndBadDatagramsAreCounted() async throws {
        try await withAdapter([UDPLeaf(deviceID: "meter-1"), UDPLeaf(deviceID: "meter-2", allowedSources: ["10.9.9.9"])]) { adapter, spool in
            let leaf = try FakeUDPLeaf()
            for i in 0..<50 { leaf.send(#"{"device":"meter-1","values":{"i":\#(i)}}"#, to: adapter.port) }
            leaf.send("garbage", to: adapter.port)
            leaf.send(#"{"device":"meter-2","values":{}}"#, to: adapter.port)  // not from its allowed source
            leaf.send(String(repeating: "z", count: 5000), to: adapter.port)
            try await eventually("50 readings and 3 rejections") {
                let s = adapter.statistics()
                return s.leaves["meter-1"]?.readings == 50 && s.unattributed.values.reduce(0, +) == 2 && s.leaves["meter-2"]?.rejected[.notAllowedForLeaf] == 1
            }
            let s = adapter.statistics()
            #expect(s.unattributed == [.malformed: 1, .oversize: 1])
            let records = try spool.next(max: 100)
            #expect(records.count == 50 && records.allSatisfy { $0.leaf == "meter-1" })
            let numbers = records.compactMap { TelemetryEnvelope(decoding: $0.payload).flatMap { JSONValue.parse($0.body)?["i"]?.intValue } }
            #expect(numbers == (0..<50).map(Int64.init), "in order")
        }
    }

    @Test func commandsReachTheSenderAndItsRepliesCount() async throws {
        try await withAdapter([UDPLeaf(deviceID: "meter-1")]) { adapter, _ in
            let leaf = try FakeUDPLeaf()
            // Unknown address before the leaf has sent anything: unreachable (kept by the uplink), a method 404.
            let early = await adapter.cloudToDevice(C2DMessage(deviceID: "meter-1", messageID: "c0", body: Array("{}".utf8)))
            guard case .unreachable(let why) = early, why.hasPrefix("leaf not connected") else { Issue.record("\(early)"); return }
            let earlyCall = await adapter.invoke(MethodCall(deviceID: "meter-1", name: "read", payload: .null, deadlineMilliseconds: WallClock.nowMilliseconds() + 5000))
            #expect(earlyCall?.status == 404)
            leaf.send(#"{"device":"meter-1","values":{}}"#, to: adapter.port)
            try await eventually("seen") { adapter.statistics().leaves["meter-1"]?.lastSeen != nil }
            #expect(reachable.ids.withLock { $0 } == ["meter-1"], "the uplink heard that the leaf is back")
            leaf.serve(replyingTo: adapter.port, status: 200)
            defer { leaf.stop.store(true, ordering: .relaxed) }
            let outcome = await adapter.cloudToDevice(C2DMessage(deviceID: "meter-1", messageID: "c1", properties: ["k": "v"], body: Array(#"{"set":21}"#.utf8)))
            #expect(outcome == .complete)
            let response = await adapter.invoke(MethodCall(deviceID: "meter-1", name: "write", payload: ["x": 1], deadlineMilliseconds: WallClock.nowMilliseconds() + 5000))
            #expect(response == MethodResponse(status: 200, payload: ["echo": ["x": 1]]))
            let got = leaf.received.withLock { $0 }
            #expect(got.first?["type"] == "c2d" && got.first?["body"] == ["set": 21] && got.first?["props"] == ["k": "v"])
            #expect(got.last?["type"] == "method" && got.last?["name"] == "write")
        }
    }

    /// Issue 18.10: datagrams the kernel drops for want of buffer are counted (SO_RXQ_OVFL), so a burst is
    /// accounted for: taken + dropped = sent.
    @Test func kernelDropsAreCounted() async throws {
        try await withAdapter([UDPLeaf(deviceID: "meter-1")], receiveBufferBytes: 16 << 10) { adapter, _ in
            #expect(adapter.statistics().receiveBufferBytes < 64 << 10, "the small buffer asked for")
            let leaf = try FakeUDPLeaf()
            let burst = 20_000
            for i in 0..<burst { leaf.send(#"{"device":"meter-1","values":{"i":\#(i)}}"#, to: adapter.port) }
            try await Task.sleep(for: .milliseconds(500))
            // The count travels with the next datagram the socket takes.
            leaf.send(#"{"device":"meter-1","values":{"last":true}}"#, to: adapter.port)
            try await eventually("all accounted for") {
                let s = adapter.statistics()
                return (s.leaves["meter-1"]?.readings ?? 0) + (s.leaves["meter-1"]?.spoolRefused ?? 0) + s.kernelDrops == burst + 1
            }
            let s = adapter.statistics()
            #expect(s.kernelDrops > 0, "a 16 KiB buffer must overflow in a 20k burst")
            #expect((s.leaves["meter-1"]?.readings ?? 0) + (s.leaves["meter-1"]?.spoolRefused ?? 0) + s.kernelDrops == burst + 1)
        }
    }

    @Test func silentLeafTimesOut() async throws {
        try await withAdapter([UDPLeaf(deviceID: "meter-1", commandAddress: "127.0.0.1:9")]) { adapter, _ in
            let r = await adapter.invoke(MethodCall(deviceID: "meter-1", name: "read", payload: .null, deadlineMilliseconds: WallClock.nowMilliseconds() + 5000))
            #expect(r?.status == 504)
        }
    }
}

final class ReachableLog: Sendable {
    let ids = Mutex<[String]>([])
}
