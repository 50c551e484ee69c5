/// RFC 6455 framing for a byte stream carried in binary WebSocket messages (AMQP over WebSockets, subprotocol
/// `AMQPWSB10`). Pure: bytes in, frames and events out; the socket is someone else's.

/// The frame types of RFC 6455 §5.2.
public enum WebSocketOpcode: UInt8, Sendable {
    case continuation = 0x0, text = 0x1, binary = 0x2, close = 0x8, ping = 0x9, pong = 0xA

    var isControl: Bool { rawValue & 0x8 != 0 }
}

/// A framing violation by the peer; the connection must end (RFC 6455 §7.1.7), with `closeCode` in our Close.
public struct WebSocketProtocolError: Error, Sendable, Equatable, CustomStringConvertible {
    public let closeCode: UInt16
    public let description: String
    init(_ closeCode: UInt16, _ description: String) {
        self.closeCode = closeCode
        self.description = description
    }
}

public enum WebSocketFrameEncoder {
    /// One frame. `maskKey` is required from a client (every client frame is masked, §5.3) and absent from a server.
    public static func frame(_ opcode: WebSocketOpcode, payload: some Collection<UInt8>, maskKey: [UInt8]?) -> [UInt8] {
        var out: [UInt8] = []
        append(opcode, payload: payload, maskKey: maskKey, to: &out)
        return out
    }

    /// Appends one frame to `out`: the header, then the payload masked in a single pass.
    public static func append(_ opcode: WebSocketOpcode, payload: some Collection<UInt8>, maskKey: [UInt8]?, to out: inout [UInt8]) {
        let count = payload.count
        out.reserveCapacity(out.count + count + 14)
        out.append(0x80 | opcode.rawValue)  // FIN: we never fragment a message ourselves
        let maskBit: UInt8 = maskKey == nil ? 0 : 0x80
        switch count {
        case 0...125:
            out.append(maskBit | UInt8(count))
        case 126...0xFFFF:
            out.append(maskBit | 126)
            out.append(UInt8(count >> 8))
            out.append(UInt8(count & 0xFF))
        default:
            out.append(maskBit | 127)
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8((UInt64(count) >> UInt64(shift)) & 0xFF)) }
        }
        guard let maskKey else {
            out.append(contentsOf: payload)
            return
        }
        precondition(maskKey.count == 4, "a WebSocket mask key is 4 bytes")
        out.append(contentsOf: maskKey)
        let payloadStart = out.count
        out.append(contentsOf: payload)
        applyMask(&out, from: payloadStart, key: maskKey, offset: 0)
    }

    /// A Close frame with a status code and a short reason (truncated to fit a control frame's 125 bytes).
    public static func close(code: UInt16, reason: String, maskKey: [UInt8]?) -> [UInt8] {
        let reasonBytes = Array(reason.utf8.prefix(123))
        return frame(.close, payload: [UInt8(code >> 8), UInt8(code & 0xFF)] + reasonBytes, maskKey: maskKey)
    }
}

/// XORs `bytes[start...]` with the 4-byte `key`, the key's position starting at `offset` (a frame's payload may
/// arrive in pieces).
func applyMask(_ bytes: inout [UInt8], from start: Int, key: [UInt8], offset: Int) {
    guard start < bytes.count else { return }
    bytes.withUnsafeMutableBufferPointer { buf in
        var i = start
        var k = offset & 3
        // Byte-wise until the key is aligned, then eight bytes at a time.
        while i < buf.count && k != 0 {
            buf[i] ^= key[k]
            i += 1
            k = (k + 1) & 3
        }
        let word = UInt64(key[0]) | UInt64(key[1]) << 8 | UInt64(key[2]) << 16 | UInt64(key[3]) << 24
        let wide = word | word << 32
        let raw = UnsafeMutableRawPointer(buf.baseAddress!)
        while i + 8 <= buf.count {
            let v = raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            raw.storeBytes(of: v ^ wide.littleEndian, toByteOffset: i, as: UInt64.self)
            i += 8
        }
        while i < buf.count {
            buf[i] ^= key[k]
            i += 1
            k = (k + 1) & 3
        }
    }
}

/// Turns received bytes into the stream's data and the control frames that need an answer.
///
/// Binary messages are one byte stream (AMQP does not care where WebSocket messages begin or end), so data is
/// handed out as it arrives, even in the middle of a frame. Control frames are collected whole (≤ 125 bytes).
public struct WebSocketFrameDecoder: Sendable {
    public enum Event: Sendable, Equatable {
        /// Payload of binary (or continuation) frames.
        case data([UInt8])
        /// The peer's ping: answer with a pong carrying the same bytes.
        case ping([UInt8])
        case pong
        /// The peer's Close: code (nil when absent) and reason. Answer with a Close, then end.
        case close(code: UInt16?, reason: String)
    }

    /// A server's frames must not be masked; a client's must (RFC 6455 §5.1).
    let expectMasked: Bool
    private var header: [UInt8] = []
    private var opcode: WebSocketOpcode = .binary
    private var remaining: UInt64 = 0
    private var maskKey: [UInt8]?
    private var maskOffset = 0
    private var inFrame = false
    private var control: [UInt8] = []
    /// True while a fragmented binary message is open (continuation frames are allowed).
    private var inMessage = false
    private var closed = false

    public init(expectMasked: Bool) { self.expectMasked = expectMasked }

    /// Consumes `bytes`; throws on a framing violation.
    public mutating func feed(_ bytes: some Collection<UInt8>) throws(WebSocketProtocolError) -> [Event] {
        var events: [Event] = []
        var data: [UInt8] = []
        var index = bytes.startIndex
        while index != bytes.endIndex {
            if closed { break }  // nothing after a Close counts
            if !inFrame {
                header.append(bytes[index])
                index = bytes.index(after: index)
                guard let parsed = try parseHeader() else { continue }
                (opcode, remaining, maskKey) = parsed
                header.removeAll(keepingCapacity: true)
                maskOffset = 0
                inFrame = true
                control.removeAll(keepingCapacity: true)
            }
            let available = bytes.distance(from: index, to: bytes.endIndex)
            let take = Int(min(UInt64(available), remaining))
            let end = bytes.index(index, offsetBy: take)
            if opcode.isControl {
                let start = control.count
                control.append(contentsOf: bytes[index..<end])
                if let maskKey { applyMask(&control, from: start, key: maskKey, offset: maskOffset) }
            } else {
                let start = data.count
                data.append(contentsOf: bytes[index..<end])
                if let maskKey { applyMask(&data, from: start, key: maskKey, offset: maskOffset) }
            }
            if maskKey != nil { maskOffset = (maskOffset + take) & 3 }
            index = end
            remaining -= UInt64(take)
            if remaining == 0 {
                inFrame = false
                if opcode.isControl {
                    if !data.isEmpty { events.append(.data(data)); data = [] }
                    events.append(controlEvent())
                }
            }
        }
        if !data.isEmpty { events.append(.data(data)) }
        return events
    }

    private mutating func controlEvent() -> Event {
        switch opcode {
        case .ping: return .ping(control)
        case .pong: return .pong
        default:
            closed = true
            guard control.count >= 2 else { return .close(code: nil, reason: "") }
            return .close(code: UInt16(control[0]) << 8 | UInt16(control[1]), reason: String(decoding: control.dropFirst(2), as: UTF8.self))
        }
    }

    /// The frame header once complete; nil while more bytes are needed.
    private mutating func parseHeader() throws(WebSocketProtocolError) -> (WebSocketOpcode, UInt64, [UInt8]?)? {
        guard header.count >= 2 else { return nil }
        let b0 = header[0], b1 = header[1]
        let fin = b0 & 0x80 != 0
        guard b0 & 0x70 == 0 else { throw WebSocketProtocolError(1002, "reserved bits set (no extension was agreed)") }
        guard let op = WebSocketOpcode(rawValue: b0 & 0x0F) else {
            throw WebSocketProtocolError(1002, "unknown opcode \(b0 & 0x0F)")
        }
        let masked = b1 & 0x80 != 0
        guard masked == expectMasked else {
            throw WebSocketProtocolError(1002, expectMasked ? "a client frame arrived unmasked" : "a server frame arrived masked")
        }
        let short = UInt64(b1 & 0x7F)
        let lengthBytes = short == 126 ? 2 : short == 127 ? 8 : 0
        let needed = 2 + lengthBytes + (masked ? 4 : 0)
        guard header.count >= needed else { return nil }
        var length = short
        if lengthBytes > 0 {
            length = 0
            for i in 0..<lengthBytes { length = length << 8 | UInt64(header[2 + i]) }
            guard length >> 63 == 0 else { throw WebSocketProtocolError(1002, "frame length has its top bit set") }
        }
        if op.isControl {
            guard fin else { throw WebSocketProtocolError(1002, "a fragmented control frame") }
            guard length <= 125 else { throw WebSocketProtocolError(1002, "a control frame longer than 125 bytes") }
        } else {
            switch op {
            case .text: throw WebSocketProtocolError(1003, "a text frame (AMQP travels in binary frames)")
            case .continuation: guard inMessage else { throw WebSocketProtocolError(1002, "a continuation frame without a message") }
            default: guard !inMessage else { throw WebSocketProtocolError(1002, "a new message inside a fragmented one") }
            }
            inMessage = !fin
        }
        let key = masked ? Array(header[(2 + lengthBytes)..<(2 + lengthBytes + 4)]) : nil
        return (op, length, key)
    }
}
