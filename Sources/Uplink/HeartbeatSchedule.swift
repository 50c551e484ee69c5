import FieldgateCore
import IoTHub
import ProtonAMQP

/// When a leaf sends its next heartbeat: an empty D2C message marked `heartbeat=true` that tells the service the
/// identity is alive even when it has nothing to say (the IoT Hub heartbeat pattern). Not the watchdog's
/// `Heartbeat`. A pure schedule: the first one comes at a random point of the first interval after the leaf is
/// ready (a thousand leaves do not send in the same tick), then one per interval from the last one sent. A
/// heartbeat that is due while the leaf cannot send waits until it can, and is not made up for afterwards.
struct HeartbeatSchedule: Equatable {
    let intervalMilliseconds: Int64
    private(set) var dueMs: Int64?

    init(intervalMilliseconds: Int64) {
        self.intervalMilliseconds = intervalMilliseconds
    }

    /// The leaf is ready (again): the first heartbeat is scheduled, later ones keep their time.
    mutating func leafReady(nowMs: Int64, random: Double) {
        if dueMs == nil { dueMs = nowMs + Int64(Double(intervalMilliseconds) * min(max(random, 0), 1)) }
    }

    func isDue(nowMs: Int64) -> Bool { dueMs.map { nowMs >= $0 } ?? false }

    mutating func sent(nowMs: Int64) { dueMs = nowMs + intervalMilliseconds }

    /// The application property that marks a heartbeat.
    static let markerProperty = "heartbeat"

    /// The message: no body, the marker, a fresh id (a heartbeat is never resent) and the time it was made.
    static func encode(nowMs: Int64) -> [UInt8] {
        var m = AMQPMessage()
        m.messageID = .string(AMQPUUID.random().description)
        m.applicationProperties = [markerProperty: "true", IoTHubAMQP.creationTimeProperty: .string(WallClock.iso8601(milliseconds: nowMs))]
        m.body = .data([[]])
        return AMQPMessageCodec.encode(m)
    }
}
