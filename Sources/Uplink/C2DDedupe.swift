import FieldgateCore

/// Remembers C2D message ids per leaf so a redelivery (after a reconnect, or a lost disposition) is settled with
/// the first outcome instead of running the command twice. Bounded: the oldest ids are forgotten first.
struct C2DDedupe {
    enum Entry: Equatable {
        /// The adapter is still working on it; these delivery tokens wait for its outcome.
        case pending([Int])
        case done(C2DOutcome)
    }

    let capacity: Int
    private(set) var entries: [String: Entry] = [:]
    private var order: [String] = []
    private var head = 0

    init(capacity: Int) { self.capacity = max(1, capacity) }

    enum Decision: Equatable {
        /// New: hand it to the adapter.
        case deliver
        /// Already settled with this outcome: settle the redelivery the same way.
        case settle(C2DOutcome)
        /// The adapter is still on it: wait for its outcome.
        case wait
    }

    mutating func arrived(messageID: String, token: Int) -> Decision {
        switch entries[messageID] {
        case .done(let outcome):
            return .settle(outcome)
        case .pending(var waiting):
            waiting.append(token)
            entries[messageID] = .pending(waiting)
            return .wait
        case nil:
            entries[messageID] = .pending([token])
            order.append(messageID)
            trim()
            return .deliver
        }
    }

    /// The adapter's outcome; returns every delivery token that waited for it. Ids that were not carried out
    /// (abandoned, unreachable) are forgotten: the retry or redelivery must reach the adapter again.
    mutating func finished(messageID: String, outcome: C2DOutcome) -> [Int] {
        guard case .pending(let waiting) = entries[messageID] else { return [] }
        switch outcome {
        case .abandon, .unreachable: entries[messageID] = nil
        case .complete, .reject: entries[messageID] = .done(outcome)
        }
        return waiting
    }

    private mutating func trim() {
        var budget = order.count - head  // pending ids go round once at most
        while order.count - head > capacity, budget > 0 {
            budget -= 1
            let old = order[head]
            head += 1
            if case .done = entries[old] { entries[old] = nil } else if entries[old] != nil { order.append(old) }
        }
        if head > capacity { order.removeFirst(head); head = 0 }
    }
}
