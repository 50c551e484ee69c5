import UDPAdapter

/// Decodes arbitrary datagrams from several sources: must never crash or attribute a reading to a leaf the source
/// may not speak for (UDPFuzzing.check).
@_cdecl("LLVMFuzzerTestOneInput")
public func udpFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    UDPFuzzing.check(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
