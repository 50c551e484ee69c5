internal import CCurlTunnel
import FieldgateCore

#if canImport(Glibc)
import Glibc
#endif

/// How HTTPS requests reach IoT Hub and its storage: the TLS and proxy rules of the WebSocket tunnel.
public struct HTTPSSettings: Sendable, Equatable {
    /// PEM bundle of trusted CAs; nil: the system's.
    public var caFile: String?
    /// Verify the server's certificate and name. Turning it off is for tests only.
    public var verifyPeer = true
    public var proxy: ProxySetting = .environment
    /// A client certificate (PEM) and its key, presented at TLS (X.509 authentication); nil: none.
    public var clientCertificateFile: String?
    public var clientKeyFile: String?
    /// Requests to this host connect to `connectAddress` instead of resolving it (TLS still checks the name).
    public var connectHost: String?
    public var connectAddress: String?
    /// The whole request, connect and transfer. Default: 60 s.
    public var timeoutMilliseconds = 60_000
    /// Longer responses fail. Default: 1 MiB (IoT Hub's answers are small).
    public var maxResponseBytes = 1 << 20

    public init() {}
}

public struct HTTPSResponse: Sendable {
    public var status: Int
    public var body: [UInt8]
    /// The server's Retry-After, in seconds; nil when it sent none.
    public var retryAfterSeconds: Int?
    public var json: JSONValue? { JSONValue.parse(body) }
    public var text: String { String(decoding: body, as: UTF8.self) }
}

/// Why an HTTPS request brought no response (a response with any status is not an error here).
public struct HTTPSError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

/// Cuts the requests it is given to (from any thread): they end at libcurl's next progress check, well within a
/// second, instead of at their timeout.
public final class HTTPSCancellation: @unchecked Sendable {
    // @unchecked: the flag is written once (to 1) and read by libcurl's progress callback; a torn read is impossible
    // for an aligned Int32, and a late one only delays the cut.
    let flag: UnsafeMutablePointer<Int32>
    public init() {
        flag = .allocate(capacity: 1)
        flag.initialize(to: 0)
    }
    public func cancel() { flag.pointee = 1 }
    public var isCancelled: Bool { flag.pointee != 0 }
    deinit { flag.deallocate() }
}

/// One HTTPS request through libcurl (the library the Azure C SDK uses for HTTP), OpenSSL underneath as for AMQPS.
/// Blocking: call it off the cooperative pool.
public enum HTTPSClient {
    public static func perform(_ method: String, _ url: String, headers: [(String, String)] = [], body: [UInt8]? = nil,
                               settings: HTTPSSettings, cancellation: HTTPSCancellation? = nil) -> Result<HTTPSResponse, HTTPSError> {
        Self.globalInit
        let strings = CStringArena()
        let headerPointers = headers.map { strings.copy("\($0.0): \($0.1)") }
        var error = [CChar](repeating: 0, count: 512)
        var response = fg_http_response()
        let rc: Int32 = (body ?? []).withUnsafeBytes { b in
            headerPointers.withUnsafeBufferPointer { h in
                var request = Self.request(method, url, settings: settings, strings: strings)
                request.headers = h.baseAddress
                request.header_count = h.count
                request.body = body == nil ? nil : b.baseAddress
                request.body_len = b.count
                request.max_response_bytes = settings.maxResponseBytes
                request.cancel = cancellation.map { UnsafePointer($0.flag) }
                return withExtendedLifetime((strings, cancellation)) { fg_http_perform(&request, &response, &error, error.count) }
            }
        }
        guard rc == 0 else { return .failure(HTTPSError(message: "\(method) \(redacted(url)): \(cString(error))")) }
        defer { fg_http_response_free(&response) }
        let bytes = response.body.map { Array(UnsafeBufferPointer(start: $0, count: response.body_len)) } ?? []
        return .success(HTTPSResponse(status: response.status, body: bytes,
                                      retryAfterSeconds: response.retry_after_seconds > 0 ? response.retry_after_seconds : nil))
    }

    /// GETs an https `url` into `path`, resuming a partial file left there by an earlier try (Range request); the
    /// file never grows past `maxBytes`. Returns the HTTP status (206 or 200 when the body came, 416 when the file
    /// was complete already) and the file's size. Blocking: call it off the cooperative pool.
    public static func download(_ url: String, to path: String, maxBytes: Int, settings: HTTPSSettings) -> Result<(status: Int, bytes: Int), HTTPSError> {
        Self.globalInit
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0o640)
        guard fd >= 0 else { return .failure(HTTPSError(message: "cannot open \(path): \(String(cString: strerror(errno)))")) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { return .failure(HTTPSError(message: "cannot stat \(path): \(String(cString: strerror(errno)))")) }
        let strings = CStringArena()
        var error = [CChar](repeating: 0, count: 512)
        var status = 0, total: Int64 = 0
        var request = Self.request("GET", url, settings: settings, strings: strings)
        let rc = withExtendedLifetime(strings) { fg_http_download(&request, fd, Int64(info.st_size), Int64(maxBytes), &status, &total, &error, error.count) }
        guard rc == 0 else { return .failure(HTTPSError(message: "GET \(redacted(url)): \(cString(error))")) }
        return .success((status, Int(total)))
    }

    /// The request's fields that come from the settings (TLS, client certificate, proxy, connect-to, timeout); its
    /// strings live as long as `strings`.
    private static func request(_ method: String, _ url: String, settings: HTTPSSettings, strings: CStringArena) -> fg_http_request {
        var proxyURL: String?, user: String?, password: String?
        switch settings.proxy {
        case .environment: break
        case .direct: proxyURL = ""
        case .url(let u, let name, let secret): (proxyURL, user, password) = (u, name, secret)
        }
        return fg_http_request(
            method: strings.copy(method), url: strings.copy(url), headers: nil, header_count: 0, body: nil, body_len: 0,
            connect_host: strings.copy(settings.connectHost), connect_address: strings.copy(settings.connectAddress),
            ca_file: strings.copy(settings.caFile), verify_peer: settings.verifyPeer,
            client_cert: strings.copy(settings.clientCertificateFile), client_key: strings.copy(settings.clientKeyFile),
            proxy: strings.copy(proxyURL), proxy_user: strings.copy(user), proxy_password: strings.copy(password),
            timeout_ms: settings.timeoutMilliseconds, max_response_bytes: 0, cancel: nil)
    }

    /// libcurl's loading and global set-up, once, before any request (`fg_tunnel_global_init` runs it under pthread_once).
    private static let globalInit: Void = { fg_tunnel_global_init() }()

    /// The URL without its query (a SAS signature must not reach the logs).
    public static func redacted(_ url: String) -> String {
        url.firstIndex(of: "?").map { String(url[..<$0]) + "?…" } ?? url
    }
}

/// C copies of strings for one libcurl call, freed together when the arena goes.
final class CStringArena {
    private var copies: [UnsafeMutablePointer<CChar>] = []
    func copy(_ s: String?) -> UnsafePointer<CChar>? {
        guard let s, let c = strdup(s) else { return nil }
        copies.append(c)
        return UnsafePointer(c)
    }
    func copy(_ s: String) -> UnsafePointer<CChar>? { copy(Optional(s)) }
    deinit { copies.forEach { free($0) } }
}
