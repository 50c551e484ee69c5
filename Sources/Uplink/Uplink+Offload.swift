import FieldgateCore
import Logging
import Spool
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// What the backlog offload has done (status).
public struct OffloadStatus: Sendable, Equatable {
    /// Files staged and not yet at the hub, and the readings in them.
    public var pendingFiles = 0
    public var pendingRecords = 0
    /// Files the hub took since the start, and their readings.
    public var uploadedFiles = 0
    public var uploadedRecords = 0
    public var lastError: String?
    /// The hub refused an upload for good: no new files until one gets through.
    public var refusedForGood = false
}

/// The readings each staged file holds back from D2C (file path → spool sequences), known once the start's
/// reclaim ran.
struct OffloadHold: Sendable {
    var sequences: [String: [UInt64]] = [:]
    var reclaimed = false
    var waiting: [CheckedContinuation<Void, Never>] = []
    /// After the hub refused an upload for good, nothing is staged before this time.
    var stagingPausedUntilMs: Int64 = 0
}

extension Uplink {
    /// How long a hub that refused an upload for good gets no new files (its readings go as D2C meanwhile).
    static let offloadRefusalPauseMilliseconds: Int64 = 6 * 3_600_000

    /// From `start`, before the engine: queued on the spool pump ahead of any fetch, so readings of files an earlier
    /// run staged are held back again before D2C could send them.
    func reclaimStagedBacklog(_ policy: BacklogOffloadPolicy) {
        let stager = BacklogStager(policy: policy, spool: spool, leaves: [], waiting: [])
        pumpForOffload.reclaimStaged(stager) { [self] result in
            if case .failure(let e) = result { offloadFailed("taking back the readings of staged files failed: \(e)") }
            let waiting = offloadHold.withLock { h in
                if case .success(let held) = result { h.sequences = held }
                h.reclaimed = true
                defer { h.waiting = [] }
                return h.waiting
            }
            for w in waiting { w.resume() }
        }
    }

    private func waitForReclaim() async {
        await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
            let done = offloadHold.withLock { h -> Bool in
                if h.reclaimed { return true }
                h.waiting.append(cont)
                return false
            }
            if done { cont.resume() }
        }
    }

    /// Every check interval while a connection is open: old backlogs over the threshold are staged as files (their
    /// readings stay in the spool, held back from D2C), then every staged file — also one left by an earlier run —
    /// is uploaded for its leaf; once the hub confirmed it, its readings are acknowledged and the file removed.
    /// D2C goes on meanwhile with the newer readings.
    func offloadLoop(_ policy: BacklogOffloadPolicy) async {
        _ = await offCooperativePool { mkdir(policy.stagingDirectory, 0o750) }
        await waitForReclaim()
        await refreshPending(policy)
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(policy.checkIntervalMilliseconds))
            if Task.isCancelled { return }
            let status = await status()
            guard status.connections.contains(where: { $0.state == "open" }) else { continue }
            // A hub that refused an upload for good (no storage associated, a credential it does not take) gets no
            // new files for a while: the readings stay in the spool and go as D2C.
            let nowMs = WallClock.nowMilliseconds()
            let paused = offloadHold.withLock { $0.stagingPausedUntilMs > nowMs }
            let waiting = Set(await stagedFiles(policy).map(\.leaf))
            let stager = BacklogStager(policy: policy, spool: spool, leaves: Set(status.leaves.keys), waiting: waiting)
            switch paused ? .success([]) : await pumpForOffload.stageBacklog(stager, nowMs: nowMs) {
            case .success(let staged):
                offloadHold.withLock { h in for s in staged { h.sequences[s.file.path] = s.sequences } }
                for (f, _) in staged {
                    logger.notice("uplink: \(f.records) old readings of \(f.leaf) staged for upload as a file (\(f.fileName)); newer ones go on as D2C",
                                  metadata: ["leaf": "\(f.leaf)"])
                }
            case .failure(let e):
                offloadFailed("staging a backlog file failed: \(e)")
            }
            await refreshPending(policy)
            for file in await stagedFiles(policy) {
                if Task.isCancelled { return }
                guard status.leaves[file.leaf] != nil else {
                    offloadFailed("\(file.fileName) waits: \(file.leaf) is no longer configured (its credential signs the upload)")
                    continue
                }
                guard let bytes = await offCooperativePool({ StateFile.read(file.path) }) else { continue }
                let held = offloadHold.withLock { $0.sequences[file.path] ?? [] }
                do throws(UplinkError) {
                    let uploaded = try await uploadFile(for: file.leaf, blobName: "backlog/" + file.fileName, bytes: bytes, contentType: "application/gzip")
                    // The hub has the file: its readings leave the spool, then the file goes (a crash in between
                    // uploads it again at the next start, with the same ids).
                    if let e = await pumpForOffload.settleOffloaded(acknowledge: held) {
                        offloadFailed("acknowledging the readings of \(file.fileName) failed: \(e)")
                        continue
                    }
                    _ = await offCooperativePool { unlink(file.path) }
                    offloadHold.withLock { _ = $0.sequences.removeValue(forKey: file.path) }
                    offloadState.withLock {
                        $0.uploadedFiles += 1
                        $0.uploadedRecords += file.records
                        $0.lastError = nil
                        $0.refusedForGood = false
                    }
                    logger.notice("uplink: \(file.records) readings of \(file.leaf) delivered as the file \(uploaded.blobName) (2 messages of quota)",
                                  metadata: ["leaf": "\(file.leaf)"])
                } catch {
                    offloadFailed("uploading \(file.fileName) failed: \(error.message)")
                    // Not reached: the file stays staged, its readings held, and it goes at the next check.
                    if error.code == .unavailable { break }
                    // Refused for good: its readings go back to D2C, at the front of their leaf, in order; the file
                    // goes. A file whose readings the spool no longer has (one an earlier run could not remove)
                    // stays: it is their only copy.
                    offloadState.withLock { $0.refusedForGood = true }
                    offloadHold.withLock { $0.stagingPausedUntilMs = WallClock.nowMilliseconds() + Self.offloadRefusalPauseMilliseconds }
                    guard !held.isEmpty else { continue }
                    _ = await pumpForOffload.settleOffloaded(release: held)
                    _ = await offCooperativePool { unlink(file.path) }
                    offloadHold.withLock { _ = $0.sequences.removeValue(forKey: file.path) }
                    logger.warning("uplink: the hub refused \(file.fileName); its \(held.count) readings go as D2C, and no backlog goes to files for 6 h",
                                   metadata: ["leaf": "\(file.leaf)"])
                }
                await refreshPending(policy)
            }
        }
    }

    /// At stop: readings held for files go back to the spool's queues (a new uplink after a reload takes them
    /// again from the files at its start).
    func releaseOffloadHolds() async {
        let held = offloadHold.withLock { h in defer { h.sequences = [:] }; return h.sequences.values.flatMap { $0 } }
        if !held.isEmpty { _ = await pumpForOffload.settleOffloaded(release: held) }
    }

    /// The staged files (a directory read: off the cooperative pool).
    private func stagedFiles(_ policy: BacklogOffloadPolicy) async -> [StagedBacklogFile] {
        await offCooperativePool { StagedBacklogFile.all(in: policy.stagingDirectory) }
    }

    private func refreshPending(_ policy: BacklogOffloadPolicy) async {
        let files = await stagedFiles(policy)
        offloadState.withLock {
            $0.pendingFiles = files.count
            $0.pendingRecords = files.reduce(0) { $0 + $1.records }
        }
    }

    /// Logged when the reason changes, not at every check.
    func offloadFailed(_ message: String) {
        let repeated = offloadState.withLock { s -> Bool in
            defer { s.lastError = message }
            return s.lastError == message
        }
        if !repeated { logger.warning("uplink: backlog offload: \(message); retrying at the next check") }
    }
}
