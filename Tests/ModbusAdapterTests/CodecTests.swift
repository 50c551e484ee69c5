import FieldgateCore
import ModbusIO
import Testing
@testable import ModbusAdapter

/// Golden vectors: each value with the registers a device in each order puts on the wire (A = most significant
/// byte). Checked both ways: decode(registers) == value and encode(value) == registers.
@Suite("Register codec golden vectors")
struct CodecTests {
    struct Vector: Sendable, CustomStringConvertible {
        var type: PointType
        var value: RawValue
        /// Registers per order name.
        var wire: [String: [UInt16]]
        var description: String { "\(type) \(value)" }
    }

    static let vectors: [Vector] = [
        Vector(type: .u16, value: .uint(0x1234), wire: ["AB": [0x1234], "BA": [0x3412]]),
        Vector(type: .i16, value: .int(-2), wire: ["AB": [0xFFFE], "BA": [0xFEFF]]),
        Vector(type: .i16, value: .int(-32768), wire: ["AB": [0x8000], "BA": [0x0080]]),
        Vector(type: .u32, value: .uint(0x1234_5678), wire: [
            "ABCD": [0x1234, 0x5678], "CDAB": [0x5678, 0x1234], "BADC": [0x3412, 0x7856], "DCBA": [0x7856, 0x3412]]),
        Vector(type: .i32, value: .int(-123_456_789), wire: [  // 0xF8A432EB
            "ABCD": [0xF8A4, 0x32EB], "CDAB": [0x32EB, 0xF8A4], "BADC": [0xA4F8, 0xEB32], "DCBA": [0xEB32, 0xA4F8]]),
        Vector(type: .f32, value: .float(Double(Float(123.456))), wire: [  // 0x42F6E979
            "ABCD": [0x42F6, 0xE979], "CDAB": [0xE979, 0x42F6], "BADC": [0xF642, 0x79E9], "DCBA": [0x79E9, 0xF642]]),
        Vector(type: .f32, value: .float(Double(Float(-0.1))), wire: [  // 0xBDCCCCCD
            "ABCD": [0xBDCC, 0xCCCD], "CDAB": [0xCCCD, 0xBDCC], "BADC": [0xCCBD, 0xCDCC], "DCBA": [0xCDCC, 0xCCBD]]),
        Vector(type: .u64, value: .uint(0x0102_0304_0506_0708), wire: [
            "ABCDEFGH": [0x0102, 0x0304, 0x0506, 0x0708], "GHEFCDAB": [0x0708, 0x0506, 0x0304, 0x0102],
            "BADCFEHG": [0x0201, 0x0403, 0x0605, 0x0807], "HGFEDCBA": [0x0807, 0x0605, 0x0403, 0x0201]]),
        Vector(type: .i64, value: .int(-2), wire: [
            "ABCDEFGH": [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], "GHEFCDAB": [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF],
            "BADCFEHG": [0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF], "HGFEDCBA": [0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF]]),
        Vector(type: .f64, value: .float(1234.5678), wire: [  // 0x40934A456D5CFAAD
            "ABCDEFGH": [0x4093, 0x4A45, 0x6D5C, 0xFAAD], "GHEFCDAB": [0xFAAD, 0x6D5C, 0x4A45, 0x4093],
            "BADCFEHG": [0x9340, 0x454A, 0x5C6D, 0xADFA], "HGFEDCBA": [0xADFA, 0x5C6D, 0x454A, 0x9340]]),
        Vector(type: .f64, value: .float(-1.5), wire: [  // 0xBFF8000000000000
            "ABCDEFGH": [0xBFF8, 0, 0, 0], "GHEFCDAB": [0, 0, 0, 0xBFF8], "BADCFEHG": [0xF8BF, 0, 0, 0], "HGFEDCBA": [0, 0, 0, 0xF8BF]]),
        Vector(type: .string(length: 5), value: .string("Hello"), wire: ["AB": [0x4865, 0x6C6C, 0x6F00], "BA": [0x6548, 0x6C6C, 0x006F]]),
        Vector(type: .string(length: 8), value: .string("SN-42"), wire: ["AB": [0x534E, 0x2D34, 0x3200, 0x0000]]),
        Vector(type: .bool, value: .bool(true), wire: ["AB": [1]]),
    ]

    @Test("every type × order decodes and encodes its golden registers", arguments: vectors)
    func golden(_ v: Vector) throws {
        for (orderName, registers) in v.wire {
            let order = try #require(RegisterOrder(orderName))
            #expect(RegisterOrder.fits(orderName, v.type), "\(orderName) should apply to \(v.type)")
            #expect(RegisterCodec.decode(registers[...], as: v.type, order: order) == v.value, "decode \(v.type) \(orderName)")
            #expect(try RegisterCodec.encode(v.value, as: v.type, order: order) == registers, "encode \(v.type) \(orderName)")
        }
    }

    @Test("32-bit letters on a 64-bit point mean the same swaps; orders that do not fit are refused")
    func orderAliases() {
        #expect(RegisterOrder("CDAB") == RegisterOrder("GHEFCDAB"))
        #expect(RegisterOrder("dcba") == RegisterOrder("HGFEDCBA"))
        #expect(RegisterOrder("ACBD") == nil)
        #expect(!RegisterOrder.fits("ABCDEFGH", .f32))
        #expect(!RegisterOrder.fits("CD", .u32))
        #expect(RegisterOrder.fits("CDAB", .f64))
    }

    @Test("bits inside a register")
    func bits() {
        #expect(RegisterCodec.decode([0x0008][...], as: .bit(3), order: .bigEndian) == .bool(true))
        #expect(RegisterCodec.decode([0x0008][...], as: .bit(2), order: .bigEndian) == .bool(false))
        #expect(RegisterCodec.decode([0x8000][...], as: .bit(15), order: .bigEndian) == .bool(true))
    }

    @Test("encoding refuses values that do not fit the type")
    func ranges() {
        #expect(throws: CodecError.self) { try RegisterCodec.encode(.int(65536), as: .u16, order: .bigEndian) }
        #expect(throws: CodecError.self) { try RegisterCodec.encode(.int(-1), as: .u32, order: .bigEndian) }
        #expect(throws: CodecError.self) { try RegisterCodec.encode(.int(40000), as: .i16, order: .bigEndian) }
        #expect(throws: CodecError.self) { try RegisterCodec.encode(.float(.nan), as: .f32, order: .bigEndian) }
        #expect(throws: CodecError.self) { try RegisterCodec.encode(.float(1e39), as: .f32, order: .bigEndian) }
        #expect(throws: CodecError.self) { try RegisterCodec.encode(.string("too long"), as: .string(length: 4), order: .bigEndian) }
    }

    @Test("scale, offset and range checks of a point, both ways")
    func engineering() throws {
        var p = ModbusPoint(name: "setpoint", table: .holdingRegisters, address: 10, type: .i16)
        p.scale = 0.1
        p.offset = -40
        p.writable = true
        p.minimum = -20
        p.maximum = 80
        #expect(abs((p.value(of: [615][...]).number ?? 0) - 21.5) < 1e-9)  // 615 × 0.1 − 40
        #expect(try p.registers(for: .double(21.5)) == [615])
        #expect(try p.registers(for: .int(-20)) == [200])
        #expect(throws: CodecError.self) { try p.registers(for: .double(80.5)) }
        #expect(throws: CodecError.self) { try p.registers(for: .string("x")) }
        p.writable = false
        #expect(throws: CodecError.self) { try p.registers(for: .double(21.5)) }
        // Decimal scales give the decimal a person expects, not 22.200000000000003.
        var tenth = ModbusPoint(name: "t", table: .holdingRegisters, address: 0, type: .i16)
        tenth.scale = 0.1
        #expect(tenth.value(of: [222][...]) == .double(22.2))
        tenth.scale = 0.01
        #expect(tenth.value(of: [1234][...]) == .double(12.34))
        let raw = ModbusPoint(name: "count", table: .inputRegisters, address: 0, type: .u32)
        #expect(raw.value(of: [0x0001, 0x0000][...]) == .int(65536))
    }

    @Test("Modicon addresses: 5 and 6 digits, 1-based")
    func modicon() {
        #expect(parseModiconAddress("40001")! == (.holdingRegisters, 0))
        #expect(parseModiconAddress("30010")! == (.inputRegisters, 9))
        #expect(parseModiconAddress("10001")! == (.discreteInputs, 0))
        #expect(parseModiconAddress("00005")! == (.coils, 4))
        #expect(parseModiconAddress("465536")! == (.holdingRegisters, 65535))
        #expect(parseModiconAddress("40000") == nil)
        #expect(parseModiconAddress("20001") == nil)
        #expect(parseModiconAddress("4001") == nil)
    }
}
