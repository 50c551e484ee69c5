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
/// Version 2 (written) keeps the header small — varints — because a 200 B reading paid 28 B of framing besides its
/// leaf id in version 1, about 20 in version 2 (the spool's write amplification, issue 3). Version 1 records
/// (spools written before) still decode.
public enum RecordCodec {
    public static let version: UInt8 = 2
    /// length + crc
    public static let prefixSize = 8
    /// The smallest valid header: version, flags, and one byte each for sequence, time and leaf length.
    public static let minimumHeaderSize = 5
    /// Version 1's header: version, flags, u16 leaf length, u64 sequence, i64 acquisition time.
    static let version1HeaderSize = 1 + 1 + 2 + 8 + 8
    /// The largest version-2 header before the leaf bytes (varints at their longest).
    static let maximumHeaderSize = 1 + 1 + 10 + 10 + 3
    /// Records larger than this are refused (and a length above it in a file is corruption).
    public static let maxRecordSize = 16 * 1024 * 1024

    /// An upper bound of a record's frame size (the exact size depends on its sequence and time).
    public static func frameSize(leafBytes: Int, payloadBytes: Int) -> Int {
        prefixSize + maximumHeaderSize + leafBytes + payloadBytes
    }

    /// Appends the frame of `record` to `out`: version 2, `u8 version, u8 flags, varint sequence, varint zigzag
    /// acquisition time, varint leaf length, leaf, payload`.
    public static func encode(_ record: SpoolRecord, into out: inout [UInt8]) {
        var leaf = record.leaf
        leaf.withUTF8 { leafBytes in
            record.payload.withUnsafeBytes { payload in
                let bound = frameSize(leafBytes: leafBytes.count, payloadBytes: payload.count)
                let start = out.count
                out.append(contentsOf: repeatElement(0, count: bound))
                let size = out.withUnsafeMutableBytes { raw in
                    encode(leaf: UnsafeRawBufferPointer(leafBytes), sequence: record.sequence, acquiredAtMs: record.acquiredAtMs,
                           flags: record.flags, payload: payload, to: raw.baseAddress! + start)
                }
                out.removeLast(bound - size)
            }
        }
    }

    /// Writes one frame at `out`, which has room for `frameSize(leafBytes:payloadBytes:)` bytes; returns its size.
    /// The spool's append path: a batch is framed straight into one buffer, with no record values in between.
    static func encode(leaf: UnsafeRawBufferPointer, sequence: UInt64, acquiredAtMs: Int64, flags: UInt8, payload: UnsafeRawBufferPointer,
                       to out: UnsafeMutableRawPointer) -> Int {
        var at = prefixSize
        out.storeBytes(of: version, toByteOffset: at, as: UInt8.self)
        out.storeBytes(of: flags, toByteOffset: at + 1, as: UInt8.self)
        at += 2
        at += Varint.write(sequence, to: out + at)
        at += Varint.write(Varint.zigzag(acquiredAtMs), to: out + at)
        at += Varint.write(UInt64(leaf.count), to: out + at)
        if let bytes = leaf.baseAddress { (out + at).copyMemory(from: bytes, byteCount: leaf.count) }
        at += leaf.count
        if let bytes = payload.baseAddress { (out + at).copyMemory(from: bytes, byteCount: payload.count) }
        at += payload.count
        let body = UnsafeRawBufferPointer(start: out + prefixSize, count: at - prefixSize)
        out.storeBytes(of: UInt32(body.count).littleEndian, toByteOffset: 0, as: UInt32.self)
        out.storeBytes(of: CRC32C.checksum(body).littleEndian, toByteOffset: 4, as: UInt32.self)
        return at
    }

    public enum Decoded: Equatable {
        case record(SpoolRecord, frameSize: Int)
        /// Fewer bytes than a whole frame: a torn tail if at the end of a file.
        case truncated
        /// A bad length, CRC or version.
        case corrupt
    }

    /// A frame's header fields, and where its leaf and payload lie in the bytes it was decoded from.
    struct FrameView: Equatable {
        var sequence: UInt64
        var acquiredAtMs: Int64
        var flags: UInt8
        var leaf: Range<Int>
        var payload: Range<Int>
        var frameSize: Int
    }

    enum DecodedView: Equatable {
        case record(FrameView)
        case truncated
        case corrupt
    }

    /// Checks the frame starting at `offset` of `bytes` (length, CRC, version) and locates its parts, copying
    /// nothing: the reading path's decode (a payload array per record cost a malloc, a copy and a free).
    static func decodeView(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> DecodedView {
        guard offset + prefixSize <= bytes.count else { return .truncated }
        let length = Int(read32(bytes, offset))
        guard length >= minimumHeaderSize, length <= maxRecordSize else { return .corrupt }
        guard offset + prefixSize + length <= bytes.count else { return .truncated }
        let start = offset + prefixSize, end = start + length
        let body = UnsafeRawBufferPointer(rebasing: bytes[start..<end])
        guard CRC32C.checksum(body) == read32(bytes, offset + 4) else { return .corrupt }
        switch body[0] {
        case 2:
            var at = 2
            guard let sequence = Varint.readHeaderValue(body, &at, end: body.count), let time = Varint.readHeaderValue(body, &at, end: body.count),
                  let leafLength = Varint.read(body, &at, end: body.count), leafLength <= UInt64(body.count - at) else { return .corrupt }
            let leafEnd = start + at + Int(leafLength)
            return .record(FrameView(sequence: sequence, acquiredAtMs: Varint.unzigzag(time), flags: body[1], leaf: (start + at)..<leafEnd,
                                     payload: leafEnd..<end, frameSize: prefixSize + length))
        case 1:
            guard length >= version1HeaderSize else { return .corrupt }
            let leafLength = Int(body[2]) | Int(body[3]) << 8
            guard version1HeaderSize + leafLength <= length else { return .corrupt }
            let leafStart = start + version1HeaderSize
            return .record(FrameView(sequence: read64(body, 4), acquiredAtMs: Int64(bitPattern: read64(body, 12)), flags: body[1],
                                     leaf: leafStart..<(leafStart + leafLength), payload: (leafStart + leafLength)..<end,
                                     frameSize: prefixSize + length))
        default:
            return .corrupt
        }
    }

    /// Decodes the frame starting at `offset` of `bytes`. With `payload: false` the CRC is still checked but the
    /// payload is not copied (recovery only needs headers).
    public static func decode(_ bytes: UnsafeRawBufferPointer, at offset: Int, payload: Bool = true) -> Decoded {
        switch decodeView(bytes, at: offset) {
        case .truncated: return .truncated
        case .corrupt: return .corrupt
        case .record(let v):
            let leaf = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[v.leaf]), as: UTF8.self)
            let record = SpoolRecord(leaf: leaf, sequence: v.sequence, acquiredAtMs: v.acquiredAtMs, flags: v.flags,
                                     payload: payload ? Array(UnsafeRawBufferPointer(rebasing: bytes[v.payload])) : [])
            return .record(record, frameSize: v.frameSize)
        }
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

    /// Little-endian, at `at` (the caller checked that the bytes are there).
    static func read32(_ b: UnsafeRawBufferPointer, _ at: Int) -> UInt32 {
        UInt32(littleEndian: b.loadUnaligned(fromByteOffset: at, as: UInt32.self))
    }

    static func read64(_ b: UnsafeRawBufferPointer, _ at: Int) -> UInt64 {
        UInt64(littleEndian: b.loadUnaligned(fromByteOffset: at, as: UInt64.self))
    }
}
