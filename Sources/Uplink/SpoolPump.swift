import Dispatch
import FieldgateCore
import Logging
import Spool

/// The uplink's only contact with the spool. Spool calls block on file I/O (an acknowledgement may fdatasync the
/// ledger), so they run on this pump's own serial queue, never on the reactor thread or the cooperative pool.
/// One job at a time: settle what the hub answered, then fetch what the ready leaves can take.
final class SpoolPump: Sendable {
    struct Job: Sendable {
        var acknowledged: [UInt64] = []
        var released: [UInt64] = []
        var rejected: [UInt64] = []
        /// Records each leaf may take now (ready leaves only).
        var budgets: [String: Int] = [:]
        var maxRecords = 0
        /// Records taken from one leaf per turn: a message's worth when coalescing.
        var quantum = 1

        var hasSettlements: Bool { !acknowledged.isEmpty || !released.isEmpty || !rejected.isEmpty }
    }

    struct Result: Sendable {
        var messages: [OutgoingMessage] = []
        /// Records that could not be encoded; they went to the dead-letter file.
        var invalid = 0
        var error: String?
    }

    let spool: Spool
    /// Jobs block on the spool's file I/O: one that does not return is a stuck uplink.
    let heartbeat = Heartbeat("uplink-spool", isLoop: false)
    private let encoder: TelemetryEncoder
    private let queue = DispatchQueue(label: "fieldgate.uplink.spool")
    private let logger: Logger

    init(spool: Spool, coalesceTargetBytes: Int?, logger: Logger) {
        self.spool = spool
        self.encoder = TelemetryEncoder(coalesceTargetBytes: coalesceTargetBytes, messageIDPrefix: spool.messageIDPrefix)
        self.logger = logger
    }

    func run(_ job: Job, completion: @escaping @Sendable (Result) -> Void) {
        queue.async { [self] in completion(heartbeat.busy { perform(job) }) }
    }

    /// Moves old backlogs into staged files, between fetch jobs (docs/iothub-protocol.md §17).
    func stageBacklog(_ stager: BacklogStager, nowMs: Int64) async -> Swift.Result<[(file: StagedBacklogFile, sequences: [UInt64])], SpoolError> {
        await withCheckedContinuation { cont in
            queue.async { [self] in
                cont.resume(returning: heartbeat.busy { Swift.Result { () throws(SpoolError) in try stager.stage(nowMs: nowMs) } })
            }
        }
    }

    /// Queued at once, so it runs before any fetch the uplink asks for later: the readings of files staged by an
    /// earlier run are held back from D2C again (`BacklogStager.reclaim`). The staging directory is read here too.
    func reclaimStaged(_ stager: BacklogStager, completion: @escaping @Sendable (Swift.Result<[String: [UInt64]], SpoolError>) -> Void) {
        queue.async { [self] in
            let files = StagedBacklogFile.all(in: stager.policy.stagingDirectory)
            completion(heartbeat.busy { Swift.Result { () throws(SpoolError) in try stager.reclaim(files, nowMs: WallClock.nowMilliseconds()) } })
        }
    }

    /// The readings of an offloaded file: acknowledged once the hub confirmed it, or given back to D2C.
    func settleOffloaded(acknowledge: [UInt64] = [], release: [UInt64] = []) async -> SpoolError? {
        await withCheckedContinuation { cont in
            queue.async { [self] in
                if !release.isEmpty { spool.release(release) }
                do throws(SpoolError) {
                    if !acknowledge.isEmpty { try heartbeat.busy { () throws(SpoolError) in try spool.acknowledge(acknowledge) } }
                    cont.resume(returning: nil)
                } catch { cont.resume(returning: error) }
            }
        }
    }

    /// The last settlement at shutdown: after any running job, on the pump's queue.
    func settle(_ job: Job) async {
        var job = job
        job.maxRecords = 0
        await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
            queue.async { [self, job] in
                _ = perform(job)
                cont.resume()
            }
        }
    }

    private func perform(_ job: Job) -> Result {
        var result = Result()
        do throws(SpoolError) {
            if !job.released.isEmpty { spool.release(job.released) }
            if !job.acknowledged.isEmpty { try spool.acknowledge(job.acknowledged) }
            if !job.rejected.isEmpty { try spool.deadLetter(job.rejected) }
            guard job.maxRecords > 0 else { return result }
            // Budgets by the spool's leaf slot: the name is looked up once per leaf and fetch, not per record.
            var bySlot: [Int] = []
            let records = try spool.fetch(max: job.maxRecords, quantum: job.quantum) { slot, leaf, wanted in
                if slot >= bySlot.count { bySlot.append(contentsOf: repeatElement(-1, count: slot + 1 - bySlot.count)) }
                if bySlot[slot] < 0 { bySlot[slot] = job.budgets[leaf] ?? 0 }
                guard wanted > 0 else {
                    bySlot[slot] -= wanted  // expired or corrupt records do not use up the leaf's budget
                    return 0
                }
                let granted = min(wanted, bySlot[slot])
                bySlot[slot] -= granted
                return granted
            }
            let (messages, invalid) = encoder.encode(records)
            if !invalid.isEmpty {
                logger.error("uplink: \(invalid.count) spool records cannot be sent (not a telemetry envelope, over 256 KB by the hub's measure, or a creation time outside 1970–9999); moved to the dead-letter file")
                try spool.deadLetter(invalid)
            }
            result.messages = messages
            result.invalid = invalid.count
        } catch {
            // The spool keeps its in-memory state consistent and the next job carries on. A failed read puts what it
            // took back at the front of each leaf: nothing is lost, the next fetch tries again.
            logger.error("uplink: spool error: \(error)")
            result.error = "\(error)"
        }
        return result
    }
}
