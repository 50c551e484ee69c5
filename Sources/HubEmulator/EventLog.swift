import FieldgateCore

/// A D2C message as the service side sees it: body, system properties and the hub's stamps.
public struct ReceivedEvent: Sendable, Codable, Equatable {
    public var sequenceNumber: Int64
    public var deviceId: String
    public var moduleId: String?
    public var enqueuedTimeUtc: String
    /// UTF-8 text when the body is valid UTF-8; otherwise nil and `bodyBase64` is set.
    public var body: String?
    public var bodyBase64: String?
    public var properties: [String: String]
    /// Message annotations: client-sent ones plus the hub's `iothub-*` stamps (which overwrite client values).
    public var annotations: [String: String]
    public var systemProperties: [String: String]
}

/// A received message as the hub keeps it: the encoded bytes and the link identity's stamps. Rendering into a
/// `ReceivedEvent` (decode, ISO 8601 dates, JSON) happens only when the service side reads, off the hot path.
struct StoredEvent {
    var deviceId: String
    var generationId: String
    var enqueuedMs: Int64
    var hubScope: Bool
    /// The link's device authenticated with its client certificate (auth-method type x509).
    var x509 = false
    var encoded: [UInt8]
    /// `iothub-message-source`: Telemetry, or twinChangeEvents for the hub's own twin change notifications.
    var source = "Telemetry"
}

/// A bounded log of received events. Reactor-thread state.
struct EventLog {
    private(set) var events: [StoredEvent] = []
    private var start = 0  // ring start
    private(set) var nextSequence: Int64 = 1
    private(set) var totalAccepted: Int64 = 0
    let capacity: Int

    init(capacity: Int) { self.capacity = max(capacity, 1) }

    mutating func append(_ e: StoredEvent) {
        nextSequence += 1
        totalAccepted += 1
        if events.count < capacity {
            events.append(e)
        } else {
            events[start] = e
            start = (start + 1) % capacity
        }
    }

    /// Events with sequence ≥ `from`, oldest first, at most `limit`.
    func read(from: Int64, limit: Int, render: (StoredEvent, Int64) -> ReceivedEvent) -> [ReceivedEvent] {
        guard !events.isEmpty else { return [] }
        let oldest = nextSequence - Int64(events.count)
        let first = max(from, oldest)
        guard first < nextSequence else { return [] }
        var out: [ReceivedEvent] = []
        var seq = first
        while seq < nextSequence && out.count < limit {
            let offset = Int(seq - oldest)
            out.append(render(events[(start + offset) % events.count], seq))
            seq += 1
        }
        return out
    }
}
