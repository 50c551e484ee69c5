import Dispatch
import FieldgateCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Prometheus metrics over HTTP on a loopback address (`[control] metrics = "127.0.0.1:9464"`; off by default).
/// Only `GET /metrics` is served, one request per connection, from a thread of its own.
public final class MetricsServer: Sendable {
    public typealias Render = @Sendable () async -> String
    public let port: Int
    private let fd: Int32
    private let render: Render
    private let stopped = Atomic<Bool>(false)

    /// `address` is `127.0.0.1:<port>` or `[::1]:<port>`: metrics never leave the machine.
    public init(address: String, render: @escaping Render) throws(ControlError) {
        guard let colon = address.lastIndex(of: ":"), let port = UInt16(address[address.index(after: colon)...]) else {
            throw ControlError("metrics address \(address): write 127.0.0.1:<port> or [::1]:<port>")
        }
        let host = String(address[..<colon]).trimmed { $0 == "[" || $0 == "]" }
        guard host == "127.0.0.1" || host == "::1" || host == "localhost" else {
            throw ControlError("metrics address \(address): only a loopback address (127.0.0.1 or ::1) is allowed")
        }
        let v6 = host == "::1"
        let fd = socket(v6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ControlError("socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var bound: Int32
        if v6 {
            var a = sockaddr_in6()
            a.sin6_family = sa_family_t(AF_INET6)
            a.sin6_port = port.bigEndian
            a.sin6_addr = in6addr_loopback
            bound = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        } else {
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_port = port.bigEndian
            a.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
            bound = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            let e = String(cString: strerror(errno))
            close(fd)
            throw ControlError("cannot listen for metrics on \(address): \(e)")
        }
        self.fd = fd
        self.port = Int(port)
        self.render = render
    }

    public func start() {
        DispatchQueue(label: "fieldgate.metrics").async { [self] in
            while !stopped.load(ordering: .acquiring) {
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&p, 1, 200) > 0 else { continue }
                let client = accept(fd, nil, nil)
                guard client >= 0 else { continue }
                serve(client)
            }
        }
    }

    public func stop() {
        stopped.store(true, ordering: .releasing)
        shutdown(fd, Int32(SHUT_RDWR))
    }

    deinit { close(fd) }

    private func serve(_ client: Int32) {
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var request: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while request.count < 16_384, !request.suffix(4).elementsEqual("\r\n\r\n".utf8) {
            let n = read(client, &buffer, buffer.count)
            guard n > 0 else { break }
            request += buffer[0..<n]
        }
        let line = String(decoding: request.prefix { $0 != UInt8(ascii: "\r") }, as: UTF8.self)
        guard line.hasPrefix("GET /metrics ") || line == "GET /metrics" else {
            respond(client, status: "404 Not Found", body: "only GET /metrics is served\n")
            return
        }
        let render = self.render
        Task {
            let body = await render()
            DispatchQueue.global().async { self.respond(client, status: "200 OK", body: body) }
        }
    }

    private func respond(_ client: Int32, status: String, body: String) {
        let text = "HTTP/1.1 \(status)\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
        let bytes = Array(text.utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { break }
            sent += n
        }
        close(client)
    }
}

/// Prometheus text exposition (format 0.0.4), built line by line.
public struct PrometheusText: Sendable {
    private var lines: [String] = []
    private var described: Set<String> = []
    public init() {}

    /// One sample; `help` and `type` are written before the first sample of a metric.
    public mutating func add(_ name: String, _ value: Double, labels: [String: String] = [:], help: String, type: String = "gauge") {
        if described.insert(name).inserted {
            lines.append("# HELP \(name) \(help)")
            lines.append("# TYPE \(name) \(type)")
        }
        let labelText = labels.isEmpty ? "" : "{" + labels.sorted { $0.key < $1.key }.map { "\($0.key)=\"\(Self.escape($0.value))\"" }.joined(separator: ",") + "}"
        let number = value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)
        lines.append("\(name)\(labelText) \(number)")
    }

    public var text: String { lines.joined(separator: "\n") + "\n" }

    static func escape(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(c)
            }
        }
        return out
    }
}
