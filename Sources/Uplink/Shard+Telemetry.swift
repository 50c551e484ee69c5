import FieldgateCore
import IoTHub
import Logging
import ProtonAMQP

extension Shard {
    // MARK: telemetry

    /// Sends the leaf's pending messages while it has credit, is not paused and the D2C rate allows.
    func flush(_ leaf: LeafRuntime) {
        guard leaf.pendingCount > 0, leaf.attachedLinks.contains(.telemetry), let link = leaf.links[.telemetry],
              leaf.machine.canSend(nowMs: engine.nowMs())
        else { return }
        var credit = link.credit
        let limit = leaf.machine.inFlightLimit(engine.configuration.maxInFlightPerLeaf)
        while credit > 0, leaf.pendingCount > 0, leaf.unsettled < limit, engine.takeSendPermit() {
            let m = leaf.popPending()!
            link.send(m.bytes, tag: unsettled.insert(.init(leaf: leaf, sequences: m.sequences, quotaGeneration: engine.quota.generation)))
            leaf.unsettled += 1
            leaf.counters.sent += 1
            credit -= 1
        }
    }

    /// Sends the leaf's heartbeat when it is due and the leaf could send telemetry now: ahead of any backlog (it is
    /// not a reading and never spooled), within the in-flight limit and the D2C rate, never during a quota pause.
    func sendHeartbeatIfDue(_ leaf: LeafRuntime, nowMs: Int64) {
        guard leaf.heartbeat?.isDue(nowMs: nowMs) == true, leaf.attachedLinks.contains(.telemetry), let link = leaf.links[.telemetry],
              link.credit > 0, leaf.machine.canSend(nowMs: nowMs),
              leaf.unsettled < leaf.machine.inFlightLimit(engine.configuration.maxInFlightPerLeaf), engine.takeSendPermit(priority: true)
        else { return }
        // No spool records: the outcome settles nothing, and nothing is resent.
        link.send(HeartbeatSchedule.encode(nowMs: WallClock.nowMilliseconds()),
                  tag: unsettled.insert(.init(leaf: leaf, sequences: [], quotaGeneration: engine.quota.generation)))
        leaf.unsettled += 1
        leaf.counters.heartbeatsSent += 1
        leaf.heartbeat?.sent(nowMs: nowMs)
    }

    func telemetryOutcome(_ delivery: AMQPDelivery) {
        // The outcome first: a delivery without one stays where it is, and one with one is taken out by its tag.
        // A leaf's entries go when the leaf or its links do, so an entry's leaf is still this shard's.
        let outcome = delivery.remoteOutcome ?? (delivery.isRemotelySettled ? .accepted : nil)
        guard let outcome, let tag = delivery.tagNumber, let entry = unsettled.remove(tag: tag) else { return }
        delivery.settle()
        let leaf = entry.leaf
        leaf.unsettled -= 1
        let nowMs = engine.nowMs()
        switch outcome {
        case .accepted:
            if entry.sequences.isEmpty { leaf.counters.heartbeatsAccepted += 1 }
            leaf.counters.acceptedRecords += entry.sequences.count
            leaf.machine.delivered()
            engine.acknowledge(entry.sequences)
            engine.telemetryAccepted(sentIn: entry.quotaGeneration)
        case .rejected(let condition):
            switch condition?.name {
            case IoTHubAMQP.resourceLimitExceeded?:
                // The hub's daily quota (403002): no leaf can send before it resets, so the whole uplink pauses.
                leaf.counters.throttled += 1
                engine.quotaExceeded(description: condition?.description ?? "", sentIn: entry.quotaGeneration)
                engine.release(entry.sequences + leaf.takePending())
            case IoTHubAMQP.throttled?:
                leaf.counters.throttled += 1
                leaf.machine.throttled(description: condition?.description ?? "", nowMs: nowMs, random: engine.random())
                // One line per leaf per minute: a throttled hub must be visible, not flood the journal.
                if nowMs - leaf.lastThrottleLogMs >= 60_000 {
                    leaf.lastThrottleLogMs = nowMs
                    logger.warning("uplink[\(index)]: \(leaf.deviceID): the hub throttled telemetry (\(condition?.name ?? "") \(condition?.description ?? "")); this leaf pauses \(max(0, leaf.machine.pausedUntilMs - nowMs)) ms and resends in order (\(leaf.counters.throttled) throttled so far)",
                                   metadata: ["leaf": "\(leaf.deviceID)", "hub_error": "\(condition?.name ?? "")", "hub_error_description": "\(condition?.description ?? "")"])
                }
                // Everything the leaf holds goes back, so the spool resends it in order after the pause.
                engine.release(entry.sequences + leaf.takePending())
            case IoTHubAMQP.unauthorizedAccess?:
                // "Token Invalid.": the links are about to go; resend after re-authentication.
                engine.release(entry.sequences + leaf.takePending())
            case _ where entry.sequences.isEmpty:
                logger.warning("uplink[\(index)]: \(leaf.deviceID): the hub rejected a heartbeat (\(condition?.name ?? "no condition") \(condition?.description ?? ""))",
                               metadata: ["leaf": "\(leaf.deviceID)", "hub_error": "\(condition?.name ?? "")", "hub_error_description": "\(condition?.description ?? "")"])
            default:
                leaf.counters.rejectedRecords += entry.sequences.count
                logger.warning("uplink[\(index)]: \(leaf.deviceID): the hub rejected a message for good (\(condition?.name ?? "no condition") \(condition?.description ?? "")); it goes to the dead-letter file",
                               metadata: ["leaf": "\(leaf.deviceID)", "hub_error": "\(condition?.name ?? "")", "hub_error_description": "\(condition?.description ?? "")"])
                engine.deadLetter(entry.sequences)
            }
        case .released, .modified:
            engine.release(entry.sequences + leaf.takePending())
        }
        flush(leaf)
        engine.kickPump()
    }
}
