import Spool

/// Decodes arbitrary bytes as a spool segment and as a ledger: must never crash, hang or break the scan's
/// invariants (SpoolFuzzing.check).
@_cdecl("LLVMFuzzerTestOneInput")
public func spoolFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    SpoolFuzzing.check(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
