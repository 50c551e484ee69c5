#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import FieldgateCore
import TOMLKit

/// An IoT Hub connection string as the portal and `az iot hub device-identity connection-string show` print it:
/// a device's (`HostName=…;DeviceId=…;SharedAccessKey=…`) or a hub policy's
/// (`HostName=…;SharedAccessKeyName=…;SharedAccessKey=…`).
public struct HubConnectionString: Sendable, Equatable {
    public var hostName: String
    public var deviceID: String?
    public var keyName: String?
    public var key: String
    /// An IoT Edge child's `GatewayHostName=…`: noted, not needed (fieldgate is the gateway).
    public var gatewayHostName: String?

    public enum Problem: Error, Sendable, Equatable, CustomStringConvertible {
        case malformed(String)
        case missing(String)
        case unsupported(String)

        public var description: String {
            switch self {
            case .malformed(let part): "the connection string has a part without '=' (\(part)); paste it whole, as az or the portal print it"
            case .missing(let what): "the connection string has no \(what); expected HostName=…;DeviceId=…;SharedAccessKey=… (a device) or HostName=…;SharedAccessKeyName=…;SharedAccessKey=… (a hub policy)"
            case .unsupported(let what): what
            }
        }
    }

    public init(hostName: String, deviceID: String? = nil, keyName: String? = nil, key: String) {
        self.hostName = hostName
        self.deviceID = deviceID
        self.keyName = keyName
        self.key = key
    }

    /// Parses one; keys are matched without regard to case (as the SDKs do), values are kept as written (a key's
    /// base64 may end in '=').
    public static func parse(_ text: String) throws(Problem) -> HubConnectionString {
        var fields: [String: String] = [:]
        let unquoted = text.trimmed().trimmed(while: { $0 == "\"" || $0 == "'" })
        for part in unquoted.split(separator: ";", omittingEmptySubsequences: true) {
            guard let eq = part.firstIndex(of: "=") else { throw .malformed(String(part.prefix(20))) }
            fields[part[..<eq].trimmed().lowercased()] = String(part[part.index(after: eq)...]).trimmed()
        }
        if fields["x509"]?.lowercased() == "true" {
            throw .unsupported("this is an X.509 device (x509=true): fieldgate authenticates with symmetric keys; use a device with a SharedAccessKey")
        }
        guard let host = fields["hostname"], !host.isEmpty else { throw .missing("HostName") }
        guard let key = fields["sharedaccesskey"], !key.isEmpty else { throw .missing("SharedAccessKey") }
        guard fields["deviceid"] != nil || fields["sharedaccesskeyname"] != nil else { throw .missing("DeviceId or SharedAccessKeyName") }
        if fields["moduleid"] != nil { throw .unsupported("this is a module's connection string (ModuleId=…): use the device's own") }
        var c = HubConnectionString(hostName: host, deviceID: fields["deviceid"], keyName: fields["sharedaccesskeyname"], key: key)
        c.gatewayHostName = fields["gatewayhostname"]
        guard c.isValidKey else { throw .unsupported("SharedAccessKey is not base64: paste the key exactly as printed") }
        return c
    }

    /// IoT Hub keys are base64 of 16 to 64 bytes.
    public var isValidKey: Bool { Self.isValidKey(key) }

    public static func isValidKey(_ key: String) -> Bool {
        let base64 = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
        return key.count % 4 == 0 && (20...100).contains(key.count) && key.allSatisfy { base64.contains($0) }
    }
}

/// Changes TOML files the way an operator would by hand: one key's line replaced or added in its table, the rest of
/// the file (comments, order, other tables) left exactly as it was. Used by `fieldgatectl connect` and `leaf`.
public struct TOMLTextEditor: Sendable {
    public private(set) var text: String

    public init(_ text: String) { self.text = text }

    /// `table.key = value` (value already in TOML syntax, e.g. `"x"` or `5671`): replaces the key's line in `[table]`,
    /// or, where the table has only a commented-out `# key = …` default, adds the line right under it (the reference's
    /// comment stays beside it), or adds the line at the end of the table, or the table at the end of the file.
    public mutating func set(_ table: String, _ key: String, _ value: String) {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let assignment = "\(Self.quoteKey(key)) = \(value)"
        guard let (start, end) = Self.section(table, in: lines) else {
            while lines.last == "" { lines.removeLast() }
            if !lines.isEmpty { lines.append("") }
            lines += ["[\(table)]", assignment, ""]
            text = lines.joined(separator: "\n")
            return
        }
        if let i = (start..<end).first(where: { Self.keyOf(lines[$0]) == key }) {
            lines[i] = assignment
        } else if let i = (start..<end).first(where: { Self.keyOf(Self.uncommented(lines[$0])) == key && lines[$0].trimmed().hasPrefix("#") }) {
            lines.insert(assignment, at: i + 1)  // right under the reference's commented default
        } else {
            var at = end
            while at > start && lines[at - 1].trimmed().isEmpty { at -= 1 }
            lines.insert(assignment, at: at)
        }
        text = lines.joined(separator: "\n")
    }

    /// Removes `table.key`'s line; false when it was not there.
    @discardableResult public mutating func remove(_ table: String, _ key: String) -> Bool {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard let (start, end) = Self.section(table, in: lines), let i = (start..<end).first(where: { Self.keyOf(lines[$0]) == key }) else { return false }
        lines.remove(at: i)
        text = lines.joined(separator: "\n")
        return true
    }

    /// A TOML basic string.
    public static func string(_ s: String) -> String {
        var out = "\""
        for ch in s.unicodeScalars {
            switch ch {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case _ where ch.value < 0x20 || ch.value == 0x7f: out += unicodeEscape(ch.value)
            default: out.unicodeScalars.append(ch)
            }
        }
        return out + "\""
    }

    private static func quoteKey(_ key: String) -> String {
        let bare = key.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }
        return bare && !key.isEmpty ? key : string(key)
    }

    /// The body of `[table]` (lines after its header up to the next header), if the file has it.
    private static func section(_ table: String, in lines: [String]) -> (Int, Int)? {
        guard let header = lines.firstIndex(where: { tableHeader($0) == table }) else { return nil }
        let end = lines[(header + 1)...].firstIndex(where: { tableHeader($0) != nil }) ?? lines.count
        return (header + 1, end)
    }

    private static func tableHeader(_ line: String) -> String? {
        let t = line.trimmed()
        guard t.hasPrefix("["), let close = t.firstIndex(of: "]") else { return nil }
        let inner = t[t.index(after: t.startIndex)..<close]
        return inner.hasPrefix("[") ? String(inner.dropFirst()).trimmed() : String(inner).trimmed()
    }

    /// The key a `key = value` line assigns: a bare key, or a quoted one ("…" with escapes, '…' literal), which may
    /// hold `=` and quotes (device ids can).
    public static func keyOf(_ line: String) -> String? {
        let t = Substring(line.trimmed())
        guard let first = t.first, first != "#", first != "[" else { return nil }
        var key = ""
        var rest: Substring
        if first == "\"" || first == "'" {
            var i = t.index(after: t.startIndex)
            var closed = false
            while i < t.endIndex {
                let c = t[i]
                if c == first { closed = true; break }
                if first == "\"", c == "\\" {
                    i = t.index(after: i)
                    guard i < t.endIndex else { return nil }
                    switch t[i] {
                    case "n": key.append("\n")
                    case "t": key.append("\t")
                    default: key.append(t[i])  // \" and \\ (\u escapes do not occur in device ids)
                    }
                } else {
                    key.append(c)
                }
                i = t.index(after: i)
            }
            guard closed else { return nil }
            rest = t[t.index(after: i)...]
        } else {
            guard let end = t.firstIndex(where: { $0 == "=" || $0 == " " || $0 == "\t" }) else { return nil }
            key = String(t[..<end])
            rest = t[end...]
        }
        guard rest.drop(while: { $0 == " " || $0 == "\t" }).first == "=", !key.isEmpty else { return nil }
        return key
    }

    /// Whether the file has a `[table]` header (however it is spaced or commented after).
    public func hasTable(_ table: String) -> Bool {
        text.split(separator: "\n", omittingEmptySubsequences: false).contains { Self.tableHeader(String($0)) == table }
    }

    private static func uncommented(_ line: String) -> String {
        String(line.trimmed().drop { $0 == "#" || $0 == " " })
    }
}

private func unicodeEscape(_ value: UInt32) -> String {
    let hex = String(value, radix: 16, uppercase: true)
    return "\\u" + String(repeating: "0", count: Swift.max(0, 4 - hex.count)) + hex
}

/// Where each `[[leaf]]` is written, for `fieldgatectl leaf`: the main file and every devices.d file that parses.
public struct LeafLocation: Sendable, Equatable {
    public var deviceID: String
    public var adapter: String
    public var file: String
    public var line: Int?
    /// How many leaves that file holds.
    public var leavesInFile: Int
    /// The file holds this leaf and nothing else (no other leaf, port or bus): removing it removes only the leaf.
    public var fileHoldsOnlyIt: Bool
    /// The name of its key in the secrets' [keys], when it authenticates with one.
    public var keyName: String?

    public static func all(configPath: String) -> [LeafLocation] {
        let directory = directoryOf(configPath).isEmpty ? "." : directoryOf(configPath)
        let devices = directory + "/devices.d"
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: devices)) ?? []).filter { $0.hasSuffix(".toml") }.sorted()
        var out: [LeafLocation] = []
        for path in [configPath] + names.map({ devices + "/" + $0 }) {
            guard let source = try? ConfigSource.read(path), let leaves = source.table["leaf"]?.array else { continue }
            let tables = leaves.compactMap(\.table)
            for (i, t) in tables.enumerated() {
                guard let id = t["device_id"]?.string else { continue }
                let credential = t["credential"]?.string ?? "key"
                let onlyIt = tables.count == 1 && source.table.keys.allSatisfy { $0 == "leaf" }
                out.append(LeafLocation(deviceID: id, adapter: t["adapter"]?.string ?? "?", file: path, line: source.line("leaf[\(i)]"),
                                        leavesInFile: tables.count, fileHoldsOnlyIt: onlyIt,
                                        keyName: credential == "key" ? (t["key_ref"]?.string ?? id) : nil))
            }
        }
        return out
    }
}

extension GatewaySettings {
    /// The secrets file this configuration names (`[secrets] file`), or secrets.toml beside it; as `load` reads it.
    public static func secretsPath(configPath: String) -> String {
        let directory = directoryOf(configPath)
        let named = (try? ConfigSource.read(configPath))?.table["secrets"]?.table?["file"]?.string
        return named ?? (directory.isEmpty ? "." : directory) + "/secrets.toml"
    }
}
