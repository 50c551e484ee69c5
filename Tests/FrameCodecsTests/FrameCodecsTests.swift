import FieldgateCore
import FrameCodecs
import Testing

@Suite("Serial framing and frame decoders (no ports)")
struct FrameCodecsTests {
    private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    @Test func linesSurviveHalfFramesNoiseAndOverlongGarbage() {
        var f = Framer(.lines(maxLength: 16))
        #expect(f.feed(bytes("temp=21")) == [])
        #expect(f.feed(bytes(".5\r\nhum=60\n")) == [bytes("temp=21.5"), bytes("hum=60")], "split across reads; CRLF stripped")
        #expect(f.feed(bytes(String(repeating: "x", count: 40) + "\nok=1\n")) == [bytes("ok=1")], "an over-long line is dropped whole")
        #expect(f.dropped == 1)
        #expect(f.feed(bytes("\n\n")) == [], "empty lines are not frames")
    }

    @Test func fixedAndLengthPrefixed() {
        var fixed = Framer(.fixed(length: 4))
        #expect(fixed.feed([1, 2, 3, 4, 5, 6]) == [[1, 2, 3, 4]])
        #expect(fixed.feed([7, 8]) == [[5, 6, 7, 8]])
        var lp = Framer(.lengthPrefixed(prefixBytes: 2, maxLength: 8))
        #expect(lp.feed([0, 3, 9, 9]) == [])
        #expect(lp.feed([9, 0, 1, 7]) == [[9, 9, 9], [7]])
        // An implausible length (> maxLength) is skipped byte by byte until a plausible frame lines up.
        #expect(lp.feed([0xFF, 0xFF, 0, 2, 5, 6]) == [[5, 6]])
        #expect(lp.dropped >= 1)
        #expect(lp.frame([1, 2, 3]) == [0, 3, 1, 2, 3])
    }

    @Test func markersWithEscaping() {
        let framing = Framing.markers(start: 0x02, end: 0x03, escape: 0x10)
        var f = Framer(framing)
        let payload: [UInt8] = [0x41, 0x02, 0x03, 0x10, 0x42]
        let wire = f.frame(payload)
        #expect(wire == [0x02, 0x41, 0x10, 0x02, 0x10, 0x03, 0x10, 0x10, 0x42, 0x03])
        #expect(f.feed([0xAA, 0xBB] + wire + [0xCC]) == [payload], "noise around the frame is ignored")
        #expect(f.feed([0x02, 0x41, 0x02, 0x42, 0x03]) == [[0x42]], "a restarted frame drops the unfinished one")
        #expect(f.dropped == 1)
    }

    @Test func decoders() throws {
        let json = try FrameDecoder(.json(idField: "id"))
        #expect(json.decode(bytes(#"{"id":"m1","values":{"kwh":3}}"#)) == .success(DecodedFrame(leaf: "m1", values: ["kwh": 3])))
        #expect(json.decode(bytes(#"{"id":"m1","kwh":3}"#)) == .success(DecodedFrame(leaf: "m1", values: ["kwh": 3])))
        #expect(json.decode(bytes(#"{"kwh":3}"#)) == .failure(.missingID))
        #expect(json.decode(bytes("{oops")) == .failure(.malformed))

        let csv = try FrameDecoder(.csv(fields: ["id", "temp", "state"], idField: "id"))
        #expect(csv.decode(bytes("s7, 21.5 ,ok")) == .success(DecodedFrame(leaf: "s7", values: ["temp": 21.5, "state": "ok"])))
        #expect(csv.decode(bytes("s7,21.5")) == .failure(.malformed))

        let kv = try FrameDecoder(.keyValue(fieldMap: ["T": "temperature", "H": "humidity"], onlyMapped: true, idField: nil))
        #expect(kv.decode(bytes("T=21 H=60 X=1")) == .success(DecodedFrame(leaf: nil, values: ["temperature": 21, "humidity": 60])))
        #expect(kv.decode(bytes("garbage")) == .failure(.malformed))

        let re = try FrameDecoder(.regex(pattern: #"W:(?<weight>[+-]\d+\.\d+)(?<unit>kg|lb)"#, idField: nil))
        #expect(re.decode(bytes("W:+0012.50kg")) == .success(DecodedFrame(leaf: nil, values: ["weight": 12.5, "unit": "kg"])))
        #expect(re.decode(bytes("W:??")) == .failure(.noMatch))
        #expect(throws: FrameFormatError.self) { try FrameDecoder(.regex(pattern: "(unclosed", idField: nil)) }

        #expect(try FrameDecoder(.raw).decode([0, 255]) == .success(DecodedFrame(leaf: nil, values: ["raw": "AP8="])))
        #expect(csv.decode([0xFF, 0xFE]) == .failure(.notUTF8))
    }
}
