/// LEB128 varints (7 bits a byte, low first) and zigzag, shared by the record header, the segment index and the
/// leaves' location streams.
enum Varint {
    static func put(_ value: UInt64, _ out: inout [UInt8]) {
        // One append per value, not per byte (each append checks uniqueness and capacity); most values are one byte.
        if value < 0x80 { return out.append(UInt8(value)) }
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 10) { buffer in
            let n = write(value, to: UnsafeMutableRawPointer(buffer.baseAddress!))
            out.append(contentsOf: UnsafeBufferPointer(rebasing: buffer[..<n]))
        }
    }

    /// The bytes `write` takes for `value`.
    static func size(_ value: UInt64) -> Int { Swift.max(1, (64 - value.leadingZeroBitCount + 6) / 7) }

    /// Writes `value` at `out` (room for 10 bytes); returns how many bytes it took.
    static func write(_ value: UInt64, to out: UnsafeMutableRawPointer) -> Int {
        var v = value
        var n = 0
        while v >= 0x80 {
            out.storeBytes(of: UInt8(truncatingIfNeeded: v) | 0x80, toByteOffset: n, as: UInt8.self)
            v >>= 7
            n += 1
        }
        out.storeBytes(of: UInt8(v), toByteOffset: n, as: UInt8.self)
        return n + 1
    }

    /// The value at `at` in `b[..<end]`, advancing `at`; nil when it runs past `end` or beyond 64 bits.
    static func read(_ b: UnsafeRawBufferPointer, _ at: inout Int, end: Int) -> UInt64? {
        if at < end, b[at] < 0x80 {  // most values: one byte
            at += 1
            return UInt64(b[at - 1])
        }
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while at < end, shift < 64 {
            let byte = b[at]
            at += 1
            value |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return value }
            shift += 7
        }
        return nil
    }

    /// `read` for the record header's values (a sequence of three bytes, a time of six): with eight bytes at hand
    /// the last byte is found at once and the groups gathered without a loop per byte (~25 instructions a reading
    /// fewer in the coalescing benchmark). Inlined into its one caller; other values are mostly one byte.
    @inline(__always)
    static func readHeaderValue(_ b: UnsafeRawBufferPointer, _ at: inout Int, end: Int) -> UInt64? {
        guard at >= 0, end - at >= 8 else { return read(b, &at, end: end) }
        let word = UInt64(littleEndian: b.loadUnaligned(fromByteOffset: at, as: UInt64.self))
        let stops = ~word & 0x8080_8080_8080_8080
        guard stops != 0 else { return read(b, &at, end: end) }
        let bytes = stops.trailingZeroBitCount / 8 + 1
        var value = word & 0x7F
        value |= word >> 1 & 0x7F << 7
        value |= word >> 2 & 0x7F << 14
        value |= word >> 3 & 0x7F << 21
        value |= word >> 4 & 0x7F << 28
        value |= word >> 5 & 0x7F << 35
        value |= word >> 6 & 0x7F << 42
        value |= word >> 7 & 0x7F << 49
        at += bytes
        return bytes == 8 ? value : value & (1 << (7 * UInt64(bytes)) - 1)
    }

    static func zigzag(_ v: Int64) -> UInt64 { UInt64(bitPattern: (v << 1) ^ (v >> 63)) }
    static func unzigzag(_ v: UInt64) -> Int64 { Int64(bitPattern: v >> 1) ^ -Int64(bitPattern: v & 1) }
}
