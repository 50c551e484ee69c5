/// A leaf's messages fetched from the spool and waiting for link credit, oldest first.
///
/// A slot is emptied as its message is taken, so a sent message's bytes are freed with its delivery rather than
/// when the queue next runs dry: under a steady backlog a leaf's queue never does, and the sent messages kept that
/// way were most of what a 1 M-reading drain added to the daemon's memory (measured with massif: every leaf's array
/// held the bytes of each message it had sent since it last ran dry).
struct PendingQueue {
    private var slots: [OutgoingMessage] = []
    private var head = 0

    /// A queue that runs dry keeps an array this small for the next fetch; a backlog's larger one is freed.
    static let keptCapacity = 8
    /// Spent slots are dropped once there are at least this many and they fill half the array.
    static let compactAfter = 16

    var count: Int { slots.count - head }
    var isEmpty: Bool { head == slots.count }

    mutating func append(_ message: OutgoingMessage) { slots.append(message) }

    mutating func popFirst() -> OutgoingMessage? {
        guard head < slots.count else { return nil }
        var message = OutgoingMessage.taken
        swap(&message, &slots[head])
        head += 1
        if head == slots.count {
            empty()
        } else if head >= Self.compactAfter, head * 2 >= slots.count {
            slots.removeFirst(head)
            head = 0
        }
        return message
    }

    /// Empties the queue, returning its messages' sequences in order.
    mutating func removeAll() -> [UInt64] {
        defer { empty() }
        return slots[head...].flatMap(\.sequences)
    }

    private mutating func empty() {
        slots.removeAll(keepingCapacity: slots.capacity <= Self.keptCapacity)
        head = 0
    }

    /// For tests: the message bytes the queue's storage holds, spent slots included; the slots it stores, spent
    /// ones included; its array's capacity.
    var heldBytes: Int { slots.reduce(0) { $0 + $1.bytes.count } }
    var storedSlots: Int { slots.count }
    var capacity: Int { slots.capacity }
}

private extension OutgoingMessage {
    /// What a sent message's queue slot holds: no allocation.
    static let taken = OutgoingMessage(leaf: "", sequences: [], bytes: [], acquiredAtMs: 0)
}
