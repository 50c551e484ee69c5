import FieldgateCore
import ModbusIO

/// Per-unit statistics of one bus (fieldgatectl status, metrics, the leaf's twin).
public struct UnitStatistics: Sendable, Equatable {
    public var online = false
    public var requests = 0
    public var successes = 0
    public var timeouts = 0
    /// Garbled answers: bad CRC, wrong length or unit (RTU line noise, collisions).
    public var crcErrors = 0
    /// Modbus exception responses by code.
    public var exceptions: [Int: Int] = [:]
    /// Poll slots that passed without a poll (the bus was busy, offline, or the unit was backing off).
    public var missedPolls = 0
    public var lastSuccessMilliseconds: Int64?
    public var lastError: String?

    public init() {}
}

/// The poll plan of one bus as a pure state machine (clock injected; tested in virtual time).
///
/// - Each read block has a due time on a fixed grid (start + k × interval): a late poll does not shift the ones
///   after it, and slots that passed while the bus was busy are skipped and counted, not made up in a burst.
/// - The earliest due block runs first, whatever unit it belongs to: one unit cannot starve another.
/// - A failure on an online unit is retried at once up to `retries` times; then the unit goes offline and backs
///   off (`backoff`, doubling): while it backs off none of its blocks run, and when the back-off ends exactly one
///   probe runs. A dead unit therefore costs at most one timeout per back-off period, and the other units keep
///   their grid.
/// - An exception response is an answer: the unit stays online (the points of that block get bad quality).
public struct BusSchedule: Sendable {
    public struct Entry: Sendable, Equatable {
        public var device: Int
        public var unit: Int
        public var block: ReadBlock
        public var due: Int64
        /// Index of the unit's state in `units`.
        var slot: Int
    }

    public enum Next: Sendable, Equatable {
        /// Poll `entries[index]` now.
        case poll(Int)
        /// Nothing due before this time (ms); commands may run meanwhile.
        case idle(until: Int64)
    }

    public enum Outcome: Sendable, Equatable {
        case success
        case failure(ModbusError.Kind, String)
    }

    struct UnitState: Sendable {
        var retries: Int
        var failures = 0
        var backoffUntil: Int64?
        var backoffMilliseconds: Int64
        var statistics = UnitStatistics()
    }

    public private(set) var entries: [Entry]
    /// Per unit id, in `slots` order (an array: `next` looks a unit up for every entry on every call).
    var units: [UnitState]
    let slots: [Int: Int]
    let backoff: ClosedRange<Int64>
    private var retrying: Int?

    /// `devices`: each device's unit id and read blocks. Every block is due at `now` first. `retries`: the bus's;
    /// `retriesByUnit`: units with their own.
    public init(devices: [(unit: Int, blocks: [ReadBlock])], now: Int64, retries: Int, backoff: ClosedRange<Int64>, retriesByUnit: [Int: Int] = [:]) {
        var slots: [Int: Int] = [:]
        for d in devices where slots[d.unit] == nil { slots[d.unit] = slots.count }
        self.slots = slots
        entries = devices.enumerated().flatMap { d, device in
            device.blocks.map { Entry(device: d, unit: device.unit, block: $0, due: now, slot: slots[device.unit]!) }
        }
        units = slots.sorted { $0.value < $1.value }.map { UnitState(retries: retriesByUnit[$0.key] ?? retries, backoffMilliseconds: backoff.lowerBound) }
        self.backoff = backoff
    }

    public func statistics(unit: Int) -> UnitStatistics? { slots[unit].map { units[$0].statistics } }

    /// The last poll failed and is retried next.
    public var retryPending: Bool { retrying != nil }

    public func isOnline(unit: Int) -> Bool { statistics(unit: unit)?.online ?? false }

    /// What to do at `now`.
    public mutating func next(now: Int64) -> Next {
        if let r = retrying { return .poll(r) }
        // Runs before every transaction: plain index access, no copies of entries or unit states (ARC traffic).
        var best = -1
        var bestDue = Int64.max
        var wakeAt = Int64.max
        for i in entries.indices {
            var due = entries[i].due
            if let until = units[entries[i].slot].backoffUntil {
                if until > now {
                    wakeAt = min(wakeAt, until)
                    continue
                }
                due = min(due, until)  // the back-off has just ended: one probe now, whatever the grid says
            }
            if due <= now {
                if due < bestDue { best = i; bestDue = due }
            } else {
                wakeAt = min(wakeAt, due)
            }
        }
        return best >= 0 ? .poll(best) : .idle(until: wakeAt)
    }

    /// Records how the poll of `entries[index]` went, at `now` (when it finished).
    public mutating func completed(_ index: Int, outcome: Outcome, now: Int64) {
        // In place (no copy of the unit's state): this runs after every transaction.
        let advance = Self.record(outcome, index: index, in: &units[entries[index].slot], retrying: &retrying, backoff: backoff, now: now)
        if advance { advanceGrid(index, now: now) }
    }

    /// Returns whether the block moves on to its next slot (false: it is retried at once).
    private static func record(_ outcome: Outcome, index: Int, in unit: inout UnitState, retrying: inout Int?,
                               backoff: ClosedRange<Int64>, now: Int64) -> Bool {
        unit.statistics.requests += 1
        switch outcome {
        case .success:
            unit.statistics.successes += 1
            if unit.statistics.lastError != nil { unit.statistics.lastError = nil }
        case .failure(.exception(let code), let why):
            unit.statistics.exceptions[code, default: 0] += 1
            unit.statistics.lastError = why
        case .failure(let kind, let why):
            if kind == .timeout { unit.statistics.timeouts += 1 } else if kind == .badResponse { unit.statistics.crcErrors += 1 }
            unit.statistics.lastError = why
            unit.failures += 1
            if unit.statistics.online && unit.backoffUntil == nil && unit.failures <= unit.retries {
                retrying = index  // an online unit gets its retries at once
                return false
            }
            retrying = nil
            unit.statistics.online = false
            unit.backoffUntil = now + unit.backoffMilliseconds
            unit.backoffMilliseconds = min(unit.backoffMilliseconds * 2, backoff.upperBound)
            return true
        }
        // An answer (data or an exception): the unit is alive.
        unit.statistics.online = true
        unit.statistics.lastSuccessMilliseconds = now
        unit.failures = 0
        unit.backoffUntil = nil
        unit.backoffMilliseconds = backoff.lowerBound
        retrying = nil
        return true
    }

    /// Moves a block to its next slot after `now`, counting slots that passed unpolled.
    private mutating func advanceGrid(_ index: Int, now: Int64) {
        let interval = max(1, entries[index].block.intervalMilliseconds)
        var due = entries[index].due + interval
        if due <= now {
            let missed = (now - due) / interval + 1
            due += missed * interval
            units[entries[index].slot].statistics.missedPolls += Int(missed)
        }
        entries[index].due = due
    }

    /// The bus is down (a TCP connection lost, a port gone): every unit is offline until it answers again.
    public mutating func busDown(_ why: String) {
        retrying = nil
        for i in units.indices {
            units[i].statistics.online = false
            units[i].statistics.lastError = why
        }
    }
}
