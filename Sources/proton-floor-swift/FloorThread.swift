import CProtonFloor

#if canImport(Glibc)
import Glibc
#endif

/// The floor's thread: proton-floor's loop with this program's arguments. Outside main.swift so that it is not
/// isolated to the main actor (the runtime checks that isolation on entry, and this runs on a thread of its own).
func runFloor(_: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    exit(proton_floor_main(CommandLine.argc, CommandLine.unsafeArgv))
}
