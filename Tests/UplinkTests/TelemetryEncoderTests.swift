import FieldgateCore
@testable import HubEmulator
import HubTestSupport
import IoTHub
import ProtonAMQP
import Spool
import Testing
@testable import Uplink

@Suite("Telemetry encoding straight into AMQP bytes")
struct TelemetryEncoderTests {
    private func record(_ seq: UInt64, leaf: String = "d1", body: [UInt8], properties: [String: String] = ["k": "v"],
                        contentType: String = "application/json", acquiredAtMs: Int64 = 1_764_000_000_000) -> SpoolRecord {
        SpoolRecord(leaf: leaf, sequence: seq, acquiredAtMs: acquiredAtMs + Int64(seq % 1_000_000),
                    payload: TelemetryEnvelope(body: body, contentType: contentType, properties: properties).encoded())
    }

    /// What the message of one record must be, built the general way (a value tree through Proton's codec).
    private func expected(_ r: SpoolRecord, id: String) -> AMQPMessage {
        let e = TelemetryEnvelope(decoding: r.payload)!
        var m = AMQPMessage(data: e.body)
        m.messageID = .string(id)
        m.contentType = e.contentType
        m.contentEncoding = e.contentEncoding
        for (k, v) in e.properties { m.applicationProperties[k] = .string(v) }
        m.applicationProperties[IoTHubAMQP.creationTimeProperty] = .string(WallClock.iso8601(milliseconds: r.acquiredAtMs))
        return m
    }

    /// Bodies and property sets of every size class (8- and 32-bit string and binary forms, no properties, many)
    /// decode to exactly the message the general codec describes.
    @Test("decimal digits of sequences, from the bit length, agree with the decimal text")
    func decimalDigits() {
        var values: [UInt64] = [0, 1, 9, 10, 99, 100, UInt64.max, UInt64.max - 1]
        var p: UInt64 = 1
        for _ in 0..<19 { p *= 10; values += [p - 1, p, p + 1] }
        for _ in 0..<10_000 { values.append(UInt64.random(in: 0...UInt64.max) >> UInt64.random(in: 0...63)) }
        for v in values where TelemetryEncoder.decimalDigits(v) != String(v).count { Issue.record("\(v): \(TelemetryEncoder.decimalDigits(v))") }
    }

    @Test func directEncodingDecodesAsTheGeneralCodecsMessage() throws {
        var rng = SplitMix(seed: 0x21_01)
        let encoder = TelemetryEncoder(coalesceTargetBytes: nil, messageIDPrefix: "0123456789abcdef-")
        for round in 0..<400 {
            let size = [0, 1, 200, 255, 256, 300, 70_000][round % 7]
            let body = (0..<size).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            var properties: [String: String] = [:]
            for i in 0..<Int(rng.next() % 6) { properties["p\(i)-\(rng.next() % 100)"] = String(repeating: "v", count: Int(rng.next() % 400)) }
            let sequence = rng.next() % 2 == 0 ? UInt64(round) : UInt64.max - UInt64(round)
            let r = record(sequence, body: body, properties: properties, contentType: round % 3 == 0 ? "application/octet-stream" : "application/json",
                           acquiredAtMs: Int64(rng.next() % 253_402_299_000_000))
            let (messages, invalid) = encoder.encode([r])
            try #require(invalid.isEmpty && messages.count == 1)
            #expect(messages[0].sequences == [sequence])
            #expect(try AMQPMessageCodec.decode(messages[0].bytes) == expected(r, id: "0123456789abcdef-\(sequence)"))
        }
    }

    /// 1000 leaves whose readings lie interleaved in the spool (as the round-robin fetch returns them): each leaf's
    /// readings are gathered into JSON arrays of up to the target, in order, with range ids.
    @Test func coalescesEachLeafAcrossInterleavedLeaves() throws {
        let leaves = 1000, perLeaf = 38  // 19 readings of 200 B fill 4000 bytes
        let body = Array(#"{"t":21.5,"pad":"\#(String(repeating: "x", count: 181))"}"#.utf8)  // 200 B
        #expect(body.count == 200)
        var records: [SpoolRecord] = []
        for round in 0..<perLeaf {
            for leaf in 0..<leaves { records.append(record(UInt64(round * leaves + leaf + 1), leaf: "leaf-\(leaf)", body: body)) }
        }
        let encoder = TelemetryEncoder(coalesceTargetBytes: 4000, messageIDPrefix: "e-")
        let (messages, invalid) = encoder.encode(records)
        #expect(invalid.isEmpty)
        var byLeaf: [String: [OutgoingMessage]] = [:]
        for m in messages { byLeaf[m.leaf, default: []].append(m) }
        #expect(byLeaf.count == leaves)
        #expect(Double(records.count) / Double(messages.count) >= 15, "\(records.count) readings in \(messages.count) messages")
        for leaf in 0..<leaves {
            let ms = byLeaf["leaf-\(leaf)"] ?? []
            let wanted = (0..<perLeaf).map { UInt64($0 * leaves + leaf + 1) }
            #expect(ms.flatMap(\.sequences) == wanted, "leaf-\(leaf) in order")
            for m in ms {
                let decoded = try AMQPMessageCodec.decode(m.bytes)
                #expect(decoded.messageID == .string("e-\(m.sequences[0])-\(m.sequences.last!)"))
                #expect(decoded.body.bytes.count <= 4000)
                #expect(decoded.body.bytes == Array("[".utf8) + Array(m.sequences.map { _ in String(decoding: body, as: UTF8.self) }.joined(separator: ",").utf8) + Array("]".utf8))
                #expect(decoded.applicationProperties[IoTHubAMQP.creationTimeProperty] == .string(WallClock.iso8601(milliseconds: 1_764_000_000_000 + Int64(m.sequences[0]))))
            }
        }
    }

    /// A group ends at a reading that is not JSON, or has other properties; those keep their own place in order.
    @Test func groupsBreakWhereReadingsDiffer() throws {
        let encoder = TelemetryEncoder(coalesceTargetBytes: 4000, messageIDPrefix: "e-")
        let records = [
            record(1, body: Array("{}".utf8)), record(2, leaf: "d2", body: Array("{}".utf8)), record(3, body: Array("{}".utf8)),
            record(4, body: Array("raw".utf8), contentType: "text/plain"), record(5, body: Array("{}".utf8)),
            record(6, body: Array("{}".utf8), properties: ["k": "other"]), record(7, body: Array("{}".utf8), properties: ["k": "other"]),
            record(8, leaf: "d2", body: Array("{}".utf8)),
        ]
        let (messages, _) = encoder.encode(records)
        #expect(messages.map(\.sequences) == [[1, 3], [4], [5], [6, 7], [2, 8]])
        #expect(try AMQPMessageCodec.decode(messages[3].bytes).applicationProperties["k"] == .string("other"))
    }

    /// The largest target with heavy properties: a coalesced message still stays within the hub's 256 KB by its
    /// measure (body, id, content type and encoding, properties, creation time).
    @Test func coalescedMessagesStayUnderTheHubsLimit() throws {
        let encoder = TelemetryEncoder(coalesceTargetBytes: UplinkConfiguration.coalesceRange.upperBound, messageIDPrefix: "0123456789abcdef-")
        let properties = Dictionary(uniqueKeysWithValues: (0..<8).map { ("p\($0)", String(repeating: "v", count: 250)) })
        let body = Array(#"{"x":"\#(String(repeating: "y", count: 9_990))"}"#.utf8)
        let records = (1...60).map { record(UInt64($0), body: body, properties: properties) }
        let (messages, invalid) = encoder.encode(records)
        #expect(invalid.isEmpty && messages.count >= 3)
        #expect(messages.flatMap(\.sequences) == (1...60).map { UInt64($0) })
        for m in messages {
            let decoded = try AMQPMessageCodec.decode(m.bytes)
            #expect(HubConnection.protocolAgnosticSize(decoded) <= IoTHubAMQP.maxTelemetrySize, "\(m.sequences.count) readings")
        }
    }

    /// Content type and encoding travel as AMQP symbols (ASCII); an envelope with other bytes there is held back.
    @Test func nonASCIISystemValuesAreInvalid() {
        let encoder = TelemetryEncoder(coalesceTargetBytes: nil, messageIDPrefix: "e-")
        let (messages, invalid) = encoder.encode([record(1, body: [1], contentType: "application/jsön")])
        #expect(messages.isEmpty && invalid == [1])
    }
}
