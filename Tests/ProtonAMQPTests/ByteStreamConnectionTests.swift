@testable import ProtonAMQP
import Synchronization
import Testing

/// Two ends of an in-memory byte stream: what one writes, the other receives.
final class MemoryStream: AMQPByteStream, Sendable {
    private let state = Mutex<(sink: AMQPByteStreamSink?, early: [[UInt8]], peer: MemoryStream?, ended: Bool)>((nil, [], nil, false))

    static func pair() -> (MemoryStream, MemoryStream) {
        let a = MemoryStream(), b = MemoryStream()
        a.state.withLock { $0.peer = b }
        b.state.withLock { $0.peer = a }
        return (a, b)
    }

    func start(_ sink: AMQPByteStreamSink) {
        let early = state.withLock { s -> [[UInt8]] in
            s.sink = sink
            defer { s.early = [] }
            return s.early
        }
        for bytes in early { sink.received(bytes) }
    }

    func write(_ bytes: [UInt8]) { state.withLock { $0.peer }?.deliver(bytes) }
    func close() { end() }
    func abort() { end() }

    private func deliver(_ bytes: [UInt8]) {
        let sink = state.withLock { s -> AMQPByteStreamSink? in
            if s.sink == nil { s.early.append(bytes) }
            return s.sink
        }
        sink?.received(bytes)
    }

    private func end() {
        let (mine, peer) = state.withLock { s -> (AMQPByteStreamSink?, MemoryStream?) in
            guard !s.ended else { return (nil, nil) }
            s.ended = true
            return (s.sink, s.peer)
        }
        mine?.ended(nil)
        peer?.end()
    }
}

final class RecordingHandler: AMQPConnectionHandler, Sendable {
    let events = Mutex<[String]>([])
    func handle(_ event: AMQPEvent, on connection: AMQPConnection) {
        let name: String = switch event {
        case .connectionOpened: "opened"
        case .transportClosed(let e): "closed \(e?.message ?? "")"
        default: "other"
        }
        events.withLock { $0.append(name) }
    }
}

@Suite("AMQP over a byte stream of our own (pn_connection_driver)")
struct ByteStreamConnectionTests {
    /// The connection opens over the stream, and Proton's tick runs on the driver: the client sends heartbeats at
    /// half the idle timeout the server advertises, and neither side times out while idle.
    @Test func opensAndKeepsAliveWithHeartbeats() async throws {
        let reactor = AMQPReactor()
        let (clientEnd, serverEnd) = MemoryStream.pair()
        var server = AMQPListenerConfiguration(tls: nil)
        server.idleTimeoutMilliseconds = 400
        server.saslMechanisms = []
        let serverHandler = RecordingHandler()
        reactor.accept(stream: serverEnd, configuration: server, makeHandler: { serverHandler })
        let trace = Mutex<[String]>([])
        var client = AMQPClientConfiguration(tls: nil)
        client.idleTimeoutMilliseconds = 400
        client.frameTrace = { line in trace.withLock { $0.append(line) } }
        let clientHandler = RecordingHandler()
        let ref = reactor.connect(stream: clientEnd, host: "peer", configuration: client, handler: clientHandler)
        try await Task.sleep(for: .milliseconds(1500))
        #expect(clientHandler.events.withLock { $0 } == ["opened"], "open and still open after 1.5 s idle")
        #expect(serverHandler.events.withLock { $0 } == ["opened"])
        let heartbeats = trace.withLock { $0.filter { $0.contains("->") && $0.contains("EMPTY FRAME") }.count }
        #expect(heartbeats >= 4, "\(heartbeats) heartbeats in 1.5 s at a 400 ms idle timeout")
        // Closing ends both sides and frees the drivers.
        ref.close()
        try await Task.sleep(for: .milliseconds(300))
        #expect(clientHandler.events.withLock { $0.last?.hasPrefix("closed") } == true)
        #expect(serverHandler.events.withLock { $0.last?.hasPrefix("closed") } == true)
        await reactor.shutdown()
    }
}
