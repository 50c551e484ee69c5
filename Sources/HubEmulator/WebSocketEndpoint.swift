import HTTPTypes
import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOSSL
import NIOWebSocket
import ProtonAMQP
import Synchronization

/// AMQP over WebSockets as IoT Hub serves it: on the HTTPS port (443 at the real hub), path `/$iothub/websocket`,
/// subprotocol `AMQPWSB10`, AMQP frames in binary messages. Other paths and subprotocols are not upgraded; they get
/// the 400 the hub answers (docs/hub-fidelity.md).
enum AMQPWebSocketEndpoint {
    static let path = "/$iothub/websocket"
    static let subprotocol = "AMQPWSB10"

    /// The upgrade decision: the handler bridges the WebSocket to a Proton connection on `reactor`.
    static func shouldUpgrade(
        _ request: HTTPRequest, accepting: Bool, reactor: AMQPReactor, configuration: AMQPListenerConfiguration,
        makeHandler: @escaping @Sendable () -> any AMQPConnectionHandler
    ) -> ShouldUpgradeResult<WebSocketDataHandler<HTTP1WebSocketUpgradeChannel.Context>> {
        let requestPath = request.path.map { $0.split(separator: "?", maxSplits: 1).first.map(String.init) ?? $0 } ?? ""
        let offered = request.headerFields[values: .secWebSocketProtocol]
            .flatMap { $0.split(separator: ",") }
            .map { String($0.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed()) }
        guard accepting, requestPath == path, offered.contains(subprotocol) else { return .dontUpgrade }
        return .upgrade([.secWebSocketProtocol: subprotocol]) { inbound, outbound, _ in
            let stream = ServerWebSocketStream()
            reactor.accept(stream: stream, configuration: configuration, makeHandler: makeHandler)
            await stream.run(inbound: inbound, outbound: outbound)
        }
    }

    /// What a request that was not upgraded gets when it names the WebSocket path or asks for an upgrade: the
    /// real hub answers both with 400.
    struct RefusalMiddleware<Context: RequestContext>: RouterMiddleware {
        func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
            if request.uri.path == AMQPWebSocketEndpoint.path || request.headers[.upgrade] != nil {
                var headers = HTTPFields()
                headers[.contentType] = "application/json; charset=utf-8"
                let why = request.headers[.upgrade] == nil
                    ? "AMQP over WebSockets needs a WebSocket upgrade"
                    : "WebSocket upgrades are served at \(AMQPWebSocketEndpoint.path) with subprotocol \(AMQPWebSocketEndpoint.subprotocol)"
                return Response(status: .badRequest, headers: headers,
                                body: .init(byteBuffer: ByteBuffer(string: #"{"Message":"ErrorCode:BadRequest;\#(why)"}"#)))
            }
            return try await next(request, context)
        }
    }
}

/// The certificate chains devices presented at the HTTPS port's TLS, by their leaf certificate. IoT Hub takes X.509
/// devices over WebSockets as over AMQPS (the handshake asks for a certificate without requiring one); Hummingbird's
/// verification callback sees a handshake's whole chain but not its connection, and the upgrade sees the
/// connection's leaf certificate only, so the chain is looked up by its leaf.
final class PresentedChains: Sendable {
    private let chains = Mutex<[[UInt8]: [[UInt8]]]>([:])

    /// From the verification callback: any chain passes the handshake; which device it proves is decided per link.
    func remember(_ chain: [[UInt8]]) {
        guard let leaf = chain.first else { return }
        chains.withLock { c in
            // A bound: one entry goes for each new one beyond it (a device presents its chain again when it reconnects).
            if c.count >= 4096, c[leaf] == nil { c.remove(at: c.startIndex) }
            c[leaf] = chain
        }
    }

    /// At the upgrade, on the channel's event loop: what this connection presented, nil when nothing.
    func chain(of channel: any Channel) -> ClientCertificateChain? {
        guard let ssl = try? channel.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self),
              let leaf = try? ssl.peerCertificate?.toDERBytes() else { return nil }
        return ClientCertificateChain(certificates: chains.withLock { $0[leaf] } ?? [leaf])
    }
}

/// One upgraded WebSocket as Proton's byte stream: binary frames in, binary frames out.
final class ServerWebSocketStream: AMQPByteStream {
    private let outgoing: AsyncStream<[UInt8]>
    private let outgoingContinuation: AsyncStream<[UInt8]>.Continuation
    private let sink = Mutex<(sink: AMQPByteStreamSink?, waiter: CheckedContinuation<AMQPByteStreamSink, Never>?)>((nil, nil))

    init() {
        (outgoing, outgoingContinuation) = AsyncStream.makeStream()
    }

    func start(_ sink: AMQPByteStreamSink) {
        let waiter = self.sink.withLock { s -> CheckedContinuation<AMQPByteStreamSink, Never>? in
            s.sink = sink
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume(returning: sink)
    }

    func write(_ bytes: [UInt8]) { outgoingContinuation.yield(bytes) }
    func close() { outgoingContinuation.finish() }
    func abort() { outgoingContinuation.finish() }

    private func awaitSink() async -> AMQPByteStreamSink {
        await withCheckedContinuation { cont in
            let ready = sink.withLock { s -> AMQPByteStreamSink? in
                if let sink = s.sink { return sink }
                s.waiter = cont
                return nil
            }
            if let ready { cont.resume(returning: ready) }
        }
    }

    /// Pumps both ways until either side ends; returning closes the WebSocket.
    func run(inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter) async {
        let sink = await awaitSink()
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                do {
                    for try await frame in inbound {
                        guard frame.opcode != .text else {
                            sink.ended(AMQPError(.transport, "a text frame on an AMQP WebSocket"))
                            return
                        }
                        sink.received(Array(buffer: frame.data))
                    }
                    sink.ended(nil)
                } catch {
                    sink.ended(AMQPError(.transport, "WebSocket: \(error)"))
                }
            }
            group.addTask { [outgoing] in
                for await chunk in outgoing {
                    do { try await outbound.write(.binary(ByteBuffer(bytes: chunk))) } catch { return }
                }
                // The AMQP side is done (closed, or cut at a hub stop): close the WebSocket, which ends the inbound
                // side once the client answers (the inbound stream does not end on cancellation alone).
                try? await outbound.close(.normalClosure, reason: nil)
            }
            await group.next()
            group.cancelAll()
            outgoingContinuation.finish()
        }
    }
}
