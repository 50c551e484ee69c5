import FieldgateCore

/// Turns one device's readings into telemetry messages: report by exception (a point is sent when its value moved
/// past its deadband, or its quality changed) plus a periodic full report of every point. Pure; clock injected.
///
/// The message body (documented in etc/fieldgate/profiles.d/example-boiler.toml.example and README "Modbus adapter"):
/// ```json
/// {"time": "2026-11-22T05:00:00.125Z", "report": "change",
///  "points": {"temperature": {"value": 21.5, "unit": "degC", "quality": "good"},
///             "pump":        {"value": null, "quality": "bad", "error": "no response in time"}}}
/// ```
/// `time` is the acquisition time; `report` is `change` or `full`; a bad point carries the reason.
public struct Reporter: Sendable {
    public enum Quality: String, Sendable { case good, bad }

    struct Sample: Sendable, Equatable {
        var value: JSONValue
        var quality: Quality
        var error: String?
    }

    let points: [ModbusPoint]
    public var fullReportMilliseconds: Int64
    /// What was last sent per point (deadbands compare against it, not against the last reading).
    private var reported: [Sample?]
    /// The latest reading per point.
    private var latest: [Sample?]
    private var seen = 0
    private var nextFullReport: Int64?
    /// Points whose readings are not reported (twin desired `points.<name>.enabled = false`).
    public var disabled: Set<String> = []
    /// Per-point deadband overrides (twin desired).
    public var deadbands: [String: Deadband] = [:]

    public init(points: [ModbusPoint], fullReportMilliseconds: Int64) {
        self.points = points
        self.fullReportMilliseconds = fullReportMilliseconds
        reported = Array(repeating: nil, count: points.count)
        latest = Array(repeating: nil, count: points.count)
    }

    /// Records a block's readings (`values[i]` for `points[indices[i]]`, or an error for all of them) and returns the
    /// message to send, if any.
    public mutating func observe(_ indices: [Int], values: [JSONValue]?, error: String?, now: Int64) -> JSONValue? {
        for (k, i) in indices.enumerated() {
            if latest[i] == nil { seen += 1 }
            latest[i] = values.map { Sample(value: $0[k], quality: .good) } ?? Sample(value: .null, quality: .bad, error: error)
        }
        // The first report is a full one, once every reported point has been read (or failed) once.
        if nextFullReport == nil && seen < points.count && points.indices.contains(where: { latest[$0] == nil && !disabled.contains(points[$0].name) }) {
            return nil
        }
        let full = nextFullReport.map { now >= $0 } ?? true
        var send: [Int] = []
        if full {
            send = latest.indices.filter { latest[$0] != nil }
            nextFullReport = now + fullReportMilliseconds
        } else {
            send = indices.filter { changed($0) }
        }
        if !disabled.isEmpty { send = send.filter { !disabled.contains(points[$0].name) } }
        guard !send.isEmpty else { return nil }
        var body: [String: JSONValue] = [:]
        for i in send {
            let s = latest[i]!
            reported[i] = s
            var p: [String: JSONValue] = ["value": s.value, "quality": .string(s.quality.rawValue)]
            if let u = points[i].unit { p["unit"] = .string(u) }
            if let e = s.error { p["error"] = .string(e) }
            body[points[i].name] = .object(p)
        }
        return ["time": .string(WallClock.iso8601(milliseconds: now)), "report": .string(full ? "full" : "change"), "points": .object(body)]
    }


    /// Whether the next observation sends a full report (nothing was reported yet, or the period is over).
    public func isFullReportDue(now: Int64) -> Bool { nextFullReport.map { now >= $0 } ?? true }

    private func changed(_ i: Int) -> Bool {
        guard let now = latest[i] else { return false }
        guard let before = reported[i] else { return true }
        if now.quality != before.quality { return true }
        guard now.quality == .good else { return false }
        let band = deadbands.isEmpty ? points[i].deadband : deadbands[points[i].name] ?? points[i].deadband
        switch (before.value, now.value, band) {
        case (_, _, nil): return before.value != now.value
        case (let a, let b, let d?):
            guard let x = a.number, let y = b.number else { return a != b }
            return d.exceeded(from: x, to: y)
        }
    }
}

extension JSONValue {
    var number: Double? {
        switch self {
        case .int(let i): Double(i)
        case .double(let d): d
        default: nil
        }
    }
}
