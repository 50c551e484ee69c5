internal import CProton

/// Encodes and decodes `AMQPMessage` bytes with Proton's codec (`pn_data_t`), section by section.
public enum AMQPMessageCodec {
    /// The AMQP encoding of `message`.
    public static func encode(_ message: AMQPMessage) -> [UInt8] {
        let data = pn_data(16)!
        defer { pn_data_free(data) }
        for section in message.sections { ProtonData.put(section, into: data) }
        return encodedBytes(of: data)
    }

    /// Decodes a complete message; sections may come in any order.
    public static func decode(_ bytes: [UInt8]) throws(AMQPError) -> AMQPMessage {
        try bytes.withUnsafeBufferPointer { buf throws(AMQPError) in try decode(buf) }
    }

    public static func decode(_ buf: UnsafeBufferPointer<UInt8>) throws(AMQPError) -> AMQPMessage {
        let data = pn_data(16)!
        defer { pn_data_free(data) }
        var message = AMQPMessage()
        var offset = 0
        var sawSection = false
        while offset < buf.count {
            pn_data_clear(data)
            let consumed = buf.baseAddress!.advanced(by: offset).withMemoryRebound(to: CChar.self, capacity: buf.count - offset) {
                pn_data_decode(data, $0, buf.count - offset)
            }
            guard consumed > 0 else { throw AMQPError(.decode, "undecodable bytes at offset \(offset)") }
            offset += consumed
            pn_data_rewind(data)
            guard pn_data_next(data), case .described(let descriptor, let value) = ProtonData.get(from: data) else {
                throw AMQPError(.decode, "message section at offset \(offset - consumed) is not a described type")
            }
            let code: UInt64
            switch descriptor {
            case .ulong(let c): code = c
            case .symbol(let name): code = symbolicSectionCodes[name] ?? 0
            default: throw AMQPError(.decode, "bad section descriptor")
            }
            try message.apply(section: code, value: value)
            sawSection = true
        }
        guard sawSection else { throw AMQPError(.decode, "empty message") }
        return message
    }

    /// The encoding of a single value (used by tests and by the emulator to size annotations).
    public static func encode(value: AMQPValue) -> [UInt8] {
        let data = pn_data(16)!
        defer { pn_data_free(data) }
        ProtonData.put(value, into: data)
        return encodedBytes(of: data)
    }

    private static func encodedBytes(of data: OpaquePointer) -> [UInt8] {
        var capacity = max(256, pn_data_encoded_size(data))
        while true {
            var out = [UInt8](repeating: 0, count: capacity)
            let n = out.withUnsafeMutableBufferPointer { buf in
                buf.withMemoryRebound(to: CChar.self) { pn_data_encode(data, $0.baseAddress, capacity) }
            }
            if n >= 0 {
                out.removeSubrange(n...)
                return out
            }
            capacity *= 2  // PN_OVERFLOW
        }
    }

    private static let symbolicSectionCodes: [String: UInt64] = [
        "amqp:header:list": 0x70, "amqp:delivery-annotations:map": 0x71, "amqp:message-annotations:map": 0x72,
        "amqp:properties:list": 0x73, "amqp:application-properties:map": 0x74, "amqp:data:binary": 0x75,
        "amqp:amqp-sequence:list": 0x76, "amqp:amqp-value:*": 0x77, "amqp:footer:map": 0x78,
    ]
}
