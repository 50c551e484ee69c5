import FieldgateCore
import Gzip
import Logging
import Systemd
import Uplink

extension GatewayIdentity {
    /// `logs {"since", "until", "priority", "leaf"}`: fieldgated's journal entries in that window as gzip'd JSON lines,
    /// uploaded through IoT Hub's file upload; answers with the blob name. Times are ISO 8601 or an age ("90m",
    /// "2h", "1d"); default: the last hour. `priority`: a syslog name or 0–7, that one and more urgent.
    func uploadLogs(_ payload: JSONValue) async -> MethodResponse {
        guard let policy = configuration.logUpload else {
            return .error(501, "log upload is off: set [upload] logs = true in fieldgate.toml (IoT Hub needs a storage account associated for file upload)")
        }
        guard let uplink = attachedUplink else { return .error(503, "the uplink is not running") }
        let now = WallClock.nowMilliseconds()
        var query = JournalQuery(unit: policy.unit, sinceMs: now - 3_600_000, untilMs: now)
        query.maxBytes = policy.maxBytes
        switch LogRequest.parse(payload, nowMs: now) {
        case .failure(let why): return .error(400, why.message)
        case .success(let r):
            query.sinceMs = r.sinceMs ?? query.sinceMs
            query.untilMs = r.untilMs ?? query.untilMs
            query.maxPriority = r.maxPriority ?? query.maxPriority
            query.leaf = r.leaf
        }
        guard query.sinceMs <= query.untilMs else { return .error(400, "since must not be after until") }
        let directory = policy.journalDirectory
        let read = await offCooperativePool { [query] in
            Result { () throws(JournalError) in try Journal.read(query, directory: directory) }.map { ($0, Gzip.compress($0.jsonLines)) }
        }
        let excerpt: JournalExcerpt, compressed: [UInt8]
        switch read {
        case .failure(let e): return .error(500, "the journal cannot be read: \(e.message)")
        case .success(let r): (excerpt, compressed) = r
        }
        let name = "logs/fieldgated-\(Self.compactTime(now))-\(String(UInt32.random(in: 0...UInt32.max), radix: 16)).jsonl.gz"
        do throws(UplinkError) {
            let file = try await uplink.uploadFile(for: configuration.deviceID, blobName: name, bytes: compressed, contentType: "application/gzip")
            logger.notice("logs: \(excerpt.entries) journal entries uploaded as \(file.blobName) (\(compressed.count) bytes gzip'd)")
            return MethodResponse(status: 200, payload: [
                "blobName": .string(file.blobName), "entries": .int(Int64(excerpt.entries)), "truncated": .bool(excerpt.truncated),
                "bytes": .int(Int64(excerpt.jsonLines.count)), "compressedBytes": .int(Int64(compressed.count)),
                "since": .string(WallClock.iso8601(milliseconds: query.sinceMs)), "until": .string(WallClock.iso8601(milliseconds: query.untilMs)),
            ])
        } catch {
            logger.error("logs: upload failed: \(error)")
            return .error(error.isRetriable ? 503 : 502, "the upload failed: \(error.message)")
        }
    }

    /// 20261205T150000Z
    static func compactTime(_ ms: Int64) -> String {
        WallClock.iso8601(milliseconds: ms).filter { $0 != "-" && $0 != ":" }.split(separator: ".").first.map { String($0) + "Z" } ?? "\(ms)"
    }
}

/// The `logs` method's payload, checked.
struct LogRequest: Equatable {
    var sinceMs: Int64?
    var untilMs: Int64?
    var maxPriority: Int?
    var leaf: String?

    static let priorities = ["emerg": 0, "alert": 1, "crit": 2, "err": 3, "error": 3, "warning": 4, "warn": 4, "notice": 5, "info": 6, "debug": 7]

    /// Why a payload is refused (answered 400 with the message).
    struct Refusal: Error, Equatable { var message: String }

    static func parse(_ payload: JSONValue, nowMs: Int64) -> Result<LogRequest, Refusal> {
        if payload == .null { return .success(LogRequest()) }
        guard case .object(let o) = payload else { return .failure(Refusal(message: "the payload must be an object: {\"since\", \"until\", \"priority\", \"leaf\"}")) }
        if let unknown = o.keys.first(where: { !["since", "until", "priority", "leaf"].contains($0) }) {
            return .failure(Refusal(message: "unknown field \(unknown): the payload takes since, until, priority and leaf"))
        }
        var r = LogRequest()
        for key in ["since", "until"] {
            guard let v = o[key], v != .null else { continue }
            guard let text = v.stringValue, let t = time(text, nowMs: nowMs) else {
                return .failure(Refusal(message: "\(key) must be an ISO 8601 time (2026-12-05T14:00:00Z) or an age (90s, 30m, 2h, 1d)"))
            }
            if key == "since" { r.sinceMs = t } else { r.untilMs = t }
        }
        if let p = o["priority"], p != .null {
            if let n = p.intValue, (0...7).contains(n) { r.maxPriority = Int(n) }
            else if let name = p.stringValue?.lowercased(), let n = priorities[name] { r.maxPriority = n }
            else { return .failure(Refusal(message: "priority must be 0 to 7 or one of emerg, alert, crit, err, warning, notice, info, debug")) }
        }
        if let l = o["leaf"], l != .null {
            guard let id = l.stringValue, !id.isEmpty else { return .failure(Refusal(message: "leaf must be a device id")) }
            r.leaf = id
        }
        return .success(r)
    }

    private static func time(_ text: String, nowMs: Int64) -> Int64? {
        if let t = WallClock.parseISO8601(text) { return t }
        guard let unit = text.last, let n = Int64(text.dropLast()), n >= 0 else { return nil }
        let scale: Int64? = switch unit { case "s": 1000; case "m": 60_000; case "h": 3_600_000; case "d": 86_400_000; default: nil }
        return scale.map { nowMs - n * $0 }
    }
}
