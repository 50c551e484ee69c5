import FieldgateCore

/// What the service asked for when it sent a C2D message (`iothub-ack`).
public enum FeedbackRequest: String, Codable, Sendable {
    case none, positive, negative, full

    var wantsPositive: Bool { self == .positive || self == .full }
    var wantsNegative: Bool { self == .negative || self == .full }
}

/// A C2D message as the hub keeps it.
public struct CloudToDeviceMessage: Codable, Sendable, Equatable {
    public var messageId: String
    public var correlationId: String?
    public var body: [UInt8]
    public var properties: [String: String]
    public var contentType: String?
    public var contentEncoding: String?
    public var ack: FeedbackRequest
    public var sequenceNumber: UInt64 = 0
    public var enqueuedTimeMs: Int64 = 0
    public var expiryTimeMs: Int64 = 0
    /// Deliveries so far (the `iothub-deliverycount` of the next delivery).
    public var deliveryCount: Int = 0
    /// The lock of the delivery in flight, with its deadline.
    public var lockToken: [UInt8]?
    public var lockedUntilMs: Int64?

    public init(messageId: String, correlationId: String? = nil, body: [UInt8], properties: [String: String] = [:],
                contentType: String? = nil, contentEncoding: String? = nil, ack: FeedbackRequest = .none) {
        self.messageId = messageId
        self.correlationId = correlationId
        self.body = body
        self.properties = properties
        self.contentType = contentType
        self.contentEncoding = contentEncoding
        self.ack = ack
    }
}

/// A feedback record (docs/iothub-protocol.md §5.4; camelCase keys, `statusCode` as the status name).
public struct FeedbackRecord: Codable, Sendable, Equatable {
    public var originalMessageId: String
    public var deviceId: String
    public var deviceGenerationId: String
    /// Success, Expired, DeliveryCountExceeded, Rejected or Purged.
    public var statusCode: String
    public var description: String
    public var enqueuedTimeUtc: String
}

/// How a C2D message left the queue.
public enum CloudToDeviceOutcome: String, Sendable {
    case completed = "Success"
    case expired = "Expired"
    case deliveryCountExceeded = "DeliveryCountExceeded"
    case rejected = "Rejected"
    case purged = "Purged"

    var isPositive: Bool { self == .completed }
}

/// One device's C2D queue: Enqueued → Invisible (locked) → Completed / Dead-lettered (docs/iothub-protocol.md §5.4).
/// A pure value; every call takes the time, so tests run in virtual time.
public struct CloudToDeviceQueue: Codable, Sendable {
    public struct Limits: Codable, Sendable {
        /// Default: 50 messages.
        public var maxPending = 50
        /// Default: 60 s.
        public var lockMilliseconds: Int64 = 60_000
        /// Default: 10.
        public var maxDeliveryCount = 10
        /// Default: 1 hour.
        public var defaultTTLMilliseconds: Int64 = 3_600_000
        public init() {}
    }

    public var limits: Limits
    public private(set) var messages: [CloudToDeviceMessage] = []
    private var nextSequence: UInt64 = 1

    public init(limits: Limits = Limits()) { self.limits = limits }

    public var count: Int { messages.count }

    /// Enqueues; fails when the queue holds `maxPending` messages.
    public mutating func enqueue(_ message: CloudToDeviceMessage, ttlMilliseconds: Int64?, now: Int64) throws(HubError) -> UInt64 {
        guard messages.count < limits.maxPending else {
            throw HubError(.forbidden, "the device's cloud-to-device queue already holds \(limits.maxPending) messages")
        }
        var m = message
        m.sequenceNumber = nextSequence
        nextSequence += 1
        m.enqueuedTimeMs = now
        m.expiryTimeMs = now + (ttlMilliseconds ?? limits.defaultTTLMilliseconds)
        messages.append(m)
        return m.sequenceNumber
    }

    /// The next enqueued (unlocked) message, now locked under `lockToken`; messages that are past their TTL or
    /// their delivery count leave first (returned as `ended`).
    public mutating func lockNext(lockToken: [UInt8], now: Int64) -> (message: CloudToDeviceMessage?, ended: [(CloudToDeviceMessage, CloudToDeviceOutcome)]) {
        let ended = expire(now: now)
        guard let i = messages.firstIndex(where: { $0.lockToken == nil }) else { return (nil, ended) }
        messages[i].lockToken = lockToken
        messages[i].lockedUntilMs = now + limits.lockMilliseconds
        let delivered = messages[i]
        messages[i].deliveryCount += 1
        return (delivered, ended)
    }

    /// Settles the delivery with `lockToken`. nil when no message holds that lock (lock lost).
    public mutating func settle(lockToken: [UInt8], as disposition: Disposition, now: Int64) -> (CloudToDeviceMessage, CloudToDeviceOutcome?)? {
        guard let i = messages.firstIndex(where: { $0.lockToken == lockToken }) else { return nil }
        switch disposition {
        case .complete:
            return (messages.remove(at: i), .completed)
        case .reject:
            return (messages.remove(at: i), .rejected)
        case .abandon:
            messages[i].lockToken = nil
            messages[i].lockedUntilMs = nil
            if messages[i].deliveryCount >= limits.maxDeliveryCount {
                return (messages.remove(at: i), .deliveryCountExceeded)
            }
            return (messages[i], nil)
        }
    }

    public enum Disposition: Sendable { case complete, reject, abandon }

    /// Unlocks every message whose lock is `lockToken`-held by a link that went away.
    public mutating func releaseLocks(_ tokens: Set<[UInt8]>) {
        for i in messages.indices where messages[i].lockToken.map(tokens.contains) == true {
            messages[i].lockToken = nil
            messages[i].lockedUntilMs = nil
        }
    }

    /// Lock expiry (back to Enqueued), TTL expiry and delivery-count exhaustion (dead-lettered).
    public mutating func expire(now: Int64) -> [(CloudToDeviceMessage, CloudToDeviceOutcome)] {
        var ended: [(CloudToDeviceMessage, CloudToDeviceOutcome)] = []
        var kept: [CloudToDeviceMessage] = []
        for var m in messages {
            if let until = m.lockedUntilMs, until <= now {
                m.lockToken = nil
                m.lockedUntilMs = nil
            }
            if m.lockToken == nil && m.expiryTimeMs <= now {
                ended.append((m, .expired))
            } else if m.lockToken == nil && m.deliveryCount >= limits.maxDeliveryCount {
                ended.append((m, .deliveryCountExceeded))
            } else {
                kept.append(m)
            }
        }
        messages = kept
        return ended
    }

    /// Removes everything (service purge).
    public mutating func purge() -> [CloudToDeviceMessage] {
        defer { messages = [] }
        return messages
    }

    /// The earliest time at which `expire` would change something.
    public var nextDeadline: Int64? {
        messages.flatMap { m in [m.lockedUntilMs, m.lockToken == nil ? m.expiryTimeMs : nil].compactMap { $0 } }.min()
    }
}
