import Dispatch
import FieldgateCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The daemon's local control socket (`/run/fieldgate/control.sock`): a Unix stream socket, mode 0660, so only
/// root and the daemon's group may talk to it. One request per connection: a JSON object with `command`, answered
/// by one JSON document. The accept loop has a thread of its own (blocking calls never run on the cooperative
/// pool); handlers are async and run as tasks.
public final class ControlServer: Sendable {
    public typealias Handler = @Sendable (JSONValue) async -> JSONValue
    public let path: String
    private let fd: Int32
    private let handler: Handler
    private let stopped = Atomic<Bool>(false)

    public init(path: String, handler: @escaping Handler) throws(ControlError) {
        self.path = path
        self.handler = handler
        unlink(path)  // a stale socket from a killed daemon
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ControlError("socket: \(String(cString: strerror(errno)))") }
        guard var address = UnixAddress(path) else { close(fd); throw ControlError("\(path): a socket path must be shorter than 108 bytes") }
        let bound = address.withSockaddr { bind(fd, $0, $1) }
        guard bound == 0, chmod(path, 0o660) == 0, listen(fd, 16) == 0 else {
            let e = String(cString: strerror(errno))
            close(fd)
            throw ControlError("cannot listen on \(path): \(e)")
        }
        self.fd = fd
    }

    public func start() {
        DispatchQueue(label: "fieldgate.control").async { [self] in acceptLoop() }
    }

    public func stop() {
        stopped.store(true, ordering: .releasing)
        shutdown(fd, Int32(SHUT_RDWR))
        unlink(path)
    }

    deinit { close(fd) }

    private func acceptLoop() {
        while !stopped.load(ordering: .acquiring) {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 200) > 0 else { continue }
            let client = accept(fd, nil, nil)
            guard client >= 0 else { continue }
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)  // (Glibc lacks accept4: the GNU extensions are not imported)
            var timeout = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            guard let request = ControlWire.readMessage(client) else {
                ControlWire.write(client, ["error": "the request is not a JSON object on one line"])
                close(client)
                continue
            }
            let handler = self.handler
            Task {
                let answer = await handler(request)
                DispatchQueue.global().async {
                    ControlWire.write(client, answer)
                    close(client)
                }
            }
        }
    }
}

/// The client side (fieldgatectl, tests).
public enum ControlClient {
    public static func request(_ body: JSONValue, socketPath: String) throws(ControlError) -> JSONValue {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ControlError("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard var address = UnixAddress(socketPath) else { throw ControlError("\(socketPath): path too long") }
        guard address.withSockaddr({ connect(fd, $0, $1) }) == 0 else {
            let why = errno == EACCES ? "permission denied (run as root or as a member of the fieldgate group)"
                : errno == ENOENT || errno == ECONNREFUSED ? "fieldgated is not running (or uses another control socket)"
                : String(cString: strerror(errno))
            throw ControlError("cannot reach fieldgated at \(socketPath): \(why)")
        }
        var timeout = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        ControlWire.write(fd, body)
        guard let answer = ControlWire.readMessage(fd, untilClose: true) else { throw ControlError("fieldgated sent no valid answer") }
        return answer
    }
}

public struct ControlError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
    public var isRetriable: Bool { true }
}

enum ControlWire {
    /// A message ends at a newline (requests) or when the peer closes (answers). At most 16 MiB.
    static func readMessage(_ fd: Int32, untilClose: Bool = false) -> JSONValue? {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while bytes.count < 16 << 20 {
            let n = read(fd, &buffer, buffer.count)
            guard n > 0 else { break }
            bytes += buffer[0..<n]
            if !untilClose, bytes.last == UInt8(ascii: "\n") { break }
        }
        return JSONValue.parse(bytes)
    }

    static func write(_ fd: Int32, _ value: JSONValue) {
        let bytes = value.bytes + [UInt8(ascii: "\n")]
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { return }
            sent += n
        }
    }
}

/// A `sockaddr_un` for a path.
struct UnixAddress {
    private var storage = sockaddr_un()

    init?(_ path: String) {
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: storage.sun_path) else { return nil }
        storage.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &storage.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
        }
    }

    mutating func withSockaddr<T>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
    }
}
