import ProtonAMQP
import Testing

@Suite("AMQP writer")
struct AMQPWriterTests {
    /// Lists and maps with patched sizes, 8- and 32-bit strings, symbols and binaries, nulls: Proton's decoder reads
    /// what the writer wrote as the same message the general encoder would describe.
    @Test func writtenSectionsDecodeWithProton() throws {
        let long = String(repeating: "ü", count: 300)  // 600 bytes: the 32-bit string form
        let body = (0..<70_000).map { UInt8(truncatingIfNeeded: $0) }
        let written = AMQPWriter.bytes(capacity: 80_000) { w in
            w.descriptor(0x73)
            let list = w.beginList()
            w.string("id-1")
            for _ in 0..<5 { w.null() }
            w.symbol("application/json")
            w.symbol(String(repeating: "s", count: 256))
            w.end(list, count: 8)
            w.descriptor(0x74)
            let map = w.beginMap()
            w.string("short")
            w.string(long)
            w.string("time")
            w.string(count: 3) { $0.copyMemory(from: Array("abc".utf8), byteCount: 3) }
            w.end(map, count: 4)
            w.descriptor(0x75)
            w.binaryHeader(count: body.count)
            body.withUnsafeBytes { w.raw($0) }
        }
        let decoded = try AMQPMessageCodec.decode(written)

        var m = AMQPMessage(data: body)
        m.messageID = .string("id-1")
        m.contentType = "application/json"
        m.contentEncoding = String(repeating: "s", count: 256)
        m.applicationProperties = ["short": .string(long), "time": .string("abc")]
        #expect(decoded == m)

        let small = AMQPWriter.bytes(capacity: 8) { w in
            w.descriptor(0x75)
            ([1, 2, 3] as [UInt8]).withUnsafeBytes { w.binary($0) }
        }
        #expect(small == [0x00, 0x53, 0x75, 0xA0, 3, 1, 2, 3])
    }
}
