import FieldgateCore
import HubTestSupport
import Testing

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

@Suite struct JSONScannerTests {
    @Test func parsesEveryKindOfValue() {
        let v = JSONValue.parse(#" {"a": [1, -2, 3.5, 1e3, -0, 0.25E-2], "b": {"c": null, "d": true, "e": false}, "s": "x\"y\\z\/\n\t\u00e9\ud83d\ude00"} "#)
        #expect(v == ["a": [1, -2, 3.5, 1000.0, 0, 0.0025], "b": ["c": nil, "d": true, "e": false], "s": "x\"y\\z/\n\té😀"])
        #expect(JSONValue.parse("42") == 42)
        #expect(JSONValue.parse(#""plain""#) == "plain")
        #expect(JSONValue.parse("[]") == [])
        #expect(JSONValue.parse("{}") == .object([:]))
        #expect(JSONValue.parse(#"{"k":1,"k":2}"#) == ["k": 2], "the last duplicate wins")
        #expect(JSONValue.parse(Array("\"grüße\"".utf8)) == "grüße")
    }

    @Test func integersStayIntegersWhileTheyFit() {
        #expect(JSONValue.parse("9223372036854775807") == .int(.max))
        #expect(JSONValue.parse("-9223372036854775808") == .int(.min))
        #expect(JSONValue.parse("9223372036854775808") == .double(9223372036854775808))
        #expect(JSONValue.parse("1.0") == .double(1))
        #expect(JSONValue.parse("1e400") == nil, "infinity is not a JSON number")
    }

    @Test func refusesWhatRFC8259Refuses() {
        let bad = [
            "", " ", "{", "}", "[1,]", #"{"a":1,}"#, "01", "-", "1.", ".5", "+1", "1e", "1e+", "NaN", "Infinity",
            "'a'", #"{'a':1}"#, #"{"a" 1}"#, #"{a:1}"#, "[1 2]", "tru", "nul", "{} x", "// c\n{}", "\"a\u{01}b\"",
            #""\x""#, #""\u12""#, #""\ud800""#, #""\udc00""#, #""\ud800\u0041""#, "\"abc",
        ]
        for text in bad { #expect(JSONValue.parse(text) == nil, "\(text.debugDescription) must be refused") }
        let badUTF8: [[UInt8]] = [
            [0x22, 0xC3, 0x22], [0x22, 0xC0, 0xAF, 0x22], [0x22, 0xE0, 0x80, 0xAF, 0x22], [0x22, 0xED, 0xA0, 0x80, 0x22],
            [0x22, 0xF4, 0x90, 0x80, 0x80, 0x22], [0x22, 0xFF, 0x22], [0xEF, 0xBB, 0xBF, 0x7B, 0x7D],
        ]
        for bytes in badUTF8 { #expect(JSONValue.parse(bytes) == nil, "\(bytes) must be refused") }
        let deep = String(repeating: "[", count: 300) + String(repeating: "]", count: 300)
        #expect(JSONValue.parse(deep) == nil, "nesting is bounded")
        let fine = String(repeating: "[", count: 200) + String(repeating: "]", count: 200)
        #expect(JSONValue.parse(fine) != nil)
    }

    @Test func membersGiveTheRawValueBytes() throws {
        let text = Array(#"{"device":"m-1","values" : {"t": 21.5, "s":"ok"} ,"ts":17,"d\u0065vice":"x"}"#.utf8)
        let members = try #require(JSONScanner.members(of: text))
        #expect(members.map(\.key) == ["device", "values", "ts", "device"])
        #expect(members.map(\.kind) == [.string, .object, .number, .string])
        #expect(String(decoding: text[members[1].range], as: UTF8.self) == #"{"t": 21.5, "s":"ok"}"#)
        text.withUnsafeBufferPointer { b in
            #expect(JSONScanner.string(at: members[3].range, in: b) == "x")
            #expect(JSONScanner.number(at: members[2].range, in: b) == 17)
        }
        #expect(JSONScanner.members(of: Array("[1]".utf8)) == nil, "the top level must be an object")
        #expect(JSONScanner.members(of: Array(#"{"a":1} {}"#.utf8)) == nil)
        #expect(JSONScanner.members(of: Array("{}".utf8)) == [])
        // Found by udp-fuzz: a number too large for a double must be refused by both entry points alike.
        let huge = Array(#"{"device":"open","ts":1022222222222222222232222E2222222222222,"props":{"ubbb":"C"}}"#.utf8)
        #expect(JSONScanner.members(of: huge) == nil && JSONValue.parse(huge) == nil)
        #expect(JSONScanner.members(of: Array(#"{"a":1e308,"b":-2.5E-400}"#.utf8))?.count == 2)
        #expect(JSONScanner.members(of: Array("{\"a\":\(String(repeating: "9", count: 400))}".utf8)) == nil)
    }

    /// Differential check against Foundation: documents of random shape, written by our writer exactly as
    /// Foundation's encoder writes them, read back the same; and Foundation reads what the scanner accepts.
    @Test func agreesWithFoundationOnRandomDocuments() throws {
        var rng = SplitMix(seed: 7)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Fixed cases the random shapes rarely reach: keys not in NFC and of mixed case, exponents, -0, extremes.
        let fixed: [JSONValue] = [
            .object(["e\u{301}": 1, "f": 2, "ez": 3, "B": 4, "a": 5, "": 6, "aa": 7, "\u{2028}": "\u{2028}", "ü": 8]),
            [.double(-0.0), .double(1e-7), .double(5e-324), .double(1e16), .double(-1.5e300), .double(0.1), .int(.min), .int(.max)],
        ]
        for v in fixed { #expect(Array(try encoder.encode(v)) == v.bytes, "\(v.serialized)") }
        for _ in 0..<2000 {
            let v = randomValue(&rng, depth: 0)
            let text = v.serialized
            #expect(Array(try encoder.encode(v)) == v.bytes, "\(text)")
            let parsed = JSONValue.parse(text)
            #expect(parsed == v, "\(text)")
            let foundation = try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
            #expect(foundation != nil, "\(text)")
        }
    }

    @Test func writesWhatJSONCannotHoldAsNull() {
        #expect(JSONValue.array([.double(.nan), .double(.infinity), .double(-2.5), .double(1e300), .double(3)]).serialized == "[null,null,-2.5,1e+300,3]")
        #expect(JSONValue.string("a\u{7f}\u{1f}\u{0}/").serialized == #""a\#u{7f}\u001f\u0000/""#)
    }

    private func randomValue(_ rng: inout SplitMix, depth: Int) -> JSONValue {
        switch rng.next() % (depth > 4 ? 5 : 7) {
        case 0: return .null
        case 1: return .bool(rng.next() & 1 == 0)
        case 2: return .int(Int64(bitPattern: rng.next()) >> (rng.next() % 63))
        case 3: return .double(Double((Int64(bitPattern: rng.next()) >> 20) * 2 + 1) / 2048)  // never integral: "3" reads back as an int
        case 4:
            let alphabet = Array("aZ09 \"\\/\n\t\u{01}é€😀ü-_".unicodeScalars)
            return .string(String(String.UnicodeScalarView((0..<(rng.next() % 12)).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] })))
        case 5: return .array((0..<(rng.next() % 5)).map { _ in randomValue(&rng, depth: depth + 1) })
        default:
            var o: [String: JSONValue] = [:]
            for k in 0..<(rng.next() % 5) { o["k\(k)\(rng.next() % 3 == 0 ? "é\"" : "")"] = randomValue(&rng, depth: depth + 1) }
            return .object(o)
        }
    }
}

@Suite struct SiblingExecutableTests {
    @Test("a sibling of the running executable is an absolute path in its directory, however it was started")
    func absoluteSibling() {
        let sibling = siblingExecutable("fieldgate-hub")
        #expect(sibling.hasPrefix("/"))
        #expect(sibling.hasSuffix("/fieldgate-hub"))
        #expect(runningExecutable().hasPrefix("/"))
        // The leading slash of an absolute path stays (fieldgate-bench started as /tmp/… lost it before).
        #expect(siblingExecutable("fieldgate-hub", of: "/tmp/dir/fieldgate-bench") == "/tmp/dir/fieldgate-hub")
        #expect(siblingExecutable("fieldgate-hub", of: "bin/fieldgate-bench") == "bin/fieldgate-hub")
        #expect(siblingExecutable("fieldgate-hub", of: "fieldgate-bench") == "./fieldgate-hub")
    }
}
