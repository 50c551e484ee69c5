import CModbus
import Dispatch
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A Modbus slave on libmodbus, on its own thread: a fast, deterministic server for benchmarks (the pymodbus peer
/// the tests use costs far more per request than the client under test). TCP (one client at a time, accepted again
/// after it leaves) or RTU (answers one unit id). Records when each request arrived.
public final class ModbusServer: Sendable {
    public let endpoint: ModbusEndpoint
    public let unit: Int
    private let stopped = Atomic<Bool>(false)
    private let arrivals = Mutex<[Int64]>([])
    private let finished = DispatchSemaphore(value: 0)
    private let registers: Int

    /// `registers`: how many of each table it holds (values: the address, so reads are checkable).
    public init(_ endpoint: ModbusEndpoint, unit: Int = 1, registers: Int = 1000) {
        self.endpoint = endpoint
        self.unit = unit
        self.registers = registers
    }

    public func start() {
        DispatchQueue(label: "fieldgate.modbus-server").async { [self] in
            serve()
            finished.signal()
        }
    }

    public func stop() {
        stopped.store(true, ordering: .releasing)
        finished.wait()
    }

    /// Monotonic arrival times (ns) of the requests so far; `reset` clears them.
    public func requestTimes(reset: Bool = false) -> [Int64] {
        arrivals.withLock { a in defer { if reset { a = [] } }; return a }
    }

    private static func nanoseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    private func serve() {
        guard let mapping = modbus_mapping_new(Int32(registers), Int32(registers), Int32(registers), Int32(registers)) else { return }
        defer { modbus_mapping_free(mapping) }
        for i in 0..<registers {
            mapping.pointee.tab_registers[i] = UInt16(i)
            mapping.pointee.tab_input_registers[i] = UInt16(i)
        }
        let context: OpaquePointer?
        switch endpoint {
        case .tcp(let host, let port): context = modbus_new_tcp(host, Int32(port))
        case .rtu(let line):
            let parity: CChar = switch line.parity { case .none: 78; case .even: 69; case .odd: 79 }
            context = modbus_new_rtu(line.path, Int32(line.baud), parity, Int32(line.dataBits), Int32(line.stopBits))
        }
        guard let context else { return }
        defer { modbus_free(context) }
        modbus_set_slave(context, Int32(unit))
        // Wake every 100 ms to notice stop().
        modbus_set_indication_timeout(context, 0, 100_000)
        var query = [UInt8](repeating: 0, count: 260)
        switch endpoint {
        case .tcp:
            let listener = modbus_tcp_listen(context, 1)
            guard listener >= 0 else { return }
            defer { close(listener) }
            while !stopped.load(ordering: .acquiring) {
                var fds = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
                guard poll(&fds, 1, 100) > 0 else { continue }
                var s = listener
                guard modbus_tcp_accept(context, &s) >= 0 else { continue }
                answer(context, mapping, &query)
                modbus_close(context)
            }
        case .rtu:
            guard modbus_connect(context) == 0 else { return }
            answer(context, mapping, &query)
            modbus_close(context)
        }
    }

    /// Replies until the client leaves (TCP) or stop() is called.
    private func answer(_ context: OpaquePointer, _ mapping: UnsafeMutablePointer<modbus_mapping_t>, _ query: inout [UInt8]) {
        while !stopped.load(ordering: .acquiring) {
            let n = query.withUnsafeMutableBufferPointer { modbus_receive(context, $0.baseAddress) }
            if n > 0 {
                arrivals.withLock { $0.append(Self.nanoseconds()) }
                _ = query.withUnsafeBufferPointer { modbus_reply(context, $0.baseAddress, n, mapping) }
            } else if n < 0 && errno != ETIMEDOUT {
                if case .tcp = endpoint { return }  // the client left
            }
        }
    }
}

/// The baseline of the Modbus benchmark: libmodbus's own read loop, nothing of fieldgate around it.
public enum RawModbusLoop {
    /// Reads `count` holding registers from `unit` as fast as the server answers, for `seconds`; returns the reads.
    public static func run(_ endpoint: ModbusEndpoint, unit: Int, address: Int, count: Int, seconds: Double) -> Int {
        let context: OpaquePointer?
        switch endpoint {
        case .tcp(let host, let port): context = modbus_new_tcp_pi(host, String(port))
        case .rtu(let line):
            let parity: CChar = switch line.parity { case .none: 78; case .even: 69; case .odd: 79 }
            context = modbus_new_rtu(line.path, Int32(line.baud), parity, Int32(line.dataBits), Int32(line.stopBits))
        }
        guard let context, modbus_connect(context) == 0 else { return 0 }
        defer { modbus_close(context); modbus_free(context) }
        modbus_set_slave(context, Int32(unit))
        var registers = [UInt16](repeating: 0, count: count)
        var reads = 0
        var start = timespec(), now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &start)
        repeat {
            if registers.withUnsafeMutableBufferPointer({ modbus_read_registers(context, Int32(address), Int32(count), $0.baseAddress) }) == Int32(count) { reads += 1 }
            clock_gettime(CLOCK_MONOTONIC, &now)
        } while Double(now.tv_sec - start.tv_sec) + Double(now.tv_nsec - start.tv_nsec) / 1e9 < seconds
        return reads
    }
}
