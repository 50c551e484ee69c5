import FieldgateCore

/// When a leaf's adapter state goes to its twin (reported `modbus.state`): at once when it goes online or offline
/// (but a flapping unit at most every `minimumGap`), and its counters at most every `counterPeriod` while they
/// move. Pure; clock injected. The patch:
/// `{"modbus": {"state": {"online": true, "lastSuccess": "<ISO 8601>", "requests": n, "timeouts": n, "crcErrors": n,
///   "exceptions": n, "lastError": "<text>" | null}}}`
struct StateReports: Sendable {
    var minimumGap: Int64 = 5000
    var counterPeriod: Int64 = 60_000
    private var last: [String: (online: Bool, at: Int64, counters: [Int])] = [:]

    /// `now`: the schedule's (monotonic) clock; `wallNow`: the wall clock at the same instant, for `lastSuccess`.
    mutating func due(leaf: String, _ s: UnitStatistics, now: Int64, wallNow: Int64) -> JSONValue? {
        let counters = [s.timeouts, s.crcErrors, s.exceptions.values.reduce(0, +)]
        if let l = last[leaf] {
            let flipped = l.online != s.online
            guard (flipped && now - l.at >= minimumGap) || (!flipped && counters != l.counters && now - l.at >= counterPeriod) else { return nil }
        } else if s.requests == 0 {
            return nil  // not polled yet: nothing to say
        }
        last[leaf] = (s.online, now, counters)
        var state: [String: JSONValue] = [
            "online": .bool(s.online), "requests": .int(Int64(s.requests)), "timeouts": .int(Int64(counters[0])),
            "crcErrors": .int(Int64(counters[1])), "exceptions": .int(Int64(counters[2])),
            "lastError": s.lastError.map(JSONValue.string) ?? .null,
        ]
        if let t = s.lastSuccessMilliseconds {
            // The schedule's clock is monotonic: convert to wall time for the twin.
            state["lastSuccess"] = .string(WallClock.iso8601(milliseconds: wallNow - (now - t)))
        }
        return ["modbus": ["state": .object(state)]]
    }
}
