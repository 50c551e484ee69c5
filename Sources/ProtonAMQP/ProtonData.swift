internal import CProton

/// Bridges `AMQPValue` to and from a `pn_data_t`. Only this file reads or writes `pn_data_t` contents.
enum ProtonData {
    /// Appends `value` at the current position of `data`.
    static func put(_ value: AMQPValue, into data: OpaquePointer) {
        switch value {
        case .null: pn_data_put_null(data)
        case .bool(let v): pn_data_put_bool(data, v)
        case .ubyte(let v): pn_data_put_ubyte(data, v)
        case .ushort(let v): pn_data_put_ushort(data, v)
        case .uint(let v): pn_data_put_uint(data, v)
        case .ulong(let v): pn_data_put_ulong(data, v)
        case .byte(let v): pn_data_put_byte(data, v)
        case .short(let v): pn_data_put_short(data, v)
        case .int(let v): pn_data_put_int(data, v)
        case .long(let v): pn_data_put_long(data, v)
        case .float(let v): pn_data_put_float(data, v)
        case .double(let v): pn_data_put_double(data, v)
        case .timestamp(let v): pn_data_put_timestamp(data, v)
        case .uuid(let u):
            var raw = pn_uuid_t()
            withUnsafeMutableBytes(of: &raw.bytes) { dst in dst.copyBytes(from: u.bytes) }
            pn_data_put_uuid(data, raw)
        case .binary(let b):
            b.withUnsafeBufferPointer { buf in
                buf.withMemoryRebound(to: CChar.self) { c in
                    // pn_data interns the bytes, so the temporary pointer may go away after the call.
                    _ = pn_data_put_binary(data, pn_bytes(c.count, c.baseAddress))
                }
            }
        case .string(let s): putBytes(s, into: data, using: pn_data_put_string)
        case .symbol(let s): putBytes(s, into: data, using: pn_data_put_symbol)
        case .list(let items):
            pn_data_put_list(data)
            pn_data_enter(data)
            for item in items { put(item, into: data) }
            pn_data_exit(data)
        case .map(let entries):
            pn_data_put_map(data)
            pn_data_enter(data)
            for (k, v) in entries.sorted(by: { $0.key.sortKey < $1.key.sortKey }) {
                put(k, into: data)
                put(v, into: data)
            }
            pn_data_exit(data)
        case .array(let items):
            let elementType = items.first.map(protonType(of:)) ?? PN_SYMBOL
            pn_data_put_array(data, false, elementType)
            pn_data_enter(data)
            for item in items { put(item, into: data) }
            pn_data_exit(data)
        case .described(let descriptor, let inner):
            pn_data_put_described(data)
            pn_data_enter(data)
            put(descriptor, into: data)
            put(inner, into: data)
            pn_data_exit(data)
        }
    }

    private static func putBytes(_ s: String, into data: OpaquePointer, using put: (OpaquePointer?, pn_bytes_t) -> Int32) {
        var s = s
        s.withUTF8 { buf in
            buf.withMemoryRebound(to: CChar.self) { c in _ = put(data, pn_bytes(c.count, c.baseAddress)) }
        }
    }

    private static func protonType(of value: AMQPValue) -> pn_type_t {
        switch value {
        case .null: PN_NULL
        case .bool: PN_BOOL
        case .ubyte: PN_UBYTE
        case .ushort: PN_USHORT
        case .uint: PN_UINT
        case .ulong: PN_ULONG
        case .byte: PN_BYTE
        case .short: PN_SHORT
        case .int: PN_INT
        case .long: PN_LONG
        case .float: PN_FLOAT
        case .double: PN_DOUBLE
        case .timestamp: PN_TIMESTAMP
        case .uuid: PN_UUID
        case .binary: PN_BINARY
        case .string: PN_STRING
        case .symbol: PN_SYMBOL
        case .list: PN_LIST
        case .map: PN_MAP
        case .array: PN_ARRAY
        case .described: PN_DESCRIBED
        }
    }

    /// Reads the value at the current position of `data` (after a `pn_data_next`).
    static func get(from data: OpaquePointer) -> AMQPValue {
        let type = pn_data_type(data)
        switch type {
        case PN_NULL: return .null
        case PN_BOOL: return .bool(pn_data_get_bool(data))
        case PN_UBYTE: return .ubyte(pn_data_get_ubyte(data))
        case PN_USHORT: return .ushort(pn_data_get_ushort(data))
        case PN_UINT: return .uint(pn_data_get_uint(data))
        case PN_ULONG: return .ulong(pn_data_get_ulong(data))
        case PN_BYTE: return .byte(pn_data_get_byte(data))
        case PN_SHORT: return .short(pn_data_get_short(data))
        case PN_INT: return .int(pn_data_get_int(data))
        case PN_LONG: return .long(pn_data_get_long(data))
        case PN_FLOAT: return .float(pn_data_get_float(data))
        case PN_DOUBLE: return .double(pn_data_get_double(data))
        case PN_TIMESTAMP: return .timestamp(pn_data_get_timestamp(data))
        case PN_CHAR: return .uint(pn_data_get_char(data))
        case PN_UUID:
            var raw = pn_data_get_uuid(data)
            return .uuid(AMQPUUID(bytes: withUnsafeBytes(of: &raw.bytes) { Array($0) }))
        case PN_BINARY: return .binary(bytesArray(pn_data_get_binary(data)))
        case PN_STRING: return .string(string(pn_data_get_string(data)))
        case PN_SYMBOL: return .symbol(string(pn_data_get_symbol(data)))
        case PN_LIST:
            return .list(children(of: data))
        case PN_ARRAY:
            let described = pn_data_is_array_described(data)
            var items = children(of: data)
            if described, !items.isEmpty { items.removeFirst() }  // drop the array descriptor
            return .array(items)
        case PN_MAP:
            let flat = children(of: data)
            var map: [AMQPValue: AMQPValue] = [:]
            var i = 0
            while i + 1 < flat.count {
                map[flat[i]] = flat[i + 1]
                i += 2
            }
            return .map(map)
        case PN_DESCRIBED:
            let parts = children(of: data)
            guard parts.count == 2 else { return .null }
            return .described(descriptor: parts[0], value: parts[1])
        default:
            return .null
        }
    }

    private static func children(of data: OpaquePointer) -> [AMQPValue] {
        var out: [AMQPValue] = []
        pn_data_enter(data)
        while pn_data_next(data) { out.append(get(from: data)) }
        pn_data_exit(data)
        return out
    }

    static func string(_ b: pn_bytes_t) -> String {
        guard let start = b.start, b.size > 0 else { return "" }
        return start.withMemoryRebound(to: UInt8.self, capacity: b.size) { p in
            String(decoding: UnsafeBufferPointer(start: p, count: b.size), as: UTF8.self)
        }
    }

    static func bytesArray(_ b: pn_bytes_t) -> [UInt8] {
        guard let start = b.start, b.size > 0 else { return [] }
        return start.withMemoryRebound(to: UInt8.self, capacity: b.size) { p in
            Array(UnsafeBufferPointer(start: p, count: b.size))
        }
    }

    /// Reads the whole content of `data` (from the start) as one value; nil when empty.
    static func readWhole(_ data: OpaquePointer?) -> AMQPValue? {
        guard let data else { return nil }
        pn_data_rewind(data)
        guard pn_data_next(data) else { return nil }
        let v = get(from: data)
        pn_data_rewind(data)
        return v
    }

    /// Replaces the content of `data` with `value`.
    static func writeWhole(_ value: AMQPValue, into data: OpaquePointer?) {
        guard let data else { return }
        pn_data_clear(data)
        put(value, into: data)
    }
}

extension AMQPValue {
    /// Deterministic order for map encoding (AMQP maps are ordered on the wire; Swift dictionaries are not).
    var sortKey: String {
        switch self {
        case .string(let s), .symbol(let s): return s
        default: return String(describing: self)
        }
    }
}
