/// Writes AMQP 1.0 encodings (§1.6 of the standard) straight into bytes: no value tree and no Proton data tree in
/// between. The uplink builds every telemetry message with it, once, in the bytes the link sends; `AMQPMessageCodec`
/// stays the general codec (and decodes what this writes: the tests hold the two to each other).
///
/// Lists and maps use their 32-bit forms so that their size and count can be filled in once the elements are
/// written; strings, symbols and binaries their 8-bit forms when they fit.
public struct AMQPWriter {
    public private(set) var bytes: [UInt8]

    public init(reservingCapacity capacity: Int = 512) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    /// Where an open list or map starts; `end` fills in its size and count.
    public struct Compound {
        fileprivate let start: Int
    }

    /// Hands the bytes over and leaves the writer empty.
    public mutating func take() -> [UInt8] {
        defer { bytes = [] }
        return bytes
    }

    public mutating func null() { bytes.append(0x40) }

    /// The descriptor of a described value with a small ulong code (the message section codes are 0x70–0x78).
    public mutating func descriptor(_ code: UInt8) {
        bytes.append(0x00)
        bytes.append(0x53)
        bytes.append(code)
    }

    public mutating func string(_ utf8: UnsafeRawBufferPointer) { variable(utf8, short: 0xA1, long: 0xB1) }
    public mutating func symbol(_ ascii: UnsafeRawBufferPointer) { variable(ascii, short: 0xA3, long: 0xB3) }
    public mutating func binary(_ data: UnsafeRawBufferPointer) { variable(data, short: 0xA0, long: 0xB0) }

    public mutating func string(_ s: String) {
        var s = s
        s.withUTF8 { string(UnsafeRawBufferPointer($0)) }
    }

    public mutating func symbol(_ s: String) {
        var s = s
        s.withUTF8 { symbol(UnsafeRawBufferPointer($0)) }
    }

    /// A string whose bytes are written by `fill` (exactly `count` of them), e.g. digits or a timestamp.
    public mutating func string(count: Int, _ fill: (UnsafeMutableRawPointer) -> Void) {
        header(count: count, short: 0xA1, long: 0xB1)
        let at = bytes.count
        bytes.append(contentsOf: repeatElement(0, count: count))
        bytes.withUnsafeMutableBytes { fill($0.baseAddress! + at) }
    }

    /// A binary value of `count` bytes that the caller appends next with `raw` (e.g. a body made of several parts).
    public mutating func binaryHeader(count: Int) { header(count: count, short: 0xA0, long: 0xB0) }

    /// Bytes as they are, after a header that announced them.
    public mutating func raw(_ data: UnsafeRawBufferPointer) { bytes.append(contentsOf: data) }
    public mutating func raw(_ byte: UInt8) { bytes.append(byte) }

    public mutating func beginList() -> Compound { begin(0xD0) }
    public mutating func beginMap() -> Compound { begin(0xD1) }

    /// Closes a list (`count` elements) or map (`count` = keys + values).
    public mutating func end(_ compound: Compound, count: Int) {
        // size counts the bytes after the size field: the count field and the elements.
        let size = UInt32(bytes.count - compound.start - 5)
        bytes.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: size.bigEndian, toByteOffset: compound.start + 1, as: UInt32.self)
            raw.storeBytes(of: UInt32(count).bigEndian, toByteOffset: compound.start + 5, as: UInt32.self)
        }
    }

    private mutating func begin(_ code: UInt8) -> Compound {
        let start = bytes.count
        bytes.append(code)
        bytes.append(contentsOf: repeatElement(0, count: 8))
        return Compound(start: start)
    }

    private mutating func variable(_ data: UnsafeRawBufferPointer, short: UInt8, long: UInt8) {
        header(count: data.count, short: short, long: long)
        bytes.append(contentsOf: data)
    }

    private mutating func header(count: Int, short: UInt8, long: UInt8) {
        if count <= 0xFF {
            bytes.append(short)
            bytes.append(UInt8(count))
        } else {
            bytes.append(long)
            let n = UInt32(count)
            bytes.append(UInt8(truncatingIfNeeded: n >> 24))
            bytes.append(UInt8(truncatingIfNeeded: n >> 16))
            bytes.append(UInt8(truncatingIfNeeded: n >> 8))
            bytes.append(UInt8(truncatingIfNeeded: n))
        }
    }
}
