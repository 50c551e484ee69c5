/// The hub's feedback queue (`/messages/serviceBound/feedback`). Records wait here, oldest first, until a consumer
/// takes them; every record goes to exactly one consumer. A consumer that stops waiting (its long poll timed out)
/// is removed at once, so it can never be handed records nobody reads. Records a consumer gives back (an AMQP
/// receiver released its batch or went away before settling it) return to the front, ahead of newer ones.
struct FeedbackQueue {
    typealias Deliver = ([FeedbackRecord]) -> Void

    private(set) var records: [FeedbackRecord] = []
    private var waiters: [(id: Int, deliver: Deliver)] = []
    private var nextWaiterID = 0

    init(records: [FeedbackRecord] = []) { self.records = records }

    var hasWaiter: Bool { !waiters.isEmpty }

    mutating func append(_ record: FeedbackRecord) { records.append(record) }

    /// Puts records a consumer did not settle back in front, in their order.
    mutating func giveBack(_ batch: [FeedbackRecord]) { records.insert(contentsOf: batch, at: 0) }

    mutating func takeAll() -> [FeedbackRecord] {
        defer { records = [] }
        return records
    }

    /// Registers a consumer waiting for records; the returned id removes it.
    mutating func addWaiter(_ deliver: @escaping Deliver) -> Int {
        nextWaiterID += 1
        waiters.append((nextWaiterID, deliver))
        return nextWaiterID
    }

    /// Removes a waiter that stops waiting; nil when it was already served.
    mutating func removeWaiter(_ id: Int) -> Deliver? {
        guard let i = waiters.firstIndex(where: { $0.id == id }) else { return nil }
        return waiters.remove(at: i).deliver
    }

    /// The oldest waiter with every record waiting, when there are both; the waiter is served and removed.
    mutating func nextHandOff() -> (deliver: Deliver, records: [FeedbackRecord])? {
        guard !records.isEmpty, !waiters.isEmpty else { return nil }
        return (waiters.removeFirst().deliver, takeAll())
    }
}
