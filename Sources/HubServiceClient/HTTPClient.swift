import FieldgateCore
import NIOCore
import NIOHTTP1
import NIOPosix

/// A minimal HTTP/1.1 client for fieldgate-hub's service API: one request per connection, JSON in and out.
public struct HubServiceClient: Sendable {
    public var host: String
    public var port: Int
    /// `SharedAccessSignature …&skn=<policy>`, or nil for a hub run with `--open-service-api`.
    public var authorization: String?

    public init(host: String, port: Int, authorization: String?) {
        self.host = host
        self.port = port
        self.authorization = authorization
    }

    public struct Response: Sendable {
        public var status: Int
        public var body: [UInt8]
        public var json: JSONValue? { JSONValue.parse(body) }
        public var text: String { String(decoding: body, as: UTF8.self) }
    }

    public func request(_ method: String, _ path: String, body: JSONValue? = nil) async throws -> Response {
        let payload = body?.bytes ?? []
        let collector = ResponseCollector()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(5))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(collector)
                }
            }
            .connect(host: host, port: port).get()
        var head = HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: method), uri: path)
        head.headers.add(name: "Host", value: "\(host):\(port)")
        head.headers.add(name: "Connection", value: "close")
        head.headers.add(name: "Content-Length", value: String(payload.count))
        if body != nil { head.headers.add(name: "Content-Type", value: "application/json") }
        if let authorization { head.headers.add(name: "Authorization", value: authorization) }
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        if !payload.isEmpty { channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: payload))), promise: nil) }
        try await channel.writeAndFlush(HTTPClientRequestPart.end(nil)).get()
        let response = try await collector.promise(on: channel.eventLoop).get()
        try? await channel.close().get()
        return response
    }
}

final class ResponseCollector: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked: used on its channel's event loop only.
    typealias InboundIn = HTTPClientResponsePart
    private var status = 0
    private var body: [UInt8] = []
    private var result: EventLoopPromise<HubServiceClient.Response>?
    private var finished: Result<HubServiceClient.Response, any Error>?

    func promise(on loop: any EventLoop) -> EventLoopFuture<HubServiceClient.Response> {
        loop.submit {
            let p = loop.makePromise(of: HubServiceClient.Response.self)
            if let finished = self.finished { p.completeWith(finished) } else { self.result = p }
            return p.futureResult
        }.flatMap { $0 }
    }

    private func finish(_ r: Result<HubServiceClient.Response, any Error>) {
        guard finished == nil else { return }
        finished = r
        result?.completeWith(r)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): status = Int(head.status.code)
        case .body(let buf): body.append(contentsOf: buf.readableBytesView)
        case .end: finish(.success(.init(status: status, body: body)))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish(.failure(ChannelError.eof))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        finish(.failure(error))
        context.close(promise: nil)
    }
}
