import CProtonFloor

#if canImport(Glibc)
import Glibc
#endif

// proton-floor inside a Swift program (`fieldgate-bench daemon-memory --floor`). The C floor runs on a thread of its
// own (a blocking loop, kept off the cooperative pool) while the Swift runtime does what any Swift daemon's does when
// idle, and no more: one task that wakes every second, the pace at which fieldgated's supervisor feeds the watchdog.
// What this program holds resident above proton-floor is the Swift runtime's share: the code those wake-ups run
// (mapped in 64 KiB neighbourhoods, like all code), its writable data and its threads. The C floor gives back the
// start-up pages of every mapping, this binary's included, by fieldgated's rule.

proton_floor_limit_arenas()  // before the floor's thread allocates, as fieldgated limits them before its threads do
var floorThread = pthread_t()
let created = pthread_create(&floorThread, nil, runFloor, nil)
guard created == 0 else { fatalError("cannot start the floor's thread (error \(created))") }
var wakes = 0
while true {
    try await Task.sleep(for: .seconds(1))
    wakes &+= 1
}
