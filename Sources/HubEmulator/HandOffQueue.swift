/// A service-side queue of the hub: C2D feedback (`/messages/serviceBound/feedback`) and file-upload notifications
/// (`/messages/serviceBound/filenotifications`). Records wait here, oldest first, until a consumer takes them; every
/// record goes to exactly one consumer. A consumer that stops waiting (its long poll timed out) is removed at once,
/// so it can never be handed records nobody reads. Records a consumer gives back (an AMQP receiver released them or
/// went away before settling) return to the front, ahead of newer ones. The oldest go first beyond `capacity`.
struct HandOffQueue<Record> {
    typealias Deliver = ([Record]) -> Void

    private(set) var records: [Record] = []
    private var waiters: [(id: Int, deliver: Deliver)] = []
    private var nextWaiterID = 0
    let capacity: Int

    init(records: [Record] = [], capacity: Int = .max) {
        self.records = records
        self.capacity = capacity
    }

    var hasWaiter: Bool { !waiters.isEmpty }

    mutating func append(_ record: Record) {
        records.append(record)
        if records.count > capacity { records.removeFirst(records.count - capacity) }
    }

    /// Puts records a consumer did not settle back in front, in their order.
    mutating func giveBack(_ batch: [Record]) { records.insert(contentsOf: batch, at: 0) }

    mutating func takeAll() -> [Record] {
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
    mutating func nextHandOff() -> (deliver: Deliver, records: [Record])? {
        guard !records.isEmpty, !waiters.isEmpty else { return nil }
        return (waiters.removeFirst().deliver, takeAll())
    }
}

typealias FeedbackQueue = HandOffQueue<FeedbackRecord>
