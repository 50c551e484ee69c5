import ProtonAMQP

/// Counters of one leaf, kept across reconnects.
public struct LeafCounters: Sendable, Equatable {
    /// Messages handed to the hub (each attempt counts).
    public var sent = 0
    /// Spool records the hub accepted.
    public var acceptedRecords = 0
    /// Spool records the hub rejected for good (dead-lettered).
    public var rejectedRecords = 0
    /// Telemetry rejections for throttling or quota.
    public var throttled = 0
    /// Times the leaf's links were lost or refused.
    public var linkFailures = 0
    /// Put-token answers other than 2xx (refused, throttled, failed).
    public var tokenFailures = 0
    /// Tokens renewed in place (links kept).
    public var tokenRenewals = 0
    public var cloudToDeviceReceived = 0
    public var cloudToDeviceCompleted = 0
    public var cloudToDeviceRejected = 0
    public var cloudToDeviceAbandoned = 0
    /// Expired on arrival: rejected without reaching the adapter.
    public var cloudToDeviceExpired = 0
    /// Redeliveries settled from the remembered outcome.
    public var cloudToDeviceDuplicates = 0
}

/// One leaf on its shard connection: the lifecycle, its links, the telemetry it holds. Reactor thread only.
final class LeafRuntime {
    let configuration: LeafConfiguration
    var machine: LeafMachine
    var counters = LeafCounters()
    var dedupe: C2DDedupe
    let receivesCloudToDevice: Bool

    var telemetry: AMQPLink?
    var cloudToDevice: AMQPLink?
    var telemetryAttached = false
    var cloudToDeviceAttached = false

    /// Fetched from the spool, waiting for link credit (in order).
    var pending: [OutgoingMessage] = []
    var pendingHead = 0
    /// Telemetry deliveries the hub has not settled.
    var unsettled = 0

    init(configuration: LeafConfiguration, machine: LeafMachine, dedupeCapacity: Int, receivesCloudToDevice: Bool) {
        self.configuration = configuration
        self.machine = machine
        self.dedupe = C2DDedupe(capacity: dedupeCapacity)
        self.receivesCloudToDevice = receivesCloudToDevice
    }

    var deviceID: String { configuration.deviceID }
    var pendingCount: Int { pending.count - pendingHead }
    /// Messages this leaf holds that the spool counts as in flight.
    var outstanding: Int { pendingCount + unsettled }
    var linksAttached: Bool { telemetryAttached && (cloudToDeviceAttached || !receivesCloudToDevice) }

    func popPending() -> OutgoingMessage? {
        guard pendingHead < pending.count else { return nil }
        let m = pending[pendingHead]
        pendingHead += 1
        if pendingHead == pending.count { pending.removeAll(keepingCapacity: true); pendingHead = 0 }
        return m
    }

    /// Empties the pending queue, returning its sequences.
    func takePending() -> [UInt64] {
        defer { pending.removeAll(keepingCapacity: true); pendingHead = 0 }
        return pending[pendingHead...].flatMap(\.sequences)
    }
}
