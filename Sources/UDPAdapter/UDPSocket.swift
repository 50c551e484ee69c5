#if canImport(Glibc)
import Glibc
#endif

/// One bound UDP socket (IPv4 or IPv6; `::` also takes IPv4). Blocking calls: used from the adapter's own thread.
final class UDPSocket: @unchecked Sendable {
    // @unchecked: the fd is immutable; send and receive are thread-safe system calls.
    let fd: Int32
    let port: Int

    init(bindAddress: String, port: Int, receiveBufferBytes: Int = 4 << 20) throws(UDPAdapterError) {
        var hints = addrinfo()
        hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST
        hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(bindAddress, String(port), &hints, &list) == 0, let ai = list else {
            throw UDPAdapterError("cannot resolve bind address \(bindAddress)")
        }
        defer { freeaddrinfo(list) }
        let fd = socket(ai.pointee.ai_family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw UDPAdapterError("socket: errno \(errno)") }
        var one: Int32 = 1, zero: Int32 = 0, buffer = Int32(receiveBufferBytes)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        // SO_RCVBUFFORCE (root) goes past net.core.rmem_max; otherwise the kernel caps SO_RCVBUF there.
        if setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buffer, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer, socklen_t(MemoryLayout<Int32>.size))
        }
        if ai.pointee.ai_family == AF_INET6 { setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &zero, socklen_t(MemoryLayout<Int32>.size)) }
        guard bind(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0 else {
            let e = errno
            close(fd)
            throw UDPAdapterError("cannot bind UDP \(bindAddress):\(port): errno \(e)")
        }
        var addr = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        self.fd = fd
        self.port = Self.describe(addr).port
    }

    deinit { close(fd) }

    /// Waits up to `timeoutMs` for a datagram; nil on timeout.
    func receive(into buffer: inout [UInt8], timeoutMs: Int32) -> (count: Int, ip: String, port: Int)? {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, timeoutMs) > 0 else { return nil }
        return receiveNow(into: &buffer)
    }

    /// A datagram if one is queued, without waiting. `count` may exceed the buffer (the datagram was truncated).
    func receiveNow(into buffer: inout [UInt8]) -> (count: Int, ip: String, port: Int)? {
        var addr = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let n = buffer.withUnsafeMutableBytes { b in
            withUnsafeMutablePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, b.baseAddress, b.count, Int32(MSG_DONTWAIT) | Int32(MSG_TRUNC), $0, &len) }
            }
        }
        guard n >= 0 else { return nil }
        let (ip, port) = Self.describe(addr)
        return (n, ip, port)
    }

    /// Sends to `ip:port` (IPv4 or IPv6 literal).
    @discardableResult
    func send(_ bytes: [UInt8], toIP ip: String, port: Int) -> Bool {
        var hints = addrinfo()
        hints.ai_flags = AI_NUMERICHOST
        hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let host = ip.hasPrefix("::ffff:") ? String(ip.dropFirst(7)) : ip
        // An IPv6 socket reaches IPv4 peers through mapped addresses.
        let target = (Self.family(fd) == AF_INET6 && !host.contains(":")) ? "::ffff:" + host : host
        guard getaddrinfo(target, String(port), &hints, &list) == 0, let ai = list else { return false }
        defer { freeaddrinfo(list) }
        let n = bytes.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, ai.pointee.ai_addr, ai.pointee.ai_addrlen) }
        return n == bytes.count
    }

    private static func family(_ fd: Int32) -> Int32 {
        var addr = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int32(addr.ss_family)
    }

    /// The IP literal (IPv4-mapped IPv6 shown as IPv4) and port of an address.
    static func describe(_ addr: sockaddr_storage) -> (ip: String, port: Int) {
        var a = addr
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        var serv = [CChar](repeating: 0, count: Int(NI_MAXSERV))
        let len = socklen_t(addr.ss_family == sa_family_t(AF_INET6) ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                getnameinfo($0, len, &host, socklen_t(host.count), &serv, socklen_t(serv.count), NI_NUMERICHOST | NI_NUMERICSERV)
            }
        }
        var ip = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if ip.hasPrefix("::ffff:"), ip.contains(".") { ip = String(ip.dropFirst(7)) }
        let port = Int(String(decoding: serv.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)) ?? 0
        return (ip, port)
    }
}

/// The UDPAdapter module's error.
public struct UDPAdapterError: Error, Sendable, CustomStringConvertible {
    public var message: String
    init(_ message: String) { self.message = message }
    /// Bind and resolve failures are configuration problems.
    public var isRetriable: Bool { false }
    public var description: String { message }
}
