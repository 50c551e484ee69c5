import CSocketBatch

#if canImport(Glibc)
import Glibc
#endif

/// One bound UDP socket (IPv4 or IPv6; `::` also takes IPv4). Blocking calls: used from the adapter's own thread.
final class UDPSocket: @unchecked Sendable {
    // @unchecked: the fd is immutable; send and receive are thread-safe system calls.
    let fd: Int32
    let port: Int

    /// What the kernel granted (capped at `net.core.rmem_max` without CAP_NET_ADMIN, as under the shipped unit).
    let receiveBufferBytes: Int

    init(bindAddress: String, port: Int, receiveBufferBytes wanted: Int) throws(UDPAdapterError) {
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
        var one: Int32 = 1, zero: Int32 = 0, buffer = Int32(wanted)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        // SO_RCVBUFFORCE (root) goes past net.core.rmem_max; otherwise the kernel caps SO_RCVBUF there.
        if setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buffer, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer, socklen_t(MemoryLayout<Int32>.size))
        }
        if ai.pointee.ai_family == AF_INET6 { setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &zero, socklen_t(MemoryLayout<Int32>.size)) }
        _ = fg_enable_drop_count(fd)
        // The kernel reports twice the granted size (it counts its bookkeeping too).
        var granted: Int32 = 0
        var grantedLength = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &granted, &grantedLength)
        self.receiveBufferBytes = Int(granted) / 2
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

    /// Waits up to `timeoutMs` for datagrams, then takes up to `batch.capacity` of them in one `recvmmsg`.
    /// Returns how many `batch` now holds (0 on timeout).
    func receive(into batch: UDPReceiveBatch, timeoutMs: Int32) -> Int {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, timeoutMs) > 0 else { return 0 }
        return batch.fill(from: fd)
    }

    /// Datagrams already queued, without waiting (0 when none).
    func receiveNow(into batch: UDPReceiveBatch) -> Int { batch.fill(from: fd) }

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

/// Buffers for receiving many datagrams per system call (`recvmmsg`), owned by the adapter's receive thread.
/// Sender addresses are formatted once and cached (bounded): ingest at 50k datagrams/s cannot afford a
/// `getnameinfo` per datagram.
final class UDPReceiveBatch {
    let capacity: Int
    let slotBytes: Int
    private let storage: UnsafeMutablePointer<UInt8>
    private let addresses: UnsafeMutablePointer<sockaddr_storage>
    private let lengths: UnsafeMutablePointer<UInt32>
    private let truncated: UnsafeMutablePointer<UInt8>
    private var names: [SourceKey: String] = [:]
    /// The socket's kernel drop count as last reported with a datagram (cumulative since the socket opened).
    private(set) var kernelDrops: UInt32 = 0

    /// `maxDatagramBytes + 1` per slot, so a datagram that does not fit is seen as truncated (oversize).
    init(capacity: Int = Int(FG_RECV_BATCH_MAX), maxDatagramBytes: Int) {
        self.capacity = min(capacity, Int(FG_RECV_BATCH_MAX))
        slotBytes = maxDatagramBytes + 1
        storage = .allocate(capacity: self.capacity * slotBytes)
        addresses = .allocate(capacity: self.capacity)
        lengths = .allocate(capacity: self.capacity)
        truncated = .allocate(capacity: self.capacity)
    }

    deinit {
        storage.deallocate()
        addresses.deallocate()
        lengths.deallocate()
        truncated.deallocate()
    }

    fileprivate func fill(from fd: Int32) -> Int {
        max(0, Int(fg_recv_batch(fd, storage, slotBytes, UInt32(capacity), addresses, lengths, truncated, &kernelDrops)))
    }

    /// Datagram `k` of the last receive: its bytes, its length (more than the slot when it was cut) and sender.
    func datagram(_ k: Int) -> (bytes: UnsafeBufferPointer<UInt8>, length: Int, ip: String, port: Int) {
        let received = Int(lengths[k])
        let length = truncated[k] != 0 ? slotBytes + 1 : received
        let bytes = UnsafeBufferPointer(start: storage + k * slotBytes, count: min(received, slotBytes))
        let (ip, port) = source(addresses[k])
        return (bytes, length, ip, port)
    }
    private func source(_ addr: sockaddr_storage) -> (String, Int) {
        let key = SourceKey(addr)
        if let ip = names[key] { return (ip, key.port) }
        let (ip, port) = UDPSocket.describe(addr)
        if names.count >= 4096 { names.removeAll(keepingCapacity: true) }  // spoofed sources cannot grow it
        names[key] = ip
        return (ip, port)
    }

    /// An address and port as plain values, hashable without formatting.
    private struct SourceKey: Hashable {
        var family: UInt16
        var high: UInt64
        var low: UInt64
        var port: Int

        init(_ addr: sockaddr_storage) {
            var a = addr
            family = UInt16(addr.ss_family)
            if addr.ss_family == sa_family_t(AF_INET6) {
                let v6 = withUnsafeBytes(of: &a) { $0.load(as: sockaddr_in6.self) }
                let words = withUnsafeBytes(of: v6.sin6_addr) { ($0.load(fromByteOffset: 0, as: UInt64.self), $0.load(fromByteOffset: 8, as: UInt64.self)) }
                (high, low) = words
                port = Int(UInt16(bigEndian: v6.sin6_port))
            } else {
                let v4 = withUnsafeBytes(of: &a) { $0.load(as: sockaddr_in.self) }
                high = 0
                low = UInt64(v4.sin_addr.s_addr)
                port = Int(UInt16(bigEndian: v4.sin_port))
            }
        }
    }
}
