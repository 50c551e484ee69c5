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

extension Uplink {
    /// Every check interval while a connection is open: old backlogs over the threshold are staged as files (their
    /// readings leave the spool once the file is synced), then every staged file — also one left by an earlier run —
    /// is uploaded for its leaf and removed once the hub confirmed it. D2C goes on meanwhile with the newer readings.
    func offloadLoop(_ policy: BacklogOffloadPolicy) async {
        _ = await offCooperativePool { mkdir(policy.stagingDirectory, 0o750) }
        await refreshPending(policy)
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(policy.checkIntervalMilliseconds))
            if Task.isCancelled { return }
            let status = await status()
            guard status.connections.contains(where: { $0.state == "open" }) else { continue }
            // A hub that refuses uploads for good (no storage associated, a credential it does not take) gets no new
            // files: the readings stay in the spool and go as D2C. The file that found out waits, and is retried.
            let refused = offloadState.withLock { $0.refusedForGood }
            let waiting = Set(await stagedFiles(policy).map(\.leaf))
            let stager = BacklogStager(policy: policy, spool: spool, leaves: Set(status.leaves.keys), waiting: waiting)
            switch refused ? .success([]) : await pumpForOffload.stageBacklog(stager, nowMs: WallClock.nowMilliseconds()) {
            case .success(let files):
                for f in files {
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
                do throws(UplinkError) {
                    let uploaded = try await uploadFile(for: file.leaf, blobName: "backlog/" + file.fileName, bytes: bytes, contentType: "application/gzip")
                    _ = await offCooperativePool { unlink(file.path) }
                    offloadState.withLock {
                        $0.uploadedFiles += 1
                        $0.uploadedRecords += file.records
                        $0.lastError = nil
                        $0.refusedForGood = false
                    }
                    logger.notice("uplink: \(file.records) readings of \(file.leaf) delivered as the file \(uploaded.blobName) (2 messages of quota)",
                                  metadata: ["leaf": "\(file.leaf)"])
                } catch {
                    // The file stays staged and goes at the next check; D2C is not affected.
                    offloadFailed("uploading \(file.fileName) failed: \(error.message)")
                    if error.code == .unavailable { break }
                    offloadState.withLock { $0.refusedForGood = true }
                }
                await refreshPending(policy)
            }
        }
    }

    /// The staged files (a directory read: off the cooperative pool).
    private func stagedFiles(_ policy: BacklogOffloadPolicy) async -> [StagedBacklogFile] {
        await offCooperativePool {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: policy.stagingDirectory)) ?? []
            return names.sorted().compactMap { StagedBacklogFile(path: policy.stagingDirectory + "/" + $0) }
        }
    }

    private func refreshPending(_ policy: BacklogOffloadPolicy) async {
        let files = await stagedFiles(policy)
        offloadState.withLock {
            $0.pendingFiles = files.count
            $0.pendingRecords = files.reduce(0) { $0 + $1.records }
        }
    }

    /// Logged when the reason changes, not at every check.
    private func offloadFailed(_ message: String) {
        let repeated = offloadState.withLock { s -> Bool in
            defer { s.lastError = message }
            return s.lastError == message
        }
        if !repeated { logger.warning("uplink: backlog offload: \(message); retrying at the next check") }
    }
}
