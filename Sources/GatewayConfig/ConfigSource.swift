import FieldgateCore
import TOMLKit

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// One configuration problem, as the operator must read it: `file:line: what is wrong and how to fix it`.
public struct ConfigProblem: Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var line: Int?
    public var message: String

    public var description: String { line.map { "\(file):\($0): \(message)" } ?? "\(file): \(message)" }
}

/// Every problem found in a configuration (docs/contracts.md §6). fieldgated exits 78 (EX_CONFIG) with it;
/// `fieldgatectl config check` prints it.
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    public var problems: [ConfigProblem]
    init(_ problems: [ConfigProblem]) { self.problems = problems }
    init(file: String, line: Int? = nil, _ message: String) { problems = [ConfigProblem(file: file, line: line, message: message)] }
    public var isRetriable: Bool { false }
    public var description: String { problems.map(\.description).joined(separator: "\n") }
}

/// A parsed TOML file and where its keys are, so a problem found after parsing still names its line.
struct ConfigSource {
    let path: String
    let table: TOMLTable
    private let index: LineIndex

    /// Where the keys are, worked out from the text only once a line is asked for (a problem to report): loading a
    /// thousand leaves does not pay for a map of every key.
    private final class LineIndex {
        let text: String
        lazy var lines: [String: Int] = ConfigSource.locate(text)
        init(_ text: String) { self.text = text }
    }

    private init(path: String, table: TOMLTable, text: String) {
        self.path = path
        self.table = table
        self.index = LineIndex(text)
    }

    /// A file that could not be read, standing in so the other files are still checked.
    static func empty(path: String) -> ConfigSource { ConfigSource(path: path, table: TOMLTable(), text: "") }

    static func read(_ path: String) throws(ConfigError) -> ConfigSource {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(file: path, "cannot read the file (does it exist, and may fieldgate read it?)")
        }
        let text = String(decoding: data, as: UTF8.self)
        do {
            return ConfigSource(path: path, table: try TOMLTable(string: text), text: text)
        } catch let e as TOMLParseError {
            throw ConfigError(file: path, line: e.source.begin.line, "\(e.description) (TOML syntax, column \(e.source.begin.column))")
        } catch {
            throw ConfigError(file: path, "\(error)")
        }
    }

    /// The line of a key path (`hub.port`, `leaf[2].adapter`, `leaf[2]`), or of the nearest enclosing table.
    func line(_ keyPath: String) -> Int? {
        var path = keyPath
        while !path.isEmpty {
            if let l = index.lines[path] { return l }
            guard let cut = path.lastIndex(where: { $0 == "." || $0 == "[" }) else { break }
            path = String(path[..<cut])
        }
        return nil
    }

    func problem(_ keyPath: String, _ message: String) -> ConfigProblem {
        ConfigProblem(file: path, line: line(keyPath), message: message)
    }

    /// Frees parsed documents once a load is over. TOMLKit never frees one (its tables have no deinit, its C layer
    /// no free function): a thousand leaves' files stayed in memory for good (~0.8 MB), and as much again on every
    /// reload. Clearing a root table frees every node under it; the root's few bytes stay. Nothing taken from these
    /// tables may be used afterwards: a load returns decoded Swift values only, and a problem's line comes from the
    /// text, not the table.
    static func free(_ tables: [TOMLTable]) {
        for table in tables { table.clear() }
    }

    /// Maps key paths to lines by reading table headers and `key =` lines (enough for error messages; values
    /// spanning lines are skipped over for multi-line strings).
    static func locate(_ text: String) -> [String: Int] {
        var result: [String: Int] = [:]
        var table = ""
        var arrayCounts: [String: Int] = [:]
        var inMultiline: String?
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmed()
            if let delimiter = inMultiline {
                if line.contains(delimiter) { inMultiline = nil }
                continue
            }
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("[["), let end = line.firstRange(of: "]]") {
                let name = unquote(String(line[line.index(line.startIndex, offsetBy: 2)..<end.lowerBound]))
                let index = arrayCounts[name, default: 0]
                arrayCounts[name] = index + 1
                table = "\(name)[\(index)]"
                result[table] = n + 1
            } else if line.hasPrefix("["), let end = line.firstIndex(of: "]") {
                table = unquote(String(line[line.index(after: line.startIndex)..<end]))
                result[table] = n + 1
            } else if let eq = line.firstIndex(of: "=") {
                let key = unquote(String(line[..<eq]))
                result[table.isEmpty ? key : table + "." + key] = n + 1
                let value = line[line.index(after: eq)...]
                for d in ["\"\"\"", "'''"] where value.ranges(of: d).count == 1 { inMultiline = d }
            }
        }
        return result
    }

    private static func unquote(_ s: String) -> String {
        s.split(separator: ".").map { $0.trimmed().trimmed { $0 == "\"" || $0 == "'" } }.joined(separator: ".")
    }
}
