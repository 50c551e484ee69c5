import FrameCodecs

/// Frames and decodes arbitrary serial input, cut at an arbitrary point (FrameFuzzing.check).
@_cdecl("LLVMFuzzerTestOneInput")
public func frameFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    FrameFuzzing.check(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
