import FieldgateCore

#if canImport(Glibc)
import Glibc
#endif

/// A program run under callgrind, counted between points the benchmark chooses (`zero`, then `total`).
struct Callgrind {
    let profile: String

    /// valgrind and its arguments to put before `binary`'s own. Valgrind 3.19 cannot read the DWARF 5 that Swift
    /// writes, so it runs a copy without it, in `dir` (symbols stay, for profiles).
    static func prefix(running binary: String, profile: String, dir: String, extra: [String] = []) throws -> (valgrind: String, arguments: [String]) {
        guard system("rm -f '\(profile)'*") == 0 else { throw BenchError("cannot remove \(profile)") }
        return ("/usr/bin/valgrind", ["--tool=callgrind", "--callgrind-out-file=\(profile)"] + extra + [try withoutDebugInfo(binary, in: dir)])
    }

    /// A copy of `binary` without its DWARF, in `dir`, for any valgrind tool.
    static func withoutDebugInfo(_ binary: String, in dir: String) throws -> String {
        let stripped = dir + "/" + (binary.split(separator: "/").last.map(String.init) ?? "program") + "-nodebug"
        guard system("mkdir -p '\(dir)'; strip --strip-debug -o '\(stripped)' '\(binary)'") == 0 else {
            throw BenchError("strip --strip-debug \(binary) failed")
        }
        return stripped
    }

    /// Counting starts over now.
    static func zero(pid: pid_t) throws {
        guard system("callgrind_control -z \(pid) >/dev/null 2>&1") == 0 else { throw BenchError("callgrind_control -z failed") }
    }

    /// Instructions since the start (or the last `zero`): a dump, read back from `<profile>.1`.
    static func total(pid: pid_t, profile: String) async throws -> Double {
        guard system("callgrind_control -d \(pid) >/dev/null 2>&1") == 0 else { throw BenchError("callgrind_control -d failed") }
        for _ in 0..<600 {
            for line in (ChildProcess.readFile(profile + ".1") ?? "").split(separator: "\n") where line.hasPrefix("totals:") || line.hasPrefix("summary:") {
                if let total = Double(line.split(separator: " ").last ?? "") { return total }
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw BenchError("no callgrind dump in \(profile).1")
    }
}

extension Callgrind {
    /// The functions of `object` (a path suffix) that executed, with their own instructions, most first. Reads a
    /// profile written with `--demangle=no`, so the names are the symbols as the linker sees them. Callgrind
    /// compresses names (`fn=(12) name` once, then `fn=(12)`); the cost line after `calls=` is the callee's, not
    /// the caller's own.
    static func executedFunctions(profile: String, object: String) -> [(symbol: String, instructions: Int)] {
        var objects: [String: String] = [:], functions: [String: String] = [:]
        var objectOf: [String: String] = [:]
        var own: [String: Int] = [:]
        var currentObject = "", currentFunction = ""
        var nextIsCallCost = false
        for line in (ChildProcess.readFile(profile) ?? "").split(separator: "\n") {
            if let eq = line.firstIndex(of: "="), line[line.startIndex] != " " {
                let key = line[..<eq]
                let value = line[line.index(after: eq)...]
                func resolve(_ table: inout [String: String]) -> String {
                    guard value.hasPrefix("("), let close = value.firstIndex(of: ")") else { return String(value) }
                    let id = String(value[value.index(after: value.startIndex)..<close])
                    let rest = value[value.index(after: close)...].drop { $0 == " " }
                    if !rest.isEmpty { table[id] = String(rest) }
                    return table[id] ?? ""
                }
                switch key {
                case "ob": currentObject = resolve(&objects)
                case "cob": _ = resolve(&objects)
                case "fn":
                    currentFunction = resolve(&functions)
                    objectOf[currentFunction] = currentObject
                case "cfn": _ = resolve(&functions)
                case "calls": nextIsCallCost = true
                default: break
                }
                continue
            }
            guard let first = line.first, first.isNumber || first == "+" || first == "-" || first == "*" else { continue }
            if nextIsCallCost { nextIsCallCost = false; continue }
            let fields = line.split(separator: " ")
            if fields.count >= 2, let cost = Int(fields[1]) { own[currentFunction, default: 0] += cost }
        }
        return own.filter { $0.value > 0 && (objectOf[$0.key] ?? "").hasSuffix(object) }
            .map { (symbol: $0.key, instructions: $0.value) }
            .sorted { $0.instructions != $1.instructions ? $0.instructions > $1.instructions : $0.symbol < $1.symbol }
    }
}
