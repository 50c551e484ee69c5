import FieldgateCore
import IoTHub
import Testing

@Suite("SAS tokens")
struct SASTokenTests {
    let key = "ZW11bGF0b3ItdGVzdC1rZXktMDEyMzQ1Njc4OWFiY2Q="

    @Test("signatures match the worked vectors of docs/iothub-protocol.md §2.1 — sr is signed as sent",
          arguments: [
            ("myhub.azure-devices.net/devices/dev1", "dJcc9OzHSaSFdPdoZ1eZW/o1eVqHifQ8gLYIITR2XrU="),
            ("myhub.azure-devices.net%2Fdevices%2Fdev1", "1NFFw2TSb0IArYP+2YH4oNPhKFiqtE4XQj4U2i7sV1c="),
            ("myhub.azure-devices.net%2fdevices%2fdev1", "hMSxz8KjvSvQ6SQbJYjBqQEK5UygPxfhGfCJvF9ns1g="),
          ])
    func vectors(sr: String, expected: String) throws {
        #expect(try SASToken.sign(resource: sr, expiry: 1_700_000_000, key: key) == expected)
    }

    @Test("DPS group key derivation matches the vector of §2.4")
    func derivedKey() throws {
        #expect(try deriveDeviceKey(groupKey: key, registrationID: "dev1") == "n/hgbd3XcRn6lDYh6+JhnrDxuAMBHL2knCD7ndWRIxw=")
    }

    @Test("generate → parse → verify round trip; field order and name case do not matter")
    func roundTrip() throws {
        let token = try SASToken.generate(resourceURI: "hub.local/devices/d+1", key: key, expiry: 1_800_000_000, keyName: "device")
        let parsed = try SASToken.parse(token)
        #expect(parsed.decodedResource == "hub.local/devices/d+1")  // '+' is a legal id character, never a space
        #expect(parsed.keyName == "device")
        #expect(parsed.isSigned(with: key))
        #expect(!parsed.isSigned(with: generateSymmetricKey()))
        let fields = token.dropFirst("SharedAccessSignature ".count).split(separator: "&").reversed().map { $0.uppercased().prefix(3).lowercased() + $0.dropFirst(3) }
        let reordered = try SASToken.parse("SharedAccessSignature " + fields.joined(separator: "&"))
        #expect(reordered.isSigned(with: key))
    }

    @Test("malformed tokens are refused", arguments: [
        "", "SharedAccessSignature", "Bearer x", "SharedAccessSignature sr=a&sig=b", "SharedAccessSignature sr=a&sig=b&se=soon",
        "SharedAccessSignature sr=a&sr=b&sig=c&se=1", "SharedAccessSignature sr=a&sig=%zz&se=1", "SharedAccessSignature  sr=a&sig=b&se=1 extra",
    ])
    func malformed(token: String) {
        #expect(throws: IoTHubError.self) { try SASToken.parse(token) }
    }
}

@Suite("addresses and twin rules")
struct AddressAndTwinRuleTests {
    @Test("every SDK's address form parses to the same identity and endpoint", arguments: [
        ("amqps://hub.local/devices/dev1/messages/events", DeviceEndpoint.events),
        ("amqps://hub.local:5671/devices/dev1/messages/deviceBound", .deviceBound),
        ("/devices/dev1/messages/devicebound", .deviceBound),
        ("/devices/dev1/methods/devicebound", .methods),
        ("amqps://hub.local:5671/devices/dev1/methods/deviceBound", .methods),
        ("/devices/dev1/twin", .twin),
    ])
    func addresses(address: String, endpoint: DeviceEndpoint) throws {
        let a = try #require(DeviceAddress(parsing: address))
        #expect(a.deviceID == "dev1")
        #expect(a.endpoint == endpoint)
    }

    @Test("ids are URL-decoded without turning + into a space; junk is refused")
    func addressEdgeCases() {
        #expect(DeviceAddress(parsing: "/devices/a%2Bb%20c/twin")?.deviceID == "a+b c")
        #expect(DeviceAddress(parsing: "/devices/a+b/twin")?.deviceID == "a+b")
        #expect(DeviceAddress(parsing: "/devices/m/modules/x/twin")?.moduleID == "x")
        for junk in ["", "/devices", "/devices//twin", "/devices/d/messages", "/things/d/twin", "$cbs", "/devices/d/twin/extra"] {
            #expect(DeviceAddress(parsing: junk) == nil, "\(junk)")
        }
    }

    @Test("twin rules: arrays, depth > 5, bad keys, long strings, huge ints and > 8 KB are refused; null deletes")
    func twinRules() throws {
        try TwinRules.validatePatch(["a": ["b": ["c": ["d": ["e": 1]]]], "x": .null, "s": "ok"])
        let bad: [JSONValue] = [
            .array([1]), ["a": .array([1])], ["a": ["b": ["c": ["d": ["e": ["f": 1]]]]]], ["a.b": 1], ["$x": ["y": .array([])]],
            ["a b": 1], ["k": .string(String(repeating: "x", count: 513))], ["n": .int(4_503_599_627_370_496)],
            .object(Dictionary(uniqueKeysWithValues: (0..<200).map { ("key\($0)", JSONValue.string(String(repeating: "v", count: 40))) })),
        ]
        for patch in bad { #expect(throws: IoTHubError.self, "\(patch.serialized.prefix(60))") { try TwinRules.validatePatch(patch) } }
        #expect(TwinRules.merge(["a": ["b": .null, "c": 2]], into: ["a": ["b": 1], "z": 0]) == ["a": ["c": 2], "z": 0])
    }

    @Test("connection strings parse in any order and print back")
    func connectionStrings() throws {
        let c = try ConnectionString(parsing: "SharedAccessKey=abc=;DeviceId=d1;HostName=h.local")
        #expect(c.hostName == "h.local" && c.deviceID == "d1" && c.sharedAccessKey == "abc=")
        #expect(c.description == "HostName=h.local;DeviceId=d1;SharedAccessKey=abc=")
        #expect(throws: IoTHubError.self) { try ConnectionString(parsing: "HostName=h") }
    }
}
