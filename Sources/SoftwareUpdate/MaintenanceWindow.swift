import FieldgateCore

/// A daily maintenance window from the twin's desired `maintenance.window`:
/// `{"start": "02:00", "durationMinutes": 60, "timezone": "UTC"}`. Disruptive actions (update, reboot, factory
/// reset) wait for it unless their request says `force`. Pure: the time is a parameter.
public struct MaintenanceWindow: Sendable, Equatable {
    /// Minutes after local midnight.
    public var startMinute: Int
    public var durationMinutes: Int
    /// Local time = UTC + this.
    public var utcOffsetMinutes: Int
    /// The desired value, echoed in the reported section.
    public var json: JSONValue

    public struct Problem: Error, Equatable, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    public init(startMinute: Int, durationMinutes: Int, utcOffsetMinutes: Int = 0) {
        self.startMinute = startMinute
        self.durationMinutes = durationMinutes
        self.utcOffsetMinutes = utcOffsetMinutes
        json = ["start": .string(Self.clock(startMinute)), "durationMinutes": .int(Int64(durationMinutes)),
                "timezone": .string(Self.zoneName(utcOffsetMinutes))]
    }

    /// From the desired value. Time zones: `UTC` (or `Z`) and fixed offsets (`+01:00`, `UTC-05:30`); named zones
    /// would need a time-zone database the daemon does not load.
    public init(desired: JSONValue) throws(Problem) {
        guard case .object = desired else { throw Problem(message: "maintenance.window must be an object {\"start\": \"HH:MM\", \"durationMinutes\": N, \"timezone\": \"UTC\"}") }
        guard let start = desired["start"]?.stringValue, let minute = Self.parseClock(start) else {
            throw Problem(message: "maintenance.window.start must be \"HH:MM\" (24-hour clock)")
        }
        guard let duration = desired["durationMinutes"]?.intValue, (1...1440).contains(duration) else {
            throw Problem(message: "maintenance.window.durationMinutes must be 1 to 1440")
        }
        let zone = desired["timezone"]?.stringValue ?? "UTC"
        guard let offset = Self.parseZone(zone) else {
            throw Problem(message: "maintenance.window.timezone \(zone): use UTC or a fixed offset such as +01:00 (named zones are not supported)")
        }
        self.init(startMinute: minute, durationMinutes: Int(duration), utcOffsetMinutes: offset)
        json = desired
    }

    /// True while the window is open at `nowMs` (UTC milliseconds).
    public func isOpen(atMs nowMs: Int64) -> Bool {
        let minuteOfDay = Self.localMinuteOfDay(nowMs, offset: utcOffsetMinutes)
        let sinceStart = (minuteOfDay - startMinute + 1440) % 1440
        return sinceStart < durationMinutes
    }

    /// When the window next opens at or after `nowMs` (its current opening's start if it is open: use `isOpen`).
    public func nextOpening(afterMs nowMs: Int64) -> Int64 {
        let minuteMs: Int64 = 60_000
        let local = nowMs + Int64(utcOffsetMinutes) * minuteMs
        let dayStart = local - ((local % 86_400_000) + 86_400_000) % 86_400_000
        var opening = dayStart + Int64(startMinute) * minuteMs
        if opening < local { opening += 86_400_000 }
        return opening - Int64(utcOffsetMinutes) * minuteMs
    }

    /// "02:00 UTC+01:00 for 60 min", for substatus and logs.
    public var summary: String { "\(Self.clock(startMinute)) \(Self.zoneName(utcOffsetMinutes)), \(durationMinutes) min" }

    static func localMinuteOfDay(_ ms: Int64, offset: Int) -> Int {
        let local = ms + Int64(offset) * 60_000
        let inDay = ((local % 86_400_000) + 86_400_000) % 86_400_000
        return Int(inDay / 60_000)
    }

    static func parseClock(_ s: String) -> Int? {
        let parts = s.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, parts[0].count == 2, parts[1].count == 2, let h = Int(parts[0]), let m = Int(parts[1]),
              (0...23).contains(h), (0...59).contains(m) else { return nil }
        return h * 60 + m
    }

    static func parseZone(_ zone: String) -> Int? {
        var z = Substring(zone)
        if z == "UTC" || z == "Z" || z == "GMT" || z == "Etc/UTC" { return 0 }
        if z.hasPrefix("UTC") { z = z.dropFirst(3) }
        guard let sign = z.first, sign == "+" || sign == "-" else { return nil }
        let rest = z.dropFirst()
        let h: Int?, m: Int?
        if rest.contains(":") {
            let p = rest.split(separator: ":")
            guard p.count == 2 else { return nil }
            (h, m) = (Int(p[0]), Int(p[1]))
        } else {
            (h, m) = (Int(rest), 0)
        }
        guard let h, let m, (0...14).contains(h), (0...59).contains(m) else { return nil }
        return (sign == "-" ? -1 : 1) * (h * 60 + m)
    }

    static func clock(_ minute: Int) -> String {
        let h = minute / 60, m = minute % 60
        return (h < 10 ? "0" : "") + String(h) + ":" + (m < 10 ? "0" : "") + String(m)
    }

    static func zoneName(_ offset: Int) -> String {
        guard offset != 0 else { return "UTC" }
        return "UTC" + (offset < 0 ? "-" : "+") + clock(abs(offset))
    }
}
