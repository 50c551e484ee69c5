import TOMLKit

/// What each table of the configuration may hold. Checked before decoding, so every unknown key and wrong type is
/// reported at once, with its line (a typo must not be ignored silently: docs/contracts.md §7).
indirect enum FieldType: Sendable {
    case string, int, bool, number, strings, stringMap
    /// An integer or a string (a register address: 0-based, or Modicon notation).
    case intOrString
    /// A table whose keys are names chosen by the operator (checked by its user).
    case anyTable
    case table(Schema)
    case tables(Schema)

    var name: String {
        switch self {
        case .string: "a string"
        case .int: "an integer"
        case .bool: "true or false"
        case .number: "a number"
        case .intOrString: "an integer or a string"
        case .strings: "an array of strings"
        case .stringMap: "a table of strings"
        case .table, .anyTable: "a table"
        case .tables: "an array of tables ([[...]])"
        }
    }
}

struct Schema: Sendable {
    var fields: [String: FieldType]
    var required: Set<String> = []

    /// Problems in `table` (at `path`, "" for the top level) against this schema.
    func check(_ table: TOMLTable, path: String, in source: ConfigSource) -> [ConfigProblem] {
        var problems: [ConfigProblem] = []
        for key in required where table[key] == nil {
            problems.append(source.problem(path, "\(describe(path)) needs \(key) (\(fields[key]?.name ?? "a value")); add it"))
        }
        for key in table.keys.sorted() {
            let keyPath = path.isEmpty ? key : "\(path).\(key)"
            guard let type = fields[key] else {
                let known = fields.keys.sorted().joined(separator: ", ")
                let hint = ConfigSchema.hints[key].map { " \($0)" } ?? " Known keys here: \(known)."
                problems.append(source.problem(keyPath, "unknown key \(key) in \(describe(path)).\(hint)"))
                continue
            }
            guard let value = table[key] else { continue }
            problems += Self.check(value, as: type, keyPath: keyPath, source: source)
        }
        return problems
    }

    private static func check(_ value: any TOMLValueConvertible, as type: FieldType, keyPath: String, source: ConfigSource) -> [ConfigProblem] {
        let wrong = [source.problem(keyPath, "\(keyPath) must be \(type.name)")]
        switch type {
        case .string: return value.type == .string ? [] : wrong
        case .int: return value.type == .int ? [] : wrong
        case .bool: return value.type == .bool ? [] : wrong
        case .number: return value.type == .int || value.type == .double ? [] : wrong
        case .intOrString: return value.type == .int || value.type == .string ? [] : wrong
        case .strings:
            guard let a = value.array else { return wrong }
            return a.allSatisfy({ $0.type == .string }) ? [] : wrong
        case .stringMap:
            guard let t = value.table else { return wrong }
            return t.values.allSatisfy({ $0.type == .string }) ? [] : wrong
        case .anyTable: return value.table == nil ? wrong : []
        case .table(let schema):
            guard let t = value.table else { return wrong }
            return schema.check(t, path: keyPath, in: source)
        case .tables(let schema):
            guard let a = value.array, a.allSatisfy({ $0.table != nil }) else { return wrong }
            return a.enumerated().flatMap { i, v in schema.check(v.table!, path: "\(keyPath)[\(i)]", in: source) }
        }
    }

    private func describe(_ path: String) -> String { path.isEmpty ? "the top level" : "[\(path)]" }

    /// A copy of `table` holding only what `check` accepts (unknown keys, wrong types and entries missing a required
    /// key left out), so the rest still decodes and every other problem is found in the same run.
    func sanitized(_ table: TOMLTable) -> TOMLTable {
        let clean = TOMLTable()
        for key in table.keys {
            guard let type = fields[key], let value = table[key], let kept = Self.sanitized(value, as: type) else { continue }
            clean[key] = kept
        }
        return clean
    }

    private var isComplete: (TOMLTable) -> Bool { { t in required.allSatisfy { t[$0] != nil } } }

    private static func sanitized(_ value: any TOMLValueConvertible, as type: FieldType) -> (any TOMLValueConvertible)? {
        switch type {
        case .table(let schema):
            guard let t = value.table else { return nil }
            let clean = schema.sanitized(t)
            return schema.isComplete(clean) ? clean : nil
        case .tables(let schema):
            guard let a = value.array else { return nil }
            // Entries keep their positions (messages name `leaf[2]`): an unusable entry becomes empty and is skipped.
            return TOMLArray(a.map { v -> any TOMLValueConvertible in
                guard let t = v.table else { return TOMLTable() }
                let clean = schema.sanitized(t)
                return schema.isComplete(clean) ? clean : TOMLTable()
            })
        case .anyTable:
            return value.table
        default:
            let probe = ConfigSource.empty(path: "")
            return check(value, as: type, keyPath: "", source: probe).isEmpty ? value : nil
        }
    }
}

/// The configuration's shape (etc/fieldgate.toml documents every key).
enum ConfigSchema {
    static let leaf = Schema(fields: [
        "device_id": .string, "adapter": .string, "credential": .string, "key_ref": .string, "certificate_file": .string, "key_file": .string, "cloud": .strings, "heartbeat_seconds": .int,
        "allowed_sources": .strings, "mapped_source": .string, "format": .string, "field_map": .stringMap, "hmac": .bool,
        "command_address": .string, "bus": .string, "unit_id": .int, "profile": .string, "poll_ms": .int, "full_report_seconds": .int,
        "response_timeout_ms": .int, "retries": .int,
    ], required: ["device_id", "adapter"])

    static let serialPort = Schema(fields: [
        "path": .string, "baud": .int, "parity": .string, "data_bits": .int, "stop_bits": .int, "flow_control": .string,
        "framing": .string, "format": .string, "id_field": .string, "field_map": .stringMap, "leaf": .string,
        "leaves": .strings, "reply_pattern": .string,
    ], required: ["path"])

    static let main = Schema(fields: [
        "hub": .table(Schema(fields: [
            "host": .string, "address": .string, "addresses": .stringMap, "port": .int, "ca_file": .string, "insecure_plain_amqp": .bool,
            "attaches_per_second": .number, "attaches_at_once": .int, "token_ttl_seconds": .int, "method_deadline_seconds": .int,
            "transport": .string, "fallback_hosts": .strings, "fallback_after_failures": .int, "proxy": .string,
            "websocket_port": .int, "websocket_path": .string, "websocket_ping_seconds": .int,
        ])),
        "provisioning": .table(Schema(fields: [
            "id_scope": .string, "global_endpoint": .string, "credential": .string, "registrations_per_second": .number,
            "reprovision_on_start": .bool, "ca_file": .string, "payload": .stringMap,
        ], required: ["id_scope"])),
        "gateway": .table(Schema(fields: [
            "device_id": .string, "credential": .string, "key_ref": .string, "certificate_file": .string, "key_file": .string,
            "reboot_command": .strings, "restart_command": .strings,
        ], required: ["device_id"])),
        "spool": .table(Schema(fields: [
            "directory": .string, "cap_mb": .int, "sync": .string, "full_policy": .string, "ttl_hours": .int,
        ])),
        "udp": .table(Schema(fields: ["bind": .string, "port": .int, "max_datagram_bytes": .int, "allowed_sources": .strings], required: ["port"])),
        "uplink": .table(Schema(fields: ["coalesce_bytes": .int, "max_in_flight": .int, "quota_probe_minutes": .int, "heartbeat_seconds": .int])),
        "upload": .table(Schema(fields: ["logs": .bool, "logs_max_mb": .int, "offload_records": .int, "offload_after_hours": .int])),
        "update": .table(Schema(fields: ["enabled": .bool, "allow_downgrade": .bool, "keyring": .string, "confirm_seconds": .int, "max_download_mb": .int, "ca_file": .string,
                                         "factory_reset": .bool, "factory_reset_clears": .strings])),
        "secrets": .table(Schema(fields: ["file": .string])),
        "control": .table(Schema(fields: ["socket": .string, "allow_debug": .bool, "metrics": .string])),
        "daemon": .table(Schema(fields: ["stall_seconds": .int])),
        "serial_port": .tables(serialPort),
        "modbus_bus": .tables(modbusBus),
        "leaf": .tables(leaf),
    ], required: ["gateway"])

    static let devices = Schema(fields: ["leaf": .tables(leaf), "serial_port": .tables(serialPort), "modbus_bus": .tables(modbusBus)])

    /// Keys that look right but belong elsewhere.
    static let hints: [String: String] = [
        "key": secretHint, "key_file": secretHint, "hmac_key": secretHint, "primary_key": secretHint,
        "leaves": "Leaves are [[leaf]] tables (in devices.d/*.toml or here).",
    ]
    static let secretHint = "Keys never go in the configuration: put them in the secrets file (secrets.toml, root:fieldgate mode 0640) under [keys] and refer to them with key_ref."
}
