// The child of the spool crash tests: appends and acknowledges forever, printing what the spool confirmed
// ("A first count round tag ms" after an append returned — ms on CLOCK_MONOTONIC, the payloads are
// "payload-<tag>-<round>-<i>" —, "D seq" when the spool's durable mark moved, and "K seq…" after an
// acknowledgement returned), one flushed line each.
// The parent SIGKILLs it at a random instant (and may cut the power of its file system) and checks the reopened
// spool (Tests/SpoolTests/CrashTests.swift, PowerCutTests.swift).
import Spool

#if canImport(Glibc)
import Glibc
#endif

let args = CommandLine.arguments
guard args.count >= 3 else {
    print("usage: spool-harness DIR always|interval [TAG]")
    exit(2)
}
var config = SpoolConfiguration(directory: args[1])
config.segmentBytes = 64 * 1024
config.sync = args[2] == "always" ? .always : .interval(milliseconds: 50)
let spool: Spool
do { spool = try Spool(configuration: config) } catch {
    print("E \(error)")
    exit(1)
}
let tag = args.count > 3 ? args[3] : "0"
func monotonicMilliseconds() -> Int64 {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Int64(t.tv_sec) * 1000 + Int64(t.tv_nsec) / 1_000_000
}
var g = SystemRandomNumberGenerator()
var round = 0
var lastDurable: UInt64 = 0
while true {
    round += 1
    let count = Int.random(in: 1...20, using: &g)
    let entries = (0..<count).map { i in
        Spool.Entry(leaf: "leaf-\((round + i) % 5)", acquiredAtMs: Int64(round), payload: Array("payload-\(tag)-\(round)-\(i)".utf8))
    }
    guard let seqs = try? spool.append(entries) else { exit(1) }
    print("A \(seqs[0]) \(seqs.count) \(round) \(tag) \(monotonicMilliseconds())")
    // "D seq": the spool says everything up to seq is on disk (its last completed sync round).
    let durable = spool.durableSequence
    if durable != lastDurable {
        lastDurable = durable
        print("D \(durable)")
    }
    fflush(nil)
    if round % 3 == 0, let taken = try? spool.next(max: 8) {
        // "N": about to acknowledge (after a kill these may or may not be gone); "K": acknowledged.
        print("N " + taken.map { String($0.sequence) }.joined(separator: " "))
        fflush(nil)
        try? spool.acknowledge(taken.map(\.sequence))
        print("K " + taken.map { String($0.sequence) }.joined(separator: " "))
        fflush(nil)
    }
}
