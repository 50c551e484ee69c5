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
    /// the last byte is found at once and the 7-bit groups packed in three halving steps, without a loop per byte
    /// (~25 instructions a reading fewer in the coalescing benchmark than a loop; the halving steps ~45 fewer again
    /// than a shift per group).
    /// Inlined into its one caller; other values are mostly one byte.
    @inline(__always)
    static func readHeaderValue(_ b: UnsafeRawBufferPointer, _ at: inout Int, end: Int) -> UInt64? {
        guard at >= 0, end - at >= 8 else { return read(b, &at, end: end) }
        let word = UInt64(littleEndian: b.loadUnaligned(fromByteOffset: at, as: UInt64.self))
        let stops = ~word & 0x8080_8080_8080_8080
        guard stops != 0 else { return read(b, &at, end: end) }
        // The value's bytes (up to the first without a continuation bit), continuation bits cleared.
        var x = word & (stops ^ (stops &- 1)) & 0x7F7F_7F7F_7F7F_7F7F
        x = x & 0x007F_007F_007F_007F | (x & 0x7F00_7F00_7F00_7F00) >> 1
        x = x & 0x0000_3FFF_0000_3FFF | (x & 0x3FFF_0000_3FFF_0000) >> 2
        x = x & 0x0000_0000_0FFF_FFFF | (x & 0x0FFF_FFFF_0000_0000) >> 4
        at += stops.trailingZeroBitCount / 8 + 1
        return x
    }

    static func zigzag(_ v: Int64) -> UInt64 { UInt64(bitPattern: (v << 1) ^ (v >> 63)) }
    static func unzigzag(_ v: UInt64) -> Int64 { Int64(bitPattern: v >> 1) ^ -Int64(bitPattern: v & 1) }
}
