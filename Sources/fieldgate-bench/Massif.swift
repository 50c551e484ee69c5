#if canImport(Glibc)
import Glibc
#endif

/// The live heap of a program run under valgrind's massif, by owner: where `daemon-memory --massif` says the
/// anonymous memory goes.
enum Massif {
    /// Allocation wrappers massif sees through, so that each site names the code that asked for the memory.
    static let allocators = ["swift_slowAlloc", "swift_allocObject", "pni_mem_allocate", "pni_mem_zallocate", "pn_class_new",
                             "CRYPTO_malloc", "CRYPTO_zalloc", "CRYPTO_realloc", "CRYPTO_memdup", "CRYPTO_strdup", "strdup"]

    /// valgrind and its arguments to put before `binary`'s own; the copy it runs (without DWARF) goes in `dir`.
    static func prefix(running binary: String, profile: String, dir: String) throws -> (valgrind: String, arguments: [String]) {
        ("/usr/bin/valgrind", ["--tool=massif", "--massif-out-file=\(profile)", "--vgdb=yes", "--threshold=0.1", "--demangle=no"]
            + allocators.map { "--alloc-fn=\($0)" } + [try Callgrind.withoutDebugInfo(binary, in: dir)])
    }

    /// A detailed snapshot of the heap now, into `file` (and ms_print's reading of it into `file`.txt), summed by
    /// owner.
    static func capture(pid: pid_t, into file: String, program: String) throws -> Breakdown {
        guard system("vgdb --pid=\(pid) detailed_snapshot '\(file)' >/dev/null 2>&1") == 0 else {
            throw BenchError("vgdb detailed_snapshot failed (is the program running under massif?)")
        }
        _ = system("ms_print '\(file)' > '\(file).txt' 2>/dev/null")
        return breakdown(snapshot: file, program: program)
    }

    struct Breakdown {
        /// Bytes asked for, and malloc's own overhead as massif counts it.
        var useful = 0, extra = 0
        /// Bytes by owner, most first.
        var owners: [(owner: String, bytes: Int)] = []
    }

    /// Sums a detailed snapshot's allocation sites (the tree's first level) by the library or Swift module of
    /// the function that allocated.
    static func breakdown(snapshot file: String, program: String) -> Breakdown {
        var result = Breakdown()
        var byOwner: [String: Int] = [:]
        for line in (ChildProcess.readFile(file) ?? "").split(separator: "\n") {
            if line.hasPrefix("mem_heap_B=") { result.useful = Int(line.dropFirst(11)) ?? 0 }
            if line.hasPrefix("mem_heap_extra_B=") { result.extra = Int(line.dropFirst(17)) ?? 0 }
            // " n2: 123 0x4A2B: function (in /path/lib.so)": one space deep is an allocation site.
            guard line.hasPrefix(" n"), let colon = line.firstIndex(of: ":") else { continue }
            let rest = line[line.index(after: colon)...].drop { $0 == " " }
            guard let space = rest.firstIndex(of: " "), let bytes = Int(rest[..<space]) else { continue }
            byOwner[owner(of: String(rest[space...]), program: program), default: 0] += bytes
        }
        result.owners = byOwner.sorted { $0.value > $1.value }.map { ($0.key, $0.value) }
        return result
    }

    static func owner(of site: String, program: String) -> String {
        if site.contains("below massif's threshold") { return "sites below 0.1 % each" }
        if site.contains("(in "), let tail = site.split(separator: "(in ").last {
            let path = tail.dropLast()
            let object = String(path.split(separator: "/").last ?? "")
            if !object.hasPrefix(program) && !object.isEmpty { return object }
        }
        let function = site.split(separator: ": ", maxSplits: 1).last.map { String($0) } ?? site
        if function.hasPrefix("$ss") || function.hasPrefix("$sS") { return "Swift standard library" }
        if function.hasPrefix("$s"), let module = swiftModule(function) { return "Swift: \(module)" }
        if function.hasPrefix("_ZN5swift") || function.hasPrefix("swift_") { return "Swift runtime" }
        return "other: " + String(function.prefix { $0 != " " && $0 != "(" }.prefix(40))
    }

    /// `$s6Uplink…` → `Uplink`.
    private static func swiftModule(_ symbol: String) -> String? {
        let digits = symbol.dropFirst(2).prefix { $0.isNumber }
        guard let count = Int(digits) else { return nil }
        let name = symbol.dropFirst(2 + digits.count).prefix(count)
        return name.count == count ? String(name) : nil
    }
}
