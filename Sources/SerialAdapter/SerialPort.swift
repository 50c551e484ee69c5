#if canImport(Glibc)
import Glibc
#endif

/// An open serial device (a tty, or a pty in tests) configured with termios. The fd is owned here; reads and writes
/// block only up to a poll timeout. Used from the adapter's own thread.
final class SerialPort {
    let fd: Int32

    init(_ c: SerialPortConfiguration) throws(SerialAdapterError) {
        let fd = open(c.path, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw SerialAdapterError("cannot open \(c.path): errno \(errno)", retriable: true) }
        var t = termios()
        guard tcgetattr(fd, &t) == 0 else {
            close(fd)
            throw SerialAdapterError("\(c.path) is not a serial device (tcgetattr errno \(errno))", retriable: false)
        }
        cfmakeraw(&t)
        guard let speed = Self.speed(c.baud) else {
            close(fd)
            throw SerialAdapterError("\(c.path): unsupported baud rate \(c.baud)", retriable: false)
        }
        cfsetispeed(&t, speed)
        cfsetospeed(&t, speed)
        t.c_cflag &= ~tcflag_t(CSIZE)
        switch c.dataBits {
        case 5: t.c_cflag |= tcflag_t(CS5)
        case 6: t.c_cflag |= tcflag_t(CS6)
        case 7: t.c_cflag |= tcflag_t(CS7)
        default: t.c_cflag |= tcflag_t(CS8)
        }
        switch c.parity {
        case .none: t.c_cflag &= ~tcflag_t(PARENB)
        case .even: t.c_cflag |= tcflag_t(PARENB); t.c_cflag &= ~tcflag_t(PARODD)
        case .odd: t.c_cflag |= tcflag_t(PARENB | PARODD)
        }
        if c.stopBits == 2 { t.c_cflag |= tcflag_t(CSTOPB) } else { t.c_cflag &= ~tcflag_t(CSTOPB) }
        t.c_cflag &= ~tcflag_t(CRTSCTS)
        t.c_iflag &= ~tcflag_t(IXON | IXOFF | IXANY)
        switch c.flowControl {
        case .none: break
        case .rtscts: t.c_cflag |= tcflag_t(CRTSCTS)
        case .xonxoff: t.c_iflag |= tcflag_t(IXON | IXOFF)
        }
        t.c_cflag |= tcflag_t(CLOCAL | CREAD)
        guard tcsetattr(fd, TCSANOW, &t) == 0 else {
            close(fd)
            throw SerialAdapterError("\(c.path): cannot apply the line settings (errno \(errno))", retriable: true)
        }
        self.fd = fd
    }

    deinit { close(fd) }

    enum ReadResult { case data(Int), timeout, gone }

    /// Waits up to `timeoutMs` for bytes. `.gone` when the device disappeared (EOF, EIO, hang-up).
    func read(into buffer: inout [UInt8], timeoutMs: Int32) -> ReadResult {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let r = poll(&p, 1, timeoutMs)
        if r == 0 { return .timeout }
        if r < 0 { return errno == EINTR ? .timeout : .gone }
        let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        if n > 0 { return .data(n) }
        if n < 0 && (errno == EAGAIN || errno == EINTR) { return .timeout }
        return .gone
    }

    /// Writes everything (waiting for the device to drain, bounded).
    func write(_ bytes: [UInt8]) -> Bool {
        var offset = 0
        var waits = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n > 0 { offset += n; continue }
            guard n < 0, errno == EAGAIN || errno == EINTR, waits < 100 else { return false }
            waits += 1
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            _ = poll(&p, 1, 20)
        }
        return true
    }

    private static func speed(_ baud: Int) -> speed_t? {
        let table: [Int: Int32] = [1200: B1200, 2400: B2400, 4800: B4800, 9600: B9600, 19200: B19200, 38400: B38400,
                                   57600: B57600, 115200: B115200, 230400: B230400, 460800: B460800, 921600: B921600]
        return table[baud].map { speed_t($0) }
    }
}

/// The SerialAdapter module's error.
public struct SerialAdapterError: Error, Sendable, CustomStringConvertible {
    public var message: String
    /// A device that is absent now may come back; a bad setting will not.
    public var isRetriable: Bool
    init(_ message: String, retriable: Bool) {
        self.message = message
        self.isRetriable = retriable
    }
    public var description: String { message }
}
