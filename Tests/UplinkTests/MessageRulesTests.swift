import FieldgateCore
@testable import HubEmulator
import HubTestSupport
import IoTHub
import ProtonAMQP
import Spool
import Testing
@testable import Uplink

/// Issue 18.2: what a leaf supplies is made to meet the hub's message rules before it is sent, so the hub never
/// refuses a reading for its format (it would go to the dead-letter file for good).
@Suite("Hub message rules")
struct MessageRulesTests {
    @Test func leafPropertiesAreEscapedOrDropped() {
        let (p, fixes) = MessageRules.sanitize([
            "unit": "°C", "note": "a\tb", "bad key": "1", "über": "2", "$body": "x", "iothub-connection-device-id": "spoof",
            "IoTHub-MessageSchema": "y", "Level": "high", "level": "low", "": "empty",
        ])
        #expect(p == ["unit": "%C2%B0C", "note": "a%09b", "bad%20key": "1", "%C3%BCber": "2", "Level": "high"])
        #expect(Set(fixes) == [.escapedValue, .escapedName, .reservedName, .duplicateName])
        #expect(fixes.filter { $0 == .reservedName }.count == 4)
        // Valid properties are left alone.
        let plain = ["temperatureAlert": "true", "level": "storage 2 (ok)"]
        #expect(MessageRules.sanitize(plain).properties == plain)
        #expect(MessageRules.sanitize(plain).fixes.isEmpty)
    }

    @Test func creationTimeRange() {
        #expect(!MessageRules.isPlausibleCreationTime(253_402_300_800_000), "year 10000")
        #expect(!MessageRules.isPlausibleCreationTime(-1), "1969")
        #expect(MessageRules.isPlausibleCreationTime(0))
        #expect(MessageRules.isPlausibleCreationTime(253_402_300_799_999))
    }

    /// The rule fuzzed against fieldgate-hub's own checks: random property maps (control characters, non-ASCII,
    /// `$` and `iothub-` names, case twins) and random acquisition times go through the encoder; every message
    /// it produces passes the hub's property check and size formula, and only implausible times are held back.
    @Test func encodedMessagesPassTheHubsChecks() throws {
        var rng = SplitMix(seed: 0x18_02)
        let alphabet: [String] = ["a", "Z", "9", " ", "\t", "\n", "°", "ü", "$", "%", "-", "_", ":", "/", "\u{7F}", "\u{0}", "é", "€", "😀", "~", "`", "|", "\"", "iothub-", "IOTHUB-", "Level", "level"]
        func text() -> String { (0..<Int(rng.next() % 6)).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }.joined() }
        let encoder = TelemetryEncoder(coalesceTargetBytes: nil, messageIDPrefix: "fuzz-")
        var checked = 0
        for round in 0..<20_000 {
            var properties: [String: String] = [:]
            for _ in 0..<Int(rng.next() % 5) { properties[text()] = text() }
            let times: [Int64] = [-1, 0, 1_764_000_000_000, 253_402_300_799_999, 253_402_300_800_000, Int64(bitPattern: rng.next())]
            let acquired = times[Int(rng.next() % UInt64(times.count))]
            let record = SpoolRecord(leaf: "leaf-0", sequence: UInt64(round), acquiredAtMs: acquired,
                                     payload: TelemetryEnvelope(body: Array(text().utf8), properties: properties).encoded())
            let (messages, invalid) = encoder.encode([record])
            if !MessageRules.isPlausibleCreationTime(acquired) {
                #expect(invalid == [UInt64(round)] && messages.isEmpty, "\(acquired) must be held back")
                continue
            }
            try #require(messages.count == 1, "\(properties)")
            let m = try AMQPMessageCodec.decode(messages[0].bytes)
            let problem = HubConnection.propertyProblem(m)
            #expect(problem == nil, "\(properties) → \(m.applicationProperties): \(problem ?? "")")
            #expect(HubConnection.protocolAgnosticSize(m) <= IoTHubAMQP.maxTelemetrySize)
            #expect(m.applicationProperties.keys.allSatisfy { !$0.hasPrefix("$") && ($0 == IoTHubAMQP.creationTimeProperty || !$0.lowercased().hasPrefix("iothub-")) })
            let names = m.applicationProperties.keys.map { $0.lowercased() }
            #expect(Set(names).count == names.count, "case twins: \(names)")
            checked += 1
        }
        #expect(checked > 9_000, "about half of the rounds draw a plausible time: \(checked)")
    }
}
