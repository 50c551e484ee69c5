/// Bytes in memory of their own, written while they are made and only read after, so that views into them can be
/// handed out as pointers (valid while the owner lives) instead of an array retained and borrowed through a closure
/// for each look. The spool's fetched batches and the uplink's rewritten envelopes keep their bytes this way.
public final class OwnedBytes: @unchecked Sendable {
    /// All `count` bytes, for the maker to fill.
    public let bytes: UnsafeMutableRawBufferPointer

    /// `count` bytes, uninitialized: the maker fills them before anyone reads them.
    public init(count: Int) {
        let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: Swift.max(1, count), alignment: 8)
        bytes = UnsafeMutableRawBufferPointer(rebasing: storage[..<count])
    }

    /// A copy of `source`.
    public convenience init(copying source: [UInt8]) {
        self.init(count: source.count)
        source.withUnsafeBytes { if let base = $0.baseAddress { bytes.baseAddress!.copyMemory(from: base, byteCount: $0.count) } }
    }

    public var contents: UnsafeRawBufferPointer { UnsafeRawBufferPointer(bytes) }

    deinit { bytes.baseAddress!.deallocate() }
}
