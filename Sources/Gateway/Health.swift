import FieldgateCore
import Spool
import Uplink

/// Which components are stuck (pure; the clock is a parameter). A loop is stuck when it has not beaten for
/// `stallMilliseconds`; any component is stuck while one operation has run that long. The watchdog is fed only
/// when nothing is stuck (docs/contracts.md §5).
public struct Liveness: Sendable {
    public struct Reading: Sendable, Equatable {
        public var name: String
        public var isLoop: Bool
        public var lastBeatMs: Int64
        public var busySinceMs: Int64?

        public init(name: String, isLoop: Bool, lastBeatMs: Int64, busySinceMs: Int64?) {
            self.name = name
            self.isLoop = isLoop
            self.lastBeatMs = lastBeatMs
            self.busySinceMs = busySinceMs
        }

        public init(_ heartbeat: Heartbeat) {
            let r = heartbeat.reading
            self.init(name: heartbeat.name, isLoop: heartbeat.isLoop, lastBeatMs: r.lastBeatMs, busySinceMs: r.busySinceMs)
        }
    }

    public var stallMilliseconds: Int64

    public init(stallMilliseconds: Int64) { self.stallMilliseconds = stallMilliseconds }

    /// The stuck components with how long each has been stuck, in milliseconds; empty when all is well.
    public func stuck(_ readings: [Reading], nowMs: Int64) -> [(name: String, forMs: Int64)] {
        readings.compactMap { r in
            if let busy = r.busySinceMs, nowMs - busy >= stallMilliseconds { return (r.name, nowMs - busy) }
            if r.isLoop, nowMs - r.lastBeatMs >= stallMilliseconds { return (r.name, nowMs - r.lastBeatMs) }
            return nil
        }
    }

    /// How long a component may go without progress: below `WatchdogSec` (twice the ping interval) so systemd
    /// notices, but never under 2 s, and `configured` at most.
    public static func stallMilliseconds(pingIntervalMs: Int64?, configured: Int64 = 10_000) -> Int64 {
        guard let ping = pingIntervalMs else { return configured }
        return max(2000, min(configured, ping * 2 - ping / 2))
    }
}

/// The one-line summary for systemd's `STATUS=` and `fieldgatectl status` (pure).
public enum StatusLine {
    public static func compose(uplink: UplinkStatus, spool: SpoolStatistics) -> String {
        let open = uplink.connections.filter { $0.state == "open" }.count
        let hub: String
        if uplink.connections.isEmpty { hub = "hub: no connection" }
        else if open == uplink.connections.count { hub = "hub: connected" }
        else if let e = uplink.connections.compactMap(\.lastError).first { hub = "hub: \(open)/\(uplink.connections.count) connected (\(e))" }
        else { hub = "hub: connecting" }
        let ready = uplink.leaves.values.filter { $0.phase == .ready }.count
        let dropped = spool.dropped.values.reduce(0) { $0 + $1.values.reduce(0, +) }
        var line = "\(hub); leaves online \(ready)/\(uplink.leaves.count); spool \(spool.depth) records, \(ByteCount.format(spool.bytes)); dropped \(dropped)"
        let refusedByTier = Set(uplink.connections.flatMap(\.refusedByTier))
        if !refusedByTier.isEmpty {
            line += "; the hub's tier refuses \(refusedByTier.sorted().joined(separator: ", ")) (leaves go on without)"
        }
        if let pause = uplink.telemetryPause {
            line += pause.probing ? "; telemetry paused (daily quota spent): probing" : "; telemetry paused (daily quota spent) until \(pause.untilMs.map { WallClock.iso8601(milliseconds: $0) } ?? "?")"
        }
        return line
    }
}

/// Human byte counts (KiB/MiB, one decimal).
public enum ByteCount {
    public static func format(_ bytes: Int) -> String {
        if bytes < 1024 { return "\(bytes) B" }
        let units = ["KiB", "MiB", "GiB", "TiB"]
        var v = Double(bytes) / 1024
        var u = 0
        while v >= 1024, u < units.count - 1 { v /= 1024; u += 1 }
        let tenths = Int((v * 10).rounded())
        return "\(tenths / 10).\(tenths % 10) \(units[u])"
    }
}
