/// Writes AMQP 1.0 encodings (§1.6 of the standard) straight into the bytes of the array that leaves it: no value
/// tree, no Proton data tree, no growing buffer in between. The uplink builds every telemetry message with it, once;
/// `AMQPMessageCodec` stays the general codec (and decodes what this writes: the tests hold the two to each other).
///
/// `AMQPWriter.bytes(capacity:)` hands the writer uninitialized storage of `capacity` bytes; writing past it is a
/// programming error and traps. Lists and maps use their 32-bit forms so that their size and count can be filled in
/// once the elements are written; strings, symbols and binaries their 8-bit forms when they fit.
public struct AMQPWriter {
    private let base: UnsafeMutableRawPointer
    private let capacity: Int
    public private(set) var count = 0

    /// The bytes `write` produces, in an array of at most `capacity` bytes.
    public static func bytes(capacity: Int, _ write: (inout AMQPWriter) -> Void) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: capacity) { buffer, initialized in
            var w = AMQPWriter(base: UnsafeMutableRawPointer(buffer.baseAddress!), capacity: capacity)
            write(&w)
            initialized = w.count
        }
    }

    /// The most header bytes one string, symbol or binary adds to its content.
    public static let variableHeaderBytes = 5
    /// The bytes a list or map adds besides its elements.
    public static let compoundHeaderBytes = 9
    /// The bytes of a small-ulong descriptor.
    public static let descriptorBytes = 3

    private init(base: UnsafeMutableRawPointer, capacity: Int) {
        self.base = base
        self.capacity = capacity
    }

    /// Where an open list or map starts; `end` fills in its size and count.
    public struct Compound {
        fileprivate let start: Int
    }

    @inline(__always)
    private mutating func room(_ n: Int) -> UnsafeMutableRawPointer {
        precondition(count + n <= capacity, "AMQPWriter: \(count + n) bytes do not fit in \(capacity)")
        defer { count += n }
        return base + count
    }

    public mutating func raw(_ byte: UInt8) { room(1).storeBytes(of: byte, as: UInt8.self) }

    /// Bytes as they are, after a header that announced them.
    public mutating func raw(_ data: UnsafeRawBufferPointer) {
        guard let source = data.baseAddress, data.count > 0 else { return }
        room(data.count).copyMemory(from: source, byteCount: data.count)
    }

    public mutating func null() { raw(0x40) }

    /// The descriptor of a described value with a small ulong code (the message section codes are 0x70–0x78).
    public mutating func descriptor(_ code: UInt8) {
        let p = room(3)
        p.storeBytes(of: 0x00, as: UInt8.self)
        p.storeBytes(of: 0x53, toByteOffset: 1, as: UInt8.self)
        p.storeBytes(of: code, toByteOffset: 2, as: UInt8.self)
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
    public mutating func string(count n: Int, _ fill: (UnsafeMutableRawPointer) -> Void) {
        header(count: n, short: 0xA1, long: 0xB1)
        fill(room(n))
    }

    /// A binary value of `count` bytes that the caller writes next with `raw` (e.g. a body made of several parts).
    public mutating func binaryHeader(count n: Int) { header(count: n, short: 0xA0, long: 0xB0) }

    public mutating func beginList() -> Compound { begin(0xD0) }
    public mutating func beginMap() -> Compound { begin(0xD1) }

    /// Closes a list (`count` elements) or map (`count` = keys + values).
    public mutating func end(_ compound: Compound, count elements: Int) {
        // size counts the bytes after the size field: the count field and the elements.
        let size = UInt32(count - compound.start - 5)
        (base + compound.start + 1).storeBytes(of: size.bigEndian, as: UInt32.self)
        (base + compound.start + 5).storeBytes(of: UInt32(elements).bigEndian, as: UInt32.self)
    }

    private mutating func begin(_ code: UInt8) -> Compound {
        let start = count
        room(9).storeBytes(of: code, as: UInt8.self)
        return Compound(start: start)
    }

    private mutating func variable(_ data: UnsafeRawBufferPointer, short: UInt8, long: UInt8) {
        header(count: data.count, short: short, long: long)
        raw(data)
    }

    private mutating func header(count n: Int, short: UInt8, long: UInt8) {
        if n <= 0xFF {
            let p = room(2)
            p.storeBytes(of: short, as: UInt8.self)
            p.storeBytes(of: UInt8(n), toByteOffset: 1, as: UInt8.self)
        } else {
            let p = room(5)
            p.storeBytes(of: long, as: UInt8.self)
            (p + 1).storeBytes(of: UInt32(n).bigEndian, as: UInt32.self)
        }
    }
}
