import FieldgateCore
import ModbusIO

/// Report-by-exception threshold for one point.
public enum Deadband: Sendable, Equatable, Hashable {
    /// Report when the value moved by at least this much (engineering units).
    case absolute(Double)
    /// Report when the value moved by at least this percentage of the last reported value.
    case percent(Double)

    func exceeded(from old: Double, to new: Double) -> Bool {
        switch self {
        case .absolute(let d): abs(new - old) >= d
        case .percent(let p): old == 0 ? new != 0 : abs(new - old) >= abs(old) * p / 100
        }
    }
}

/// One named value of a device profile (a register map entry).
public struct ModbusPoint: Sendable, Equatable, Hashable {
    public var name: String
    public var table: ModbusTable
    /// 0-based within the table.
    public var address: Int
    public var type: PointType
    public var order: RegisterOrder = .bigEndian
    /// Engineering value = raw × scale + offset (numbers only).
    public var scale: Double = 1
    public var offset: Double = 0
    public var unit: String?
    public var deadband: Deadband?
    /// This point's own poll interval; nil = the device's.
    public var pollMilliseconds: Int64?
    public var writable = false
    /// Write range, in engineering units.
    public var minimum: Double?
    public var maximum: Double?

    public init(name: String, table: ModbusTable, address: Int, type: PointType) {
        self.name = name
        self.table = table
        self.address = address
        self.type = type
    }

    /// Registers (or bits) it spans.
    public var count: Int { table.isBits ? 1 : type.registerCount }
    public var addresses: Range<Int> { address..<(address + count) }
    var isScaled: Bool { scale != 1 || offset != 0 }

    /// The engineering value of the point's registers, as JSON.
    public func value(of registers: ArraySlice<UInt16>) -> JSONValue {
        let raw = RegisterCodec.decode(registers, as: table.isBits ? .bool : type, order: order)
        switch raw {
        case .bool(let b): return .bool(b)
        case .string(let s): return .string(s)
        case .int(let i) where !isScaled: return .int(i)
        case .uint(let u) where !isScaled && u <= UInt64(Int64.max): return .int(Int64(u))
        default:
            // A decimal scale (0.1, 0.01) divides by its inverse: 222 / 10 is 22.2 where 222 × 0.1 is 22.200000000000003.
            let inverse = 1 / scale
            let scaled = abs(scale) < 1 && abs(inverse - inverse.rounded()) < 1e-9 ? raw.asDouble! / inverse.rounded() : raw.asDouble! * scale
            let d = scaled + offset
            return d.isFinite ? .double(d) : .null  // NaN/inf from a float register: no JSON number exists
        }
    }

    /// Registers (or bits as 0/1) to write for an engineering value; throws why it cannot be written.
    public func registers(for value: JSONValue) throws(CodecError) -> [UInt16] {
        guard writable else { throw CodecError("point \(name) is not writable") }
        if table.isBits || type == .bool {
            guard case .bool(let b) = value else { throw CodecError("point \(name) needs true or false") }
            return try RegisterCodec.encode(.bool(b), as: .bool, order: order)
        }
        if case .string = type {
            guard case .string(let s) = value else { throw CodecError("point \(name) needs a string") }
            do { return try RegisterCodec.encode(.string(s), as: type, order: order) } catch { throw CodecError("point \(name): \(error)") }
        }
        let engineering: Double
        switch value {
        case .int(let i): engineering = Double(i)
        case .double(let d): engineering = d
        default: throw CodecError("point \(name) needs a number")
        }
        if let lo = minimum, engineering < lo { throw CodecError("point \(name): \(engineering) is below its minimum \(lo)") }
        if let hi = maximum, engineering > hi { throw CodecError("point \(name): \(engineering) is above its maximum \(hi)") }
        let raw = (engineering - offset) / scale
        let rawValue: RawValue
        if type.isFloat {
            rawValue = .float(raw)
        } else {
            let rounded = raw.rounded()
            guard rounded.isFinite, abs(rounded) < 9.2e18 else { throw CodecError("point \(name): \(engineering) does not fit \(type)") }
            rawValue = .int(Int64(rounded))
        }
        do { return try RegisterCodec.encode(rawValue, as: type, order: order) } catch { throw CodecError("point \(name): \(error)") }
    }
}

/// A reusable register map (profiles.d/*.toml), bound to devices by name.
public struct ModbusProfile: Sendable, Equatable {
    public var name: String
    public var points: [ModbusPoint]
    public var pollMilliseconds: Int64

    public init(name: String, points: [ModbusPoint], pollMilliseconds: Int64 = 1000) {
        self.name = name
        self.points = points
        self.pollMilliseconds = pollMilliseconds
    }

    /// What is wrong with the map: duplicate names, overlapping points, types that do not fit their table,
    /// addresses beyond the table. Each problem names the point's index and the key at fault (for file:line).
    public func problems() -> [(point: Int, key: String, message: String)] {
        var out: [(Int, String, String)] = []
        var names: [String: Int] = [:]
        for (i, p) in points.enumerated() {
            if let first = names[p.name] { out.append((i, "name", "point \(p.name) is defined twice (first as point[\(first)]); point names must be unique")) }
            names[p.name] = names[p.name] ?? i
            if p.table.isBits && p.type != .bool {
                out.append((i, "type", "point \(p.name): \(p.table.rawValue) hold single bits; use type = \"bool\""))
            }
            if p.addresses.upperBound > 65536 {
                out.append((i, "address", "point \(p.name): address \(p.address) + \(p.count) registers runs past 65535"))
            }
            if p.writable && !p.table.isWritable {
                out.append((i, "writable", "point \(p.name): \(p.table.rawValue) are read-only; writable applies to coils and holding_registers"))
            }
            if p.writable, case .bit = p.type {
                out.append((i, "writable", "point \(p.name): a bit inside a register cannot be written alone; map it as a coil or write the whole register"))
            }
            if let lo = p.minimum, let hi = p.maximum, lo > hi { out.append((i, "min", "point \(p.name): min \(lo) is above max \(hi)")) }
            if p.scale == 0 || !p.scale.isFinite { out.append((i, "scale", "point \(p.name): scale must be a non-zero number")) }
        }
        // Overlaps: two points on the same registers of the same table (bits of one register may share it).
        for table in ModbusTable.allCases {
            let inTable = points.enumerated().filter { $0.element.table == table }.sorted { $0.element.address < $1.element.address }
            for (a, b) in zip(inTable, inTable.dropFirst()) where b.element.address < a.element.addresses.upperBound {
                if case .bit = a.element.type, case .bit = b.element.type, a.element.address == b.element.address { continue }
                out.append((b.offset, "address", "point \(b.element.name) (\(table.rawValue) \(b.element.address)) overlaps \(a.element.name) (\(a.element.address)..\(a.element.addresses.upperBound - 1))"))
            }
        }
        return out
    }
}

/// Modicon notation: 0xxxx coils, 1xxxx discrete inputs, 3xxxx input registers, 4xxxx holding registers, 1-based
/// (40001 is holding register 0); the 6-digit form (400001) reaches 65535. Returns nil for anything else.
public func parseModiconAddress(_ text: String) -> (table: ModbusTable, address: Int)? {
    guard (text.count == 5 || text.count == 6), text.allSatisfy(\.isASCII), let n = Int(text), n >= 0 else { return nil }
    let digits = text.count - 1
    var base = 1
    for _ in 0..<digits { base *= 10 }
    let table: ModbusTable
    switch text.first {
    case "0": table = .coils
    case "1": table = .discreteInputs
    case "3": table = .inputRegisters
    case "4": table = .holdingRegisters
    default: return nil
    }
    let oneBased = n % base
    guard oneBased >= 1, oneBased <= 65536 else { return nil }
    return (table, oneBased - 1)
}
