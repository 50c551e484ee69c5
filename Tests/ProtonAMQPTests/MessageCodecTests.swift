import ProtonAMQP
import Testing

@Suite("AMQP message codec")
struct MessageCodecTests {
    @Test("every section and value type survives a round trip with its exact AMQP type")
    func roundTrip() throws {
        var m = AMQPMessage(data: [1, 2, 3])
        m.durable = true
        m.ttlMilliseconds = 60_000
        m.messageID = .ulong(7)
        m.correlationID = .uuid(AMQPUUID.random())
        m.to = "/devices/d/messages/deviceBound"
        m.userID = Array("hub".utf8)
        m.contentType = "application/json"
        m.contentEncoding = "utf-8"
        m.absoluteExpiryTime = 1_700_000_000_123
        m.creationTime = 1_700_000_000_000
        m.messageAnnotations = [.symbol("x-opt-sequence-number"): .ulong(9), .symbol("iothub-deliverycount"): .ubyte(3),
                                .symbol("t"): .timestamp(5), .symbol("nested"): .map([.string("k"): .list([.int(-1), .long(2), .double(1.5), .null, .bool(false)])])]
        m.applicationProperties = ["IoThub-status": .int(200), "s": .string("ü"), "bin": .binary([0, 255]),
                                   "arr": .array([.symbol("MSSBCBS"), .symbol("ANONYMOUS")]), "short": .short(-3), "f": .float(0.5)]
        let decoded = try AMQPMessageCodec.decode(AMQPMessageCodec.encode(m))
        #expect(decoded == m)
    }

    @Test("sections are accepted in any order (the Azure C SDK writes annotations after properties)")
    func anyOrder() throws {
        var props = AMQPMessage()
        props.messageID = .string("id")
        var app = AMQPMessage()
        app.applicationProperties = ["k": "v"]
        var ann = AMQPMessage()
        ann.messageAnnotations = [.symbol("a"): .string("b")]
        let data = AMQPMessage(data: [42])
        let bytes = [props, app, ann, data].flatMap { AMQPMessageCodec.encode($0) }
        let m = try AMQPMessageCodec.decode(bytes)
        #expect(m.messageID == .string("id"))
        #expect(m.applicationProperties["k"] == .string("v"))
        #expect(m.messageAnnotations[.symbol("a")] == .string("b"))
        #expect(m.body == .data([[42]]))
    }

    @Test("several data sections stay separate; amqp-value bodies too")
    func bodies() throws {
        var m = AMQPMessage()
        m.body = .data([[1], [2, 3]])
        #expect(try AMQPMessageCodec.decode(AMQPMessageCodec.encode(m)).body == .data([[1], [2, 3]]))
        m.body = .value(.string("SharedAccessSignature sr=x"))
        #expect(try AMQPMessageCodec.decode(AMQPMessageCodec.encode(m)).body == .value(.string("SharedAccessSignature sr=x")))
    }

    @Test("garbage, empty input, non-section values and unknown descriptors are decode errors, not crashes",
          arguments: [[], [0xFF], [0x00, 0x53, 0x75], [0x40], [0xA1, 0x01, 0x41], [0x00, 0x53, 0x99, 0x40], [0x00, 0x53, 0x73, 0x45, 0x00]] as [[UInt8]])
    func garbage(bytes: [UInt8]) {
        #expect(throws: AMQPError.self) { try AMQPMessageCodec.decode(bytes) }
    }

    @Test("uuid strings parse and print canonically")
    func uuids() throws {
        let u = try #require(AMQPUUID(string: "0f8fad5b-d9cb-469f-a165-70867728950e"))
        #expect(u.description == "0f8fad5b-d9cb-469f-a165-70867728950e")
        #expect(AMQPUUID(string: "0f8fad5bd9cb469fa16570867728950e") == nil)
        #expect(AMQPUUID.random().bytes[6] >> 4 == 4)
    }
}
