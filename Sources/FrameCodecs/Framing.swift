/// How a byte stream (a serial line) is cut into frames. Pure and incremental: feed bytes as they come, take the
/// frames that completed. Garbage never stalls a framer: an over-long or broken frame is dropped, counted, and
/// the framer resynchronizes on the next delimiter or start marker.
public enum Framing: Sendable, Equatable {
    /// Frames end with `delimiter` (default `\n`; a trailing `\r` is stripped); longer than `maxLength` → dropped.
    case lines(delimiter: UInt8 = 0x0A, maxLength: Int = 1024)
    /// Every frame is exactly `length` bytes.
    case fixed(length: Int)
    /// A big-endian length prefix of `prefixBytes` (1, 2 or 4) bytes, then that many bytes (≤ `maxLength`).
    case lengthPrefixed(prefixBytes: Int, maxLength: Int = 4096)
    /// `start` … `end`; inside, `escape` makes the next byte literal (so start/end/escape can appear in data).
    case markers(start: UInt8, end: UInt8, escape: UInt8?, maxLength: Int = 4096)
}

public struct Framer: Sendable {
    public let framing: Framing
    private var buffer: [UInt8] = []
    private var inFrame = false
    private var escaped = false
    private var discarding = false
    /// Frames dropped for length or structure since the framer was made.
    public private(set) var dropped = 0

    public init(_ framing: Framing) { self.framing = framing }

    /// Feeds bytes; returns the frames they completed, in order.
    public mutating func feed(_ bytes: some Sequence<UInt8>) -> [[UInt8]] {
        var frames: [[UInt8]] = []
        switch framing {
        case .lines(let delimiter, let maxLength):
            for b in bytes {
                if b == delimiter {
                    if discarding { discarding = false } else {
                        if buffer.last == 0x0D { buffer.removeLast() }
                        if !buffer.isEmpty { frames.append(buffer) }
                    }
                    buffer.removeAll(keepingCapacity: true)
                } else if !discarding {
                    buffer.append(b)
                    if buffer.count > maxLength { dropped += 1; discarding = true; buffer.removeAll(keepingCapacity: true) }
                }
            }
        case .fixed(let length):
            for b in bytes {
                buffer.append(b)
                if buffer.count == max(length, 1) { frames.append(buffer); buffer.removeAll(keepingCapacity: true) }
            }
        case .lengthPrefixed(let prefixBytes, let maxLength):
            buffer.append(contentsOf: bytes)
            let p = [1, 2, 4].contains(prefixBytes) ? prefixBytes : 2
            var start = 0
            while buffer.count - start >= p {
                var n = 0
                for i in 0..<p { n = n << 8 | Int(buffer[start + i]) }
                if n > maxLength {
                    // Not a plausible length: skip one byte and look again (resynchronize).
                    dropped += 1
                    start += 1
                    continue
                }
                guard buffer.count - start >= p + n else { break }
                frames.append(Array(buffer[(start + p)..<(start + p + n)]))
                start += p + n
            }
            if start > 0 { buffer.removeFirst(start) }
        case .markers(let startByte, let end, let escape, let maxLength):
            for b in bytes {
                if !inFrame {
                    if b == startByte { inFrame = true; buffer.removeAll(keepingCapacity: true); escaped = false }
                    continue  // noise between frames
                }
                if escaped {
                    buffer.append(b)
                    escaped = false
                } else if let escape, b == escape {
                    escaped = true
                } else if b == end {
                    frames.append(buffer)
                    inFrame = false
                } else if b == startByte {
                    dropped += 1  // an unfinished frame: start over
                    buffer.removeAll(keepingCapacity: true)
                } else {
                    buffer.append(b)
                }
                if inFrame && buffer.count > maxLength { dropped += 1; inFrame = false; buffer.removeAll(keepingCapacity: true) }
            }
        }
        return frames
    }

    /// Wraps `payload` as this framing expects (the write path).
    public func frame(_ payload: [UInt8]) -> [UInt8] {
        switch framing {
        case .lines(let delimiter, _): return payload + [delimiter]
        case .fixed(let length): return Array((payload + [UInt8](repeating: 0, count: max(0, length - payload.count))).prefix(length))
        case .lengthPrefixed(let p, _):
            let n = payload.count
            let prefix: [UInt8] = (0..<([1, 2, 4].contains(p) ? p : 2)).reversed().map { UInt8(truncatingIfNeeded: n >> (8 * $0)) }
            return prefix + payload
        case .markers(let start, let end, let escape, _):
            var out: [UInt8] = [start]
            for b in payload {
                if let escape, b == start || b == end || b == escape { out.append(escape) }
                out.append(b)
            }
            return out + [end]
        }
    }
}
