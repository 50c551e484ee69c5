import CModbus

#if canImport(Glibc)
import Glibc
#endif

/// The four Modbus data tables.
public enum ModbusTable: String, Sendable, CaseIterable, Hashable, Comparable {
    case coils, discreteInputs = "discrete_inputs", inputRegisters = "input_registers", holdingRegisters = "holding_registers"

    /// Bits (coils, discrete inputs) or 16-bit registers.
    public var isBits: Bool { self == .coils || self == .discreteInputs }
    public var isWritable: Bool { self == .coils || self == .holdingRegisters }
    /// The most one read request may ask for (Modbus application protocol §6.1–6.4).
    public var maxReadCount: Int { isBits ? 2000 : 125 }
    /// The read function code, as a server sees it.
    public var readFunctionCode: Int {
        switch self { case .coils: 1; case .discreteInputs: 2; case .holdingRegisters: 3; case .inputRegisters: 4 }
    }

    public static func < (a: ModbusTable, b: ModbusTable) -> Bool { a.readFunctionCode < b.readFunctionCode }
}

/// Where a bus is: a TCP server (one connection, any number of unit ids behind it) or a serial line.
public enum ModbusEndpoint: Sendable, Equatable, Hashable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case rtu(RTULine)

    public var description: String {
        switch self {
        case .tcp(let host, let port): "tcp:\(host.contains(":") ? "[\(host)]" : host):\(port)"
        case .rtu(let line): "rtu:\(line.path)"
        }
    }
}

/// A serial line for Modbus RTU.
public struct RTULine: Sendable, Equatable, Hashable {
    public enum Parity: String, Sendable { case none, even, odd }
    public var path: String
    public var baud = 19200
    public var parity: Parity = .even
    public var dataBits = 8
    public var stopBits = 1
    /// Ask the kernel for RS-485 mode (TIOCSRS485). Drivers without it refuse; that is reported, not fatal.
    public var rs485 = false

    public init(path: String) { self.path = path }

    /// One character on the wire (start + data + parity + stop bits), in microseconds.
    public var characterMicroseconds: Double {
        Double(1 + dataBits + (parity == .none ? 0 : 1) + stopBits) * 1_000_000 / Double(baud)
    }
}

/// A failed Modbus transaction, from libmodbus's errno.
public struct ModbusError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// No answer within the response timeout (a silent or absent unit).
        case timeout
        /// The unit answered with a Modbus exception (1 illegal function, 2 illegal address, 3 illegal value, …).
        case exception(Int)
        /// A garbled answer: bad CRC, wrong length, wrong unit or function (line noise, a collision).
        case badResponse
        /// The connection or the port is gone or could not be opened.
        case connection
        /// A request this library refuses before sending (count too large, …).
        case invalidRequest
    }
    public var kind: Kind
    public var message: String
    /// Worth trying again later (everything but an invalid request or an exception the unit will repeat).
    public var isRetriable: Bool {
        switch kind {
        case .timeout, .badResponse, .connection: true
        case .exception(let code): code == 5 || code == 6  // acknowledge, busy
        case .invalidRequest: false
        }
    }

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }

    static func fromErrno(_ e: Int32, _ what: String) -> ModbusError {
        let text = String(cString: modbus_strerror(e))
        let code = Int(e) - Int(fg_modbus_errno_base)
        if (1...11).contains(code) { return ModbusError(.exception(code), "\(what): exception \(code) (\(text))") }
        switch e {
        case ETIMEDOUT: return ModbusError(.timeout, "\(what): no response in time")
        case fg_modbus_bad_crc, fg_modbus_bad_data, fg_modbus_bad_exception, fg_modbus_unknown_exception, fg_modbus_too_much_data,
             fg_modbus_bad_slave:
            return ModbusError(.badResponse, "\(what): \(text)")
        case EINVAL: return ModbusError(.invalidRequest, "\(what): \(text)")
        default: return ModbusError(.connection, "\(what): \(text)")
        }
    }

    /// The exception's name in the Modbus specification.
    public static func exceptionName(_ code: Int) -> String {
        switch code {
        case 1: "illegal function"
        case 2: "illegal data address"
        case 3: "illegal data value"
        case 4: "server device failure"
        case 5: "acknowledge"
        case 6: "server device busy"
        case 8: "memory parity error"
        case 10: "gateway path unavailable"
        case 11: "gateway target device failed to respond"
        default: "exception \(code)"
        }
    }
}

/// One libmodbus context (a TCP connection or a serial port). Not Sendable on purpose: it lives on the one thread
/// that owns its bus and never meets the cooperative pool (every call blocks up to the response timeout).
public final class ModbusConnection {
    public let endpoint: ModbusEndpoint
    private let context: OpaquePointer
    public private(set) var isConnected = false
    /// Set when RS-485 mode was asked for and the driver refused it.
    public private(set) var rs485Problem: String?

    /// `responseTimeoutMs`: how long a unit may take to answer; `byteTimeoutMs`: the longest silence inside a frame.
    public init(_ endpoint: ModbusEndpoint, responseTimeoutMs: Int, byteTimeoutMs: Int) throws(ModbusError) {
        self.endpoint = endpoint
        let made: OpaquePointer?
        switch endpoint {
        case .tcp(let host, let port):
            made = modbus_new_tcp_pi(host, String(port))
        case .rtu(let line):
            let parity: CChar = switch line.parity { case .none: 78; case .even: 69; case .odd: 79 }  // N E O
            made = modbus_new_rtu(line.path, Int32(line.baud), parity, Int32(line.dataBits), Int32(line.stopBits))
        }
        guard let made else { throw ModbusError.fromErrno(errno, "\(endpoint)") }
        context = made
        modbus_set_error_recovery(context, MODBUS_ERROR_RECOVERY_NONE)
        Self.setTimeout(responseTimeoutMs) { modbus_set_response_timeout(made, $0, $1) }
        Self.setTimeout(byteTimeoutMs) { modbus_set_byte_timeout(made, $0, $1) }
    }

    deinit {
        modbus_close(context)
        modbus_free(context)
    }

    private static func setTimeout(_ ms: Int, _ set: (UInt32, UInt32) -> Int32) {
        let clamped = max(1, ms)
        _ = set(UInt32(clamped / 1000), UInt32(clamped % 1000) * 1000)
    }

    /// Opens the socket or the port. Closing first makes it a reconnect.
    public func connect() throws(ModbusError) {
        close()
        guard modbus_connect(context) == 0 else { throw ModbusError.fromErrno(errno, "connect \(endpoint)") }
        isConnected = true
        rs485Problem = nil
        if case .rtu(let line) = endpoint, line.rs485, modbus_rtu_set_serial_mode(context, fg_modbus_rtu_rs485) != 0 {
            rs485Problem = "\(line.path): RS-485 mode refused by the driver (\(String(cString: modbus_strerror(errno)))); using the port as it is"
        }
    }

    /// Changes the response timeout for the requests that follow (per unit: a slow device on a fast bus).
    public func setResponseTimeout(milliseconds: Int) {
        let ms = max(1, milliseconds)
        modbus_set_response_timeout(context, UInt32(ms / 1000), UInt32(ms % 1000) * 1000)
    }

    public func close() {
        if isConnected { modbus_close(context) }
        isConnected = false
    }

    /// Drops whatever a late answer left in the receive buffer (after a timeout, before the next request).
    public func flush() { if isConnected { _ = modbus_flush(context) } }

    /// Reads `count` registers or bits (bits come back as 0 or 1).
    public func read(_ table: ModbusTable, unit: Int, address: Int, count: Int) throws(ModbusError) -> [UInt16] {
        try select(unit)
        let what = "read \(table.rawValue) \(address)+\(count) from unit \(unit)"
        var result = [UInt16](repeating: 0, count: count)
        let rc: Int32
        if table.isBits {
            var bits = [UInt8](repeating: 0, count: count)
            rc = bits.withUnsafeMutableBufferPointer { b in
                table == .coils ? modbus_read_bits(context, Int32(address), Int32(count), b.baseAddress)
                    : modbus_read_input_bits(context, Int32(address), Int32(count), b.baseAddress)
            }
            for i in 0..<count { result[i] = bits[i] == 0 ? 0 : 1 }
        } else {
            rc = result.withUnsafeMutableBufferPointer { r in
                table == .holdingRegisters ? modbus_read_registers(context, Int32(address), Int32(count), r.baseAddress)
                    : modbus_read_input_registers(context, Int32(address), Int32(count), r.baseAddress)
            }
        }
        guard rc == Int32(count) else { throw failure(what) }
        return result
    }

    /// Writes holding registers: function 6 for one, 16 for several.
    public func writeRegisters(unit: Int, address: Int, values: [UInt16]) throws(ModbusError) {
        try select(unit)
        let what = "write holding_registers \(address)+\(values.count) to unit \(unit)"
        let rc = values.count == 1 ? modbus_write_register(context, Int32(address), values[0])
            : values.withUnsafeBufferPointer { modbus_write_registers(context, Int32(address), Int32(values.count), $0.baseAddress) }
        guard rc == (values.count == 1 ? 1 : Int32(values.count)) else { throw failure(what) }
    }

    /// Writes coils: function 5 for one, 15 for several.
    public func writeCoils(unit: Int, address: Int, values: [Bool]) throws(ModbusError) {
        try select(unit)
        let what = "write coils \(address)+\(values.count) to unit \(unit)"
        let bytes = values.map { UInt8($0 ? 1 : 0) }
        let rc = values.count == 1 ? modbus_write_bit(context, Int32(address), Int32(bytes[0]))
            : bytes.withUnsafeBufferPointer { modbus_write_bits(context, Int32(address), Int32(values.count), $0.baseAddress) }
        guard rc == (values.count == 1 ? 1 : Int32(values.count)) else { throw failure(what) }
    }

    private func select(_ unit: Int) throws(ModbusError) {
        guard isConnected else { throw ModbusError(.connection, "\(endpoint) is not connected") }
        guard modbus_set_slave(context, Int32(unit)) == 0 else { throw ModbusError.fromErrno(errno, "unit id \(unit)") }
    }

    private func failure(_ what: String) -> ModbusError {
        let e = ModbusError.fromErrno(errno, what)
        if e.kind == .connection { close() }
        return e
    }
}
