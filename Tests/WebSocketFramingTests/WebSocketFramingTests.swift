import Testing
@testable import WebSocketFraming

@Suite struct WebSocketFramingTests {
    /// RFC 6455 §1.3's worked example.
    @Test func acceptValueMatchesTheRFCExample() {
        #expect(WebSocketClientHandshake.acceptValue(for: "dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    }

    @Test func handshakeRequestAndAcceptedResponse() throws {
        var h = WebSocketClientHandshake(host: "hub.example", path: "/$iothub/websocket", subprotocol: "AMQPWSB10",
                                         keyBytes: Array("the sample nonce".utf8), userAgent: "test")
        let request = String(decoding: h.request, as: UTF8.self)
        #expect(request.hasPrefix("GET /$iothub/websocket HTTP/1.1\r\nHost: hub.example\r\n"))
        #expect(request.contains("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"))
        #expect(request.contains("Sec-WebSocket-Protocol: AMQPWSB10\r\n"))
        #expect(request.hasSuffix("\r\n\r\n"))
        let response = "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: AMQPWSB10\r\n\r\n"
        let bytes = Array(response.utf8) + [0x82, 0x01, 0x41]
        // In two pieces: the head may arrive split anywhere.
        #expect(try h.receive(bytes[0..<30]) == .needMore)
        #expect(try h.receive(bytes[30...]) == .upgraded(leftover: [0x82, 0x01, 0x41]))
    }

    @Test func refusalsSayWhy() {
        func outcome(_ response: String) -> WebSocketClientHandshake.Refused? {
            var h = WebSocketClientHandshake(host: "h", path: "/p", subprotocol: "AMQPWSB10", keyBytes: Array("the sample nonce".utf8), userAgent: "t")
            do { _ = try h.receive(Array(response.utf8)); return nil } catch { return error }
        }
        #expect(outcome("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")?.status == 400)
        let noProtocol = outcome("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
        #expect(noProtocol?.description.contains("subprotocol") == true)
        let badAccept = outcome("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAA\r\nSec-WebSocket-Protocol: AMQPWSB10\r\n\r\n")
        #expect(badAccept?.description.contains("Accept") == true)
        #expect(outcome("SSH-2.0-OpenSSH\r\n\r\n")?.description.contains("HTTP") == true)
    }

    @Test func maskedFramesRoundTripThroughAServerDecoder() throws {
        for size in [0, 1, 7, 125, 126, 65535, 65536, 200_000] {
            let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            let frame = WebSocketFrameEncoder.frame(.binary, payload: payload, maskKey: [0x37, 0xfa, 0x21, 0x3d])
            if size > 0 { #expect(Array(frame.suffix(size)) != payload) }  // masked on the wire
            var decoder = WebSocketFrameDecoder(expectMasked: true)
            // Byte-sized and odd-sized pieces: the mask's phase must carry across them.
            var got: [UInt8] = []
            var i = 0
            var step = 1
            while i < frame.count {
                let end = min(frame.count, i + step)
                for case .data(let d) in try decoder.feed(frame[i..<end]) { got += d }
                i = end
                step = step * 3 % 1021 + 1
            }
            #expect(got == payload, "size \(size)")
        }
    }

    @Test func controlFramesAndTheirAnswers() throws {
        var decoder = WebSocketFrameDecoder(expectMasked: false)
        let bytes = WebSocketFrameEncoder.frame(.binary, payload: [1, 2], maskKey: nil)
            + WebSocketFrameEncoder.frame(.ping, payload: [9], maskKey: nil)
            + WebSocketFrameEncoder.frame(.pong, payload: [], maskKey: nil)
            + WebSocketFrameEncoder.close(code: 1001, reason: "going away", maskKey: nil)
            + WebSocketFrameEncoder.frame(.binary, payload: [3], maskKey: nil)  // after Close: ignored
        #expect(try decoder.feed(bytes) == [.data([1, 2]), .ping([9]), .pong, .close(code: 1001, reason: "going away")])
    }

    @Test func fragmentedBinaryMessagesAreOneStream() throws {
        var decoder = WebSocketFrameDecoder(expectMasked: false)
        let first: [UInt8] = [0x02, 0x02, 1, 2]  // binary, not FIN
        let ping: [UInt8] = [0x89, 0x00]  // a control frame may sit between fragments
        let last: [UInt8] = [0x80, 0x01, 3]  // continuation, FIN
        #expect(try decoder.feed(first + ping + last) == [.data([1, 2]), .ping([]), .data([3])])
    }

    @Test func violationsEndTheStream() {
        func violation(_ bytes: [UInt8], masked: Bool = false) -> WebSocketProtocolError? {
            var decoder = WebSocketFrameDecoder(expectMasked: masked)
            do { _ = try decoder.feed(bytes); return nil } catch { return error }
        }
        #expect(violation([0x81, 0x01, 0x41])?.closeCode == 1003)  // text
        #expect(violation([0x82, 0x81, 0, 0, 0, 0, 0x41])?.closeCode == 1002)  // masked from a server
        #expect(violation([0x82, 0x01, 0x41], masked: true)?.closeCode == 1002)  // unmasked from a client
        #expect(violation([0x09, 0x00])?.closeCode == 1002)  // fragmented ping
        #expect(violation([0x89, 126, 0, 126])?.closeCode == 1002)  // ping > 125 bytes
        #expect(violation([0x80, 0x00])?.closeCode == 1002)  // continuation without a message
        #expect(violation([0xC2, 0x00])?.closeCode == 1002)  // RSV1 without an extension
        #expect(violation([0x83, 0x00])?.closeCode == 1002)  // reserved opcode
    }
}
