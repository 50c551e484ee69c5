/// One spooled reading.
public struct SpoolRecord: Sendable, Equatable {
    public var leaf: String
    public var sequence: UInt64
    /// Milliseconds since the Unix epoch when the reading was acquired.
    public var acquiredAtMs: Int64
    public var flags: UInt8
    public var payload: [UInt8]

    public init(leaf: String, sequence: UInt64 = 0, acquiredAtMs: Int64, flags: UInt8 = 0, payload: [UInt8]) {
        self.leaf = leaf
        self.sequence = sequence
        self.acquiredAtMs = acquiredAtMs
        self.flags = flags
        self.payload = payload
    }
}

/// The record frame of Spool.md: `u32 length, u32 crc32c, header, payload`. Pure functions, no I/O.
public enum RecordCodec {
    public static let version: UInt8 = 1
    /// length + crc
    public static let prefixSize = 8
    /// version, flags, leaf length, sequence, acquisition time
    public static let fixedHeaderSize = 1 + 1 + 2 + 8 + 8
    /// Records larger than this are refused (and a length above it in a file is corruption).
    public static let maxRecordSize = 16 * 1024 * 1024

    public static func frameSize(leafBytes: Int, payloadBytes: Int) -> Int {
        prefixSize + fixedHeaderSize + leafBytes + payloadBytes
    }

    /// Appends the frame of `record` to `out`.
    public static func encode(_ record: SpoolRecord, into out: inout [UInt8]) {
        var leaf = record.leaf
        leaf.withUTF8 { leafBytes in
            let bodyLength = fixedHeaderSize + leafBytes.count + record.payload.count
            let start = out.count
            out.append(contentsOf: repeatElement(0, count: prefixSize + bodyLength))
            out.withUnsafeMutableBytes { raw in
                let frame = UnsafeMutableRawBufferPointer(rebasing: raw[start...])
                frame.storeBytes(of: UInt32(bodyLength).littleEndian, toByteOffset: 0, as: UInt32.self)
                frame[8] = version
                frame[9] = record.flags
                frame.storeBytes(of: UInt16(leafBytes.count).littleEndian, toByteOffset: 10, as: UInt16.self)
                frame.storeBytes(of: record.sequence.littleEndian, toByteOffset: 12, as: UInt64.self)
                frame.storeBytes(of: UInt64(bitPattern: record.acquiredAtMs).littleEndian, toByteOffset: 20, as: UInt64.self)
                let leafAt = prefixSize + fixedHeaderSize
                UnsafeMutableRawBufferPointer(rebasing: frame[leafAt..<(leafAt + leafBytes.count)]).copyMemory(from: UnsafeRawBufferPointer(leafBytes))
                record.payload.withUnsafeBytes { p in
                    UnsafeMutableRawBufferPointer(rebasing: frame[(leafAt + leafBytes.count)...]).copyMemory(from: p)
                }
                let crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: frame[prefixSize..<(prefixSize + bodyLength)]))
                frame.storeBytes(of: crc.littleEndian, toByteOffset: 4, as: UInt32.self)
            }
        }
    }

    public enum Decoded: Equatable {
        case record(SpoolRecord, frameSize: Int)
        /// Fewer bytes than a whole frame: a torn tail if at the end of a file.
        case truncated
        /// A bad length, CRC or version.
        case corrupt
    }

    /// Decodes the frame starting at `offset` of `bytes`. With `payload: false` the CRC is still checked but the
    /// payload is not copied (recovery only needs headers).
    public static func decode(_ bytes: UnsafeRawBufferPointer, at offset: Int, payload: Bool = true) -> Decoded {
        guard offset + prefixSize <= bytes.count else { return .truncated }
        let length = Int(read32(bytes, offset))
        guard length >= fixedHeaderSize, length <= maxRecordSize else { return .corrupt }
        guard offset + prefixSize + length <= bytes.count else { return .truncated }
        let body = UnsafeRawBufferPointer(rebasing: bytes[(offset + prefixSize)..<(offset + prefixSize + length)])
        guard CRC32C.checksum(body) == read32(bytes, offset + 4) else { return .corrupt }
        guard body[0] == version else { return .corrupt }
        let leafLength = Int(body[2]) | Int(body[3]) << 8
        guard fixedHeaderSize + leafLength <= length else { return .corrupt }
        let leafStart = fixedHeaderSize
        let leaf = String(decoding: UnsafeRawBufferPointer(rebasing: body[leafStart..<(leafStart + leafLength)]), as: UTF8.self)
        let record = SpoolRecord(
            leaf: leaf, sequence: read64(body, 4), acquiredAtMs: Int64(bitPattern: read64(body, 12)), flags: body[1],
            payload: payload ? Array(UnsafeRawBufferPointer(rebasing: body[(leafStart + leafLength)...])) : [])
        return .record(record, frameSize: prefixSize + length)
    }

    public static func decode(_ bytes: [UInt8], at offset: Int = 0) -> Decoded {
        bytes.withUnsafeBytes { decode($0, at: offset) }
    }

    static func append32(_ v: UInt32, to out: inout [UInt8]) {
        for i in 0..<4 { out.append(UInt8((v >> (8 * UInt32(i))) & 0xFF)) }
    }

    static func append64(_ v: UInt64, to out: inout [UInt8]) {
        for i in 0..<8 { out.append(UInt8((v >> (8 * UInt64(i))) & 0xFF)) }
    }

    static func read32(_ b: UnsafeRawBufferPointer, _ at: Int) -> UInt32 {
        UInt32(b[at]) | UInt32(b[at + 1]) << 8 | UInt32(b[at + 2]) << 16 | UInt32(b[at + 3]) << 24
    }

    static func read64(_ b: UnsafeRawBufferPointer, _ at: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<8 { v |= UInt64(b[at + i]) << (8 * UInt64(i)) }
        return v
    }
}
