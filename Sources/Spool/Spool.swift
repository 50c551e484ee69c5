import Dispatch
import FieldgateCore
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The durable store-and-forward queue. Invariants: Spool.md in this folder.
///
/// Every method blocks on file I/O: call it from a thread of your own (an adapter's executor, the uplink's
/// writer), never from the cooperative pool. Methods are serialized by one lock; readers and the writer share it,
/// which is fine because no method waits on anything but the disk.
public final class Spool: Sendable {
    public let configuration: SpoolConfiguration
    /// Random per spool directory; message ids are `<epoch>-<sequence>`.
    public let epoch: String
    public let isReadOnly: Bool
    let state: Mutex<State>
    /// Held across a whole `sync` (the fdatasync included, the state lock not): a caller that finds a flusher
    /// round in flight waits for it, so "durable when `sync` returns" holds for it too.
    private let syncing = Mutex(())
    private let lockFD: Int32
    let logger: Logger
    /// With `interval(N)`: fdatasyncs every N ms even when no append comes (the loss window of Spool.md).
    private let flusher: Flusher?
    /// What `instantiateBacklogArrayTypes` allocated (kept so the allocations stay in the build).
    private let backlogArrayCapacity: Int

    /// The watchdog's view of the spool: every operation counts as busy until it returns (a hung disk shows as a
    /// stuck spool); the flusher beats each round.
    public let heartbeat = Heartbeat("spool")

    /// @unchecked: a dispatch source's `cancel` is thread-safe, and nothing else touches it after `resume`.
    private struct Flusher: @unchecked Sendable { let timer: any DispatchSourceTimer }

    struct Segment {
        var id: UInt32
        var firstSequence: UInt64
        var path: String
        var handle: FileHandle
        var size: Int
        var live: Int
        var oldestAcquiredMs: Int64
        /// Its index file's size once sealed (counted against the cap with the segment).
        var indexBytes = 0
        /// Where each leaf's records lie in its index, once a listing needed them (`Spool.listSections`).
        var sections = Sections.unread

        enum Sections {
            case unread
            /// No index with sections (none, version 1, damaged): listings walk the segment.
            case unavailable
            /// By leaf slot: the section's offset in the index << 32 | its size; 0 when the leaf has none here.
            case bySlot([UInt64])
        }
    }

    struct State {
        var segments: [Segment] = []
        var nextSegmentID: UInt32 = 0
        var nextSequence: UInt64 = 1
        /// Durable upper bound of the sequences handed out (the `sequence-floor` file; Spool.md).
        var sequenceFloor: UInt64 = 0
        /// Every leaf's queued and retried records, and its depth.
        var leaves = LeafQueues()
        /// Records handed out and not yet acknowledged, by sequence.
        var inFlight = InFlightTable()
        var roundRobin = 0
        var acked = AckSet()
        var ledger: FileHandle?
        var deadLetter: FileHandle?
        var dropped: [DropReason: [String: Int]] = [:]
        var unsynced = false
        /// Under `interval`: segments sealed since the last round (duplicated descriptors: a sealed segment may be
        /// deleted meanwhile) and whether the segments directory has a new entry; the next round syncs them.
        var sealedUnsynced: [FileHandle] = []
        var directoryUnsynced = false
        var lastSync = ContinuousClock.now
        /// Every record up to this sequence is on disk (`durableSequence`).
        var durableThrough: UInt64 = 0
        /// Sync rounds taken and not finished (the flusher's and, when it falls behind, an append's own).
        var roundsInFlight = 0
        /// The highest mark of rounds that succeeded while others were still in flight: it becomes the durable mark
        /// once none is, unless one of them failed.
        var markCandidate: UInt64 = 0
        /// Set by a failed fdatasync for good: the kernel may have dropped the pages it could not write, and a
        /// retry would report success without them (the error is reported once), so the mark stays where it was.
        var syncFailed = false
        var corruptRegions = 0
        /// The largest record frame appended or read since the spool opened: a read guesses its last frame's end
        /// from it (`readTail`).
        var largestFrame = 0
        /// Bytes a read takes past the start of its last record: enough for the largest frame seen, within
        /// 256…4096 (a longer frame is read again on its own). A flat 4 kB read past each run's last record of
        /// ~250-byte readings, with a run per leaf when the leaves drain at different places, was most of a fetch's
        /// bytes.
        var readTail: Int { Swift.min(ReadPlan.tailGuess, Swift.max(256, largestFrame)) }
        /// Cold segments listed from their leaves' sections of the index, and walked whole (for the tests).
        var listingsBySection = 0
        var listingsWhole = 0
        var tornTails = 0
        var corruptLedgerEntries = 0
        var salvaged = 0
        var closed = false
        var ledgerNeedsRewrite = false
        /// The active segment's index, built as records are appended (written when the segment is sealed).
        var activeIndex = SegmentIndex()
    }

    // MARK: open and recovery

    /// Opens (creating if needed) and recovers a spool. Never fails because of corrupt data: it truncates torn
    /// tails, quarantines corrupt regions and salvages every valid record. Fails only on I/O errors or when another
    /// process holds the spool.
    public init(configuration: SpoolConfiguration, readOnly: Bool = false, logger: Logger = Logger(label: "fieldgate.spool")) throws(SpoolError) {
        self.configuration = configuration
        self.isReadOnly = readOnly
        self.logger = logger
        let dir = configuration.directory
        if !readOnly {
            try Directory.create(dir)
            try Directory.create(dir + "/segments")
            try Directory.create(dir + "/quarantine")
        }
        // The writer holds an exclusive flock for its lifetime. A read-only open takes no lock (it never writes), so
        // inspection works while the daemon runs.
        if readOnly {
            self.lockFD = -1
        } else {
            let lockFD = Glibc.open(dir + "/lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o640)
            guard lockFD >= 0 else { throw SpoolError(.io, "cannot open \(dir)/lock", errno: Glibc.errno) }
            // A short retry: a just-closed writer's lock can outlive its close() while a concurrently spawned child
            // still shares the descriptor, until that child execs.
            var attempts = 0
            while flock(lockFD, LOCK_EX | LOCK_NB) != 0 {
                attempts += 1
                guard attempts < 50 else {
                    Glibc.close(lockFD)
                    throw SpoolError(.locked, "the spool \(dir) is in use by another process")
                }
                usleep(10_000)
            }
            self.lockFD = lockFD
        }
        self.epoch = try Self.loadEpoch(dir, create: !readOnly)
        var s = State()
        try Self.recover(into: &s, configuration: configuration, readOnly: readOnly, logger: logger)
        self.state = Mutex(s)
        backlogArrayCapacity = Self.instantiateBacklogArrayTypes()
        heartbeat.beat()  // recovered: the spool is running before its flusher's first round
        // The flusher syncs appends under `interval`, and acknowledgements under both policies (under `always` an
        // acknowledgement is not worth an fdatasync of its own: losing it only redelivers, with the same id).
        if !readOnly {
            let ms: Int
            switch configuration.sync {
            case .interval(let n): ms = n
            case .always: ms = 1000
            }
            let timer = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "fieldgate.spool.flusher"))
            timer.schedule(deadline: .now() + .milliseconds(ms), repeating: .milliseconds(ms))
            self.flusher = Flusher(timer: timer)
            timer.setEventHandler { [weak self] in
                self?.heartbeat.beat()
                try? self?.sync()
            }
            timer.resume()
        } else {
            self.flusher = nil
        }
    }

    deinit {
        close()
        if lockFD >= 0 { Glibc.close(lockFD) }
    }

    private static func loadEpoch(_ dir: String, create: Bool) throws(SpoolError) -> String {
        let path = dir + "/epoch"
        if Directory.exists(path) {
            let f = try FileHandle.open(path, flags: O_RDONLY)
            defer { f.close() }
            let text = String(decoding: try f.readAll(), as: UTF8.self).filter(\.isHexDigit)
            if text.count == 16 { return text }
        }
        guard create else { throw SpoolError(.readOnly, "the spool \(dir) has no epoch (not a spool?)") }
        var g = SystemRandomNumberGenerator()
        let epoch = String(UInt64.random(in: 1...UInt64.max, using: &g), radix: 16).leftPadded(to: 16)
        let f = try FileHandle.open(path + ".tmp", flags: O_WRONLY | O_CREAT | O_TRUNC | O_APPEND)
        try f.append(Array(epoch.utf8))
        try f.dataSync()
        f.close()
        guard rename(path + ".tmp", path) == 0 else { throw SpoolError(.io, "cannot create \(path)", errno: Glibc.errno) }
        Directory.sync(dir)
        return epoch
    }

    private static func recover(into s: inout State, configuration: SpoolConfiguration, readOnly: Bool, logger: Logger) throws(SpoolError) {
        let dir = configuration.directory
        let files = Directory.list(dir + "/segments")
        let names = files.filter { $0.hasSuffix(".seg") }.sorted()
        // The ledger first: acknowledged sequences are skipped while segments are indexed. What it says below the
        // oldest segment (a segment's name is its first sequence) concerns records that no longer exist.
        let floor = names.first.flatMap { UInt64($0.dropLast(4)) } ?? 0
        let ledgerPath = dir + "/ledger"
        if Directory.exists(ledgerPath) {
            let f = try FileHandle.open(ledgerPath, flags: O_RDONLY)
            let (ranges, corrupt) = LedgerFile.decode(try f.readAll())
            f.close()
            for r in ranges where r.upperBound >= floor { s.acked.insert(max(r.lowerBound, floor)...r.upperBound) }
            s.corruptLedgerEntries = corrupt
            if corrupt > 0 { logger.warning("spool ledger: \(corrupt) corrupt entries skipped (their records will be redelivered)") }
        }
        if !readOnly {
            // An index whose segment is gone, or one a crash left half-written, is of no use.
            let segmentNames = Set(names.map { String($0.dropLast(4)) })
            for f in files where f.hasSuffix(".tmp") || (f.hasSuffix(".idx") && !segmentNames.contains(String(f.dropLast(4)))) {
                Directory.remove(dir + "/segments/" + f)
            }
        }
        s.leaves.listedBudget = configuration.listedRecordsBudget
        for (position, name) in names.enumerated() {
            let isLast = position == names.count - 1
            let path = dir + "/segments/" + name
            let handle = try FileHandle.open(path, flags: readOnly ? O_RDONLY : O_RDWR | O_APPEND)
            let id = s.nextSegmentID
            s.nextSegmentID += 1
            var segment = Segment(id: id, firstSequence: UInt64(name.dropLast(4)) ?? 0, path: path, handle: handle,
                                  size: try handle.size(), live: 0, oldestAcquiredMs: .max)
            // A segment's name is the first sequence it was opened for: sequences never go below it, even when the
            // segment is still empty and every older one was acknowledged and deleted (no reuse of ids).
            s.nextSequence = max(s.nextSequence, segment.firstSequence)
            s.leaves.segmentStarts(id)
            // A sealed segment with a valid index is not read at all (recovery follows the tail, not the size).
            if !isLast, let indexBytes = readIndex(of: segment),
               SegmentIndex.forEach(indexBytes, segmentSize: segment.size, { r, at in index(r, at: at, in: &segment, state: &s) }) {
                segment.indexBytes = indexBytes.count
                s.leaves.trimQueues()
                s.segments.append(segment)
                continue
            }
            let bytes = try handle.readAll()
            // Streamed: no array of every record (its freed pages would stay in the process).
            var segmentIndex = SegmentIndex()
            let scan = bytes.withUnsafeBytes { raw in
                SegmentScan(scanning: raw, keepRecords: false) { r, at in
                    index(r, at: at, in: &segment, state: &s)
                    segmentIndex.add(r, at: at)
                }
            }
            s.leaves.trimQueues()
            s.corruptRegions += scan.corruptRegions.count
            s.salvaged += scan.salvaged
            bytes.withUnsafeBytes { raw in
                for region in scan.corruptRegions { quarantine(raw, region, segment: name, dir: dir, readOnly: readOnly) }
            }
            let validEnd = scan.validEnd
            if scan.tornTail {
                s.tornTails += 1
                logger.notice("spool: torn tail of \(bytes.count - validEnd) bytes in \(name) truncated")
            }
            if validEnd < bytes.count && !readOnly && isLast {
                try handle.truncate(to: validEnd)
                try handle.dataSync()
                segment.size = validEnd
            }
            if isLast {
                s.activeIndex = segmentIndex
            } else if !readOnly {
                segment.indexBytes = writeIndex(of: segment, segmentIndex)  // the next open skips it
            }
            s.segments.append(segment)
        }
        if s.corruptRegions > 0 {
            logger.warning("spool: \(s.corruptRegions) corrupt regions quarantined, \(s.salvaged) records after them salvaged")
        }
        if let lowest = s.segments.first?.firstSequence { s.acked.drop(below: lowest) }
        if !readOnly {
            // A process that died under `interval` may have left its last appends in the page cache only: a power
            // cut half a minute from now would take records that are by then far older than the loss window. After
            // a clean close everything is on disk already.
            var foundIsDurable = true
            if configuration.sync != .always && !Directory.exists(dir + "/clean") {
                // An error here may be any file's on that file system: said, not fatal (the spool still opens).
                do throws(SpoolError) { try Directory.syncFileSystem(dir) } catch {
                    foundIsDurable = false
                    logger.error("spool: \(error); records found at open may not all be on disk yet")
                }
            }
            if foundIsDurable { s.durableThrough = s.nextSequence - 1 }
            try resumeNumbering(&s, dir: dir)
            try rewriteLedger(&s, dir: dir)
            s.deadLetter = try FileHandle.open(dir + "/dead-letter", flags: O_WRONLY | O_CREAT | O_APPEND)
            // Fully acknowledged segments found at open are deleted now.
            while s.segments.count > 1, s.segments[0].live == 0 { removeSegment(at: 0, &s) }
        }
    }

    /// Sequences are reserved in steps this large: one durable write per million records.
    static let sequenceReservation: UInt64 = 1 << 20

    /// After an unclean stop, numbering resumes at the durable floor: a power cut may have taken records (and their
    /// sequences) that were already read and delivered, and their message ids must not name other records. After a
    /// clean close every record is on disk, so numbering goes on where it stopped.
    private static func resumeNumbering(_ s: inout State, dir: String) throws(SpoolError) {
        let clean = Directory.exists(dir + "/clean")
        if !clean, let floor = readNumber(dir + "/sequence-floor") { s.nextSequence = max(s.nextSequence, floor) }
        Directory.remove(dir + "/clean")
        try reserveSequences(through: s.nextSequence, &s, dir: dir)  // its directory sync also makes the removal durable
    }

    /// Makes `sequenceFloor` durably greater than `last` (temp + fdatasync + rename + directory sync).
    private static func reserveSequences(through last: UInt64, _ s: inout State, dir: String) throws(SpoolError) {
        let floor = last + sequenceReservation
        let tmp = dir + "/sequence-floor.tmp"
        let f = try FileHandle.open(tmp, flags: O_WRONLY | O_CREAT | O_TRUNC | O_APPEND)
        defer { f.close() }
        try f.append(Array("\(floor)\n".utf8))
        try f.dataSync()
        guard rename(tmp, dir + "/sequence-floor") == 0 else { throw SpoolError(.io, "cannot write \(dir)/sequence-floor", errno: Glibc.errno) }
        Directory.sync(dir)
        s.sequenceFloor = floor
    }

    private static func readNumber(_ path: String) -> UInt64? {
        guard Directory.exists(path), let f = try? FileHandle.open(path, flags: O_RDONLY) else { return nil }
        defer { f.close() }
        return (try? f.readAll()).flatMap { UInt64(String(decoding: $0, as: UTF8.self).filter(\.isNumber)) }
    }

    private static func index(_ r: SpoolRecord, at offset: Int, in segment: inout Segment, state s: inout State) {
        s.nextSequence = max(s.nextSequence, r.sequence + 1)
        guard !s.acked.contains(r.sequence) else { return }
        segment.live += 1
        segment.oldestAcquiredMs = min(segment.oldestAcquiredMs, r.acquiredAtMs)
        s.leaves.enqueue(s.leaves.slot(of: r.leaf), segment: segment.id, offset: UInt32(offset))
    }

    private static func quarantine(_ raw: UnsafeRawBufferPointer, _ range: Range<Int>, segment: String, dir: String, readOnly: Bool) {
        guard !readOnly, !range.isEmpty else { return }
        let path = dir + "/quarantine/\(segment)-\(range.lowerBound).bin"
        guard let f = try? FileHandle.open(path, flags: O_WRONLY | O_CREAT | O_TRUNC | O_APPEND) else { return }
        try? f.append(Array(UnsafeRawBufferPointer(rebasing: raw[range])))
        f.close()
    }

    /// Writes the live part of the ack set as a fresh ledger (temp + rename + directory sync).
    ///
    /// The old descriptor is closed only once the new file is in place, and never left behind closed: a failure
    /// (a full disk) keeps appending to the old ledger, and a stale descriptor number would name whatever file was
    /// opened next (a segment).
    private static func rewriteLedger(_ s: inout State, dir: String) throws(SpoolError) {
        let tmp = dir + "/ledger.tmp"
        let f = try FileHandle.open(tmp, flags: O_WRONLY | O_CREAT | O_TRUNC | O_APPEND)
        do throws(SpoolError) {
            try f.append(LedgerFile.encode(s.acked.ranges))
            try f.dataSync()
            f.close()
        } catch {
            f.close()
            Directory.remove(tmp)
            throw error
        }
        guard rename(tmp, dir + "/ledger") == 0 else {
            let failure = Glibc.errno
            Directory.remove(tmp)
            throw SpoolError(.io, "cannot replace the ledger", errno: failure)
        }
        Directory.sync(dir)
        s.ledger?.close()
        s.ledger = nil
        s.ledgerNeedsRewrite = true  // until a ledger is open again: acknowledgements meanwhile are in memory only
        s.ledger = try FileHandle.open(dir + "/ledger", flags: O_WRONLY | O_APPEND)
        s.ledgerNeedsRewrite = false
    }

    private static func removeSegment(at i: Int, _ s: inout State) {
        let seg = s.segments.remove(at: i)
        seg.handle.close()
        // A deleted segment needs no sync, and a descriptor kept for one would keep its space until the next round.
        s.sealedUnsynced.removeAll { handle in
            guard handle.path == seg.path else { return false }
            handle.close()
            return true
        }
        Directory.remove(seg.path)
        Directory.remove(SegmentIndex.path(ofSegment: seg.path))
    }

    static func readIndex(of segment: Segment) -> [UInt8]? {
        let path = SegmentIndex.path(ofSegment: segment.path)
        guard Directory.exists(path), let f = try? FileHandle.open(path, flags: O_RDONLY) else { return nil }
        defer { f.close() }
        return try? f.readAll()
    }

    /// Written whole under a temporary name, then renamed: a reader sees an old index, a new one or none.
    /// Returns its size (0: not written, e.g. the disk is full — recovery then scans the segment).
    @discardableResult
    static func writeIndex(of segment: Segment, _ index: SegmentIndex) -> Int {
        let path = SegmentIndex.path(ofSegment: segment.path)
        let temporary = path + ".tmp"
        guard let f = try? FileHandle.open(temporary, flags: O_WRONLY | O_CREAT | O_TRUNC) else { return 0 }
        let bytes = index.encoded(segmentSize: segment.size)
        let written = (try? f.append(bytes)) != nil
        f.close()
        if written && rename(temporary, path) == 0 { return bytes.count }
        Directory.remove(temporary)
        return 0
    }

    // MARK: appending

    /// A reading to append.
    public struct Entry: Sendable {
        public var leaf: String
        public var acquiredAtMs: Int64
        public var payload: [UInt8]
        public init(leaf: String, acquiredAtMs: Int64, payload: [UInt8]) {
            self.leaf = leaf
            self.acquiredAtMs = acquiredAtMs
            self.payload = payload
        }
    }

    /// Appends a batch; returns its sequences once durable per the sync policy (Spool.md). Throws `.full` under
    /// reject-new when the cap is reached, `.io` on write errors (ENOSPC included; nothing of the batch is indexed).
    @discardableResult
    public func append(_ entries: [Entry]) throws(SpoolError) -> [UInt64] {
        try withState { s throws(SpoolError) -> [UInt64] in
            guard !s.closed else { throw SpoolError(.closed, "the spool is closed") }
            guard !isReadOnly else { throw SpoolError(.readOnly, "the spool is open read-only") }
            var frameBound = 0
            for e in entries {
                frameBound += try Self.frameBound(leafBytes: e.leaf.utf8.count, payloadBytes: e.payload.count, leaf: e.leaf)
            }
            guard !entries.isEmpty else { return [] }
            let first = s.nextSequence
            // The whole batch framed into one buffer (one allocation, no zero fill), each frame's offset kept.
            var frameOffsets = [Int](repeating: 0, count: entries.count)
            let frame = [UInt8](unsafeUninitializedCapacity: frameBound) { buffer, initialized in
                let out = UnsafeMutableRawPointer(buffer.baseAddress!)
                var at = 0
                // Entries borrowed in place: copying each out of the array (its name and payload retained and
                // released) cost more than framing it.
                entries.withUnsafeBufferPointer { list in
                    for i in list.indices {
                        frameOffsets[i] = at
                        at += list[i].payload.withUnsafeBytes { payload in
                            list[i].leaf.withUTF8Bytes { leafBytes in
                                RecordCodec.encode(leaf: leafBytes, sequence: first + UInt64(i), acquiredAtMs: list[i].acquiredAtMs,
                                                   flags: 0, payload: payload, to: out + at)
                            }
                        }
                    }
                }
                initialized = at
            }
            return try commitAppend(frame: frame, frameOffsets: frameOffsets, first: first, &s) { base, seg, s, slots in
                var slot: Int32 = 0
                entries.withUnsafeBufferPointer { list in
                    for i in list.indices {
                        // The slot looked up only when the string differs from the previous record's: batches from one
                        // adapter often repeat the same leaf.
                        if i == 0 || LeafQueues.identity(list[i].leaf) != LeafQueues.identity(list[i - 1].leaf) {
                            slot = s.leaves.slot(of: list[i].leaf)
                            if configuration.perLeafCapRecords != nil { slots.insert(slot) }
                        }
                        let offset = base + frameOffsets[i]
                        let acquiredAtMs = list[i].acquiredAtMs
                        s.activeIndex.add(slot: slot, leaf: list[i].leaf, sequence: first + UInt64(i), acquiredAtMs: acquiredAtMs, at: offset)
                        seg.oldestAcquiredMs = min(seg.oldestAcquiredMs, acquiredAtMs)
                        s.leaves.enqueue(slot, segment: seg.id, offset: UInt32(offset))
                    }
                }
            }
        }
    }

    /// The same for records laid out by their producer (`AppendBatch`): framed from its buffers, each leaf looked up
    /// once per batch.
    @discardableResult
    public func append(_ batch: AppendBatch) throws(SpoolError) -> [UInt64] {
        try withState { s throws(SpoolError) -> [UInt64] in
            guard !s.closed else { throw SpoolError(.closed, "the spool is closed") }
            guard !isReadOnly else { throw SpoolError(.readOnly, "the spool is open read-only") }
            let records = batch.records, nameRanges = batch.nameRanges
            var frameBound = 0
            var payloadStart = 0
            for r in records {
                frameBound += try Self.frameBound(leafBytes: nameRanges[Int(r.leaf)].count, payloadBytes: r.payloadEnd - payloadStart,
                                                  leaf: batch.names[Int(r.leaf)])
                payloadStart = r.payloadEnd
            }
            guard !records.isEmpty else { return [] }
            let first = s.nextSequence
            // The whole batch framed into one buffer (one allocation, no zero fill), each frame's offset kept.
            var frameOffsets = [Int](repeating: 0, count: records.count)
            let frame = [UInt8](unsafeUninitializedCapacity: frameBound) { buffer, initialized in
                let out = UnsafeMutableRawPointer(buffer.baseAddress!)
                var at = 0
                batch.payloads.withUnsafeBytes { payloads in
                    batch.nameBytes.withUnsafeBytes { names in
                        frameOffsets.withUnsafeMutableBufferPointer { offsets in
                            var payloadStart = 0
                            for i in records.indices {
                                let r = records[i]
                                offsets[i] = at
                                at += RecordCodec.encode(leaf: UnsafeRawBufferPointer(rebasing: names[nameRanges[Int(r.leaf)]]),
                                                         sequence: first + UInt64(i), acquiredAtMs: r.acquiredAtMs, flags: 0,
                                                         payload: UnsafeRawBufferPointer(rebasing: payloads[payloadStart ..< r.payloadEnd]),
                                                         to: out + at)
                                payloadStart = r.payloadEnd
                            }
                        }
                    }
                }
                initialized = at
            }
            return try commitAppend(frame: frame, frameOffsets: frameOffsets, first: first, &s) { base, seg, s, slots in
                // Each of the batch's leaves looked up once.
                var slotOfLeaf = [Int32](repeating: -1, count: batch.names.count)
                for i in records.indices {
                    let leaf = Int(records[i].leaf)
                    var slot = slotOfLeaf[leaf]
                    if slot < 0 {
                        slot = s.leaves.slot(of: batch.names[leaf])
                        slotOfLeaf[leaf] = slot
                        if configuration.perLeafCapRecords != nil { slots.insert(slot) }
                    }
                    let offset = base + frameOffsets[i]
                    let acquiredAtMs = records[i].acquiredAtMs
                    s.activeIndex.add(slot: slot, leaf: batch.names[leaf], sequence: first + UInt64(i), acquiredAtMs: acquiredAtMs, at: offset)
                    seg.oldestAcquiredMs = min(seg.oldestAcquiredMs, acquiredAtMs)
                    s.leaves.enqueue(slot, segment: seg.id, offset: UInt32(offset))
                }
            }
        }
    }

    /// The most a record's frame takes; `.tooLarge` for a record the spool does not take (before anything is written).
    private static func frameBound(leafBytes: Int, payloadBytes: Int, leaf: @autoclosure () -> String) throws(SpoolError) -> Int {
        let bound = RecordCodec.frameSize(leafBytes: leafBytes, payloadBytes: payloadBytes)
        guard leafBytes <= UInt16.max, bound <= RecordCodec.maxRecordSize
        else { throw SpoolError(.tooLarge, "a record for \(leaf()) is larger than \(RecordCodec.maxRecordSize) bytes") }
        return bound
    }

    /// What both appends share once their frames are made: sequence numbers, room, the write (with the full-disk
    /// policy), the index (`index` adds the records, given the write's offset, and names the slots it touched), the
    /// per-leaf cap and the sync.
    private func commitAppend(frame: [UInt8], frameOffsets: [Int], first: UInt64, _ s: inout State,
                              index: (_ base: Int, _ segment: inout Segment, _ s: inout State, _ slots: inout Set<Int32>) -> Void)
        throws(SpoolError) -> [UInt64] {
        let last = first + UInt64(frameOffsets.count - 1)
        if last >= s.sequenceFloor {
            try Self.reserveSequences(through: last + 1, &s, dir: configuration.directory)
        }
        try makeRoom(for: frame.count, &s)
        if s.segments.isEmpty || s.segments[s.segments.count - 1].size >= configuration.segmentBytes {
            try startSegment(firstSequence: s.nextSequence, &s)
        }
        var seg = s.segments[s.segments.count - 1]
        let base = seg.size
        var waits = 0
        var justDropped = false
        while true {
            do throws(SpoolError) {
                try seg.handle.append(frame)
                break
            } catch {
                // A partial write leaves a torn tail: cut it so the segment stays well-formed.
                try? seg.handle.truncate(to: base)
                guard error.errno == ENOSPC else { throw error }
                // The disk is full before the cap: the full-policy applies here too.
                guard configuration.fullPolicy == .dropOldest else {
                    throw SpoolError(.full, "the disk under \(configuration.directory) is full", errno: ENOSPC)
                }
                // Space of a just-deleted segment can take a moment to come back (a forked child may still
                // hold its descriptor until it execs): after a drop, wait a moment before dropping another, or a
                // busy machine would empty the spool to make room once.
                if s.segments.count > 1 && (!justDropped || waits >= 10) {
                    dropSegment(at: 0, reason: .overflow, &s)
                    seg = s.segments[s.segments.count - 1]
                    justDropped = true
                } else if waits < 10 {
                    waits += 1
                    justDropped = false
                    usleep(10_000)
                } else {
                    throw SpoolError(.full, "the disk under \(configuration.directory) is full", errno: ENOSPC)
                }
            }
        }
        seg.size += frame.count
        var slots: Set<Int32> = []
        index(base, &seg, &s, &slots)
        var largest = 0
        for i in frameOffsets.indices {
            largest = max(largest, (i + 1 < frameOffsets.count ? frameOffsets[i + 1] : frame.count) - frameOffsets[i])
        }
        s.largestFrame = max(s.largestFrame, largest)
        seg.live += frameOffsets.count
        s.segments[s.segments.count - 1] = seg
        s.nextSequence = last + 1
        if let cap = configuration.perLeafCapRecords {
            for slot in slots {
                while s.leaves[slot].depth > cap, let oldest = popQueued(slot, &s) {
                    try settle([oldest.sequence], locations: [oldest.sequence: oldest.location], reason: .overflow, &s)
                }
            }
        }
        switch configuration.sync {
        case .always:
            do throws(SpoolError) { try seg.handle.dataSync() } catch {
                s.syncFailed = true  // see `finish`: the mark stays where it was
                throw error
            }
            if !s.syncFailed { s.durableThrough = last }
        case .interval(let ms):
            s.unsynced = true
            // The flusher syncs without holding up appends; should it fall a whole round behind (a starved
            // thread), this append syncs in line, so the loss window stays bounded.
            if s.lastSync.duration(to: .now) >= .milliseconds(2 * ms) { try syncLocked(&s) }
        }
        return Array(first...last)
    }

    private func startSegment(firstSequence: UInt64, _ s: inout State) throws(SpoolError) {
        if let last = s.segments.last {
            // A sealed segment is durable: at once under `always` (its appends were synced already, so this costs
            // nothing), by the next flusher round under `interval` (an inline sync would stall appends every
            // segment). Its index may reach the disk first; recovery checks the size it names (Spool.md).
            if configuration.sync == .always {
                try last.handle.dataSync()
            } else {
                s.sealedUnsynced.append(try last.handle.duplicate())
                s.unsynced = true
            }
            s.leaves.trimQueues()
            s.segments[s.segments.count - 1].indexBytes = Self.writeIndex(of: last, s.activeIndex)  // the next open need not read it
        }
        s.activeIndex = SegmentIndex()
        let name = String(firstSequence).leftPadded(to: 20) + ".seg"
        let path = configuration.directory + "/segments/" + name
        let handle = try FileHandle.open(path, flags: O_RDWR | O_CREAT | O_APPEND)
        if configuration.sync == .always {
            Directory.sync(configuration.directory + "/segments")
        } else {
            s.directoryUnsynced = true
            s.unsynced = true
        }
        s.segments.append(Segment(id: s.nextSegmentID, firstSequence: firstSequence, path: path, handle: handle, size: 0, live: 0, oldestAcquiredMs: .max))
        s.leaves.segmentStarts(s.nextSegmentID)
        s.nextSegmentID += 1
    }

    /// Applies the cap before `bytes` more are written.
    private func makeRoom(for bytes: Int, _ s: inout State) throws(SpoolError) {
        var total = s.segments.reduce(0) { $0 + $1.size + $1.indexBytes }
        guard total + bytes > configuration.capBytes else { return }
        switch configuration.fullPolicy {
        case .rejectNew:
            throw SpoolError(.full, "the spool holds \(total) bytes, its cap is \(configuration.capBytes)")
        case .dropOldest:
            // Never the active segment: disk use stays ≤ cap + one segment.
            while total + bytes > configuration.capBytes, s.segments.count > 1 {
                total -= s.segments[0].size + s.segments[0].indexBytes
                dropSegment(at: 0, reason: .overflow, &s)
            }
        }
    }

    /// Deletes a segment, counting its undelivered records as dropped for `reason`.
    private func dropSegment(at i: Int, reason: DropReason, _ s: inout State) {
        let id = s.segments[i].id
        // Records counted cold there are found in its index, so each leaf loses its own.
        var droppedCold: [Int32: Int] = [:]
        if s.leaves.hasCold(upTo: id) {
            _ = walkUnacknowledged(ofSegmentAt: i, &s) { s, slot, _ in
                if s.leaves.dropCold(slot, segment: id) { droppedCold[slot, default: 0] += 1 }
            }
        }
        for (slot, count) in droppedCold {
            s.dropped[reason, default: [:]][s.leaves[slot].name, default: 0] += count
        }
        for (slot, count) in s.leaves.removeRecords(of: id) {
            s.dropped[reason, default: [:]][s.leaves[slot].name, default: 0] += count
        }
        for (_, loc) in s.inFlight.removeAll(where: { $0.segment == id }) {
            s.dropped[reason, default: [:]][s.leaves[loc.slot].name, default: 0] += 1
            s.leaves.adjustDepth(loc.slot, by: -1)
        }
        Self.removeSegment(at: i, &s)
    }

    // MARK: settling

    /// The hub accepted these: they leave the spool for good.
    public func acknowledge(_ sequences: [UInt64]) throws(SpoolError) {
        try withState { s throws(SpoolError) in
            guard !s.closed else { throw SpoolError(.closed, "the spool is closed") }
            try settle(sequences, locations: [:], reason: nil, &s)
        }
    }

    /// Delivery failed transiently: these go back to the front of their leaf's queue, in order.
    public func release(_ sequences: [UInt64]) {
        withState { s in
            guard !s.closed else { return }  // nothing to give back to: a reopen hands them out again
            s.leaves.giveBack(sequences.compactMap { seq in s.inFlight.removeValue(forKey: seq).map { (seq, $0) } })
        }
    }

    /// Permanently rejected by the hub: copied to the bounded dead-letter file, then removed (counted `rejected`).
    public func deadLetter(_ sequences: [UInt64]) throws(SpoolError) {
        try withState { s throws(SpoolError) in
            guard !s.closed else { throw SpoolError(.closed, "the spool is closed") }
            var frames: [UInt8] = []
            for case let r? in try read(sequences.compactMap { s.inFlight[$0] }, s) { RecordCodec.encode(r, into: &frames) }
            if !frames.isEmpty {
                let path = configuration.directory + "/dead-letter"
                // Reopened here if an earlier rotation could not: records are never settled without their copy.
                if s.deadLetter == nil { s.deadLetter = try FileHandle.open(path, flags: O_WRONLY | O_CREAT | O_APPEND) }
                if let dl = s.deadLetter, ((try? dl.size()) ?? 0) + frames.count > configuration.deadLetterBytes {
                    _ = rename(path, path + ".1")  // one rotation keeps the file bounded
                    dl.close()
                    s.deadLetter = nil  // not a closed descriptor's number, should the open fail
                    s.deadLetter = try FileHandle.open(path, flags: O_WRONLY | O_CREAT | O_APPEND)
                }
                try s.deadLetter?.append(frames)
            }
            try settle(sequences, locations: [:], reason: .rejected, &s)
        }
    }

    /// Marks sequences done (acknowledged, or dropped for `reason`) in the ledger and frees empty segments.
    func settle(_ sequences: [UInt64], locations: [UInt64: RecordLocation], reason: DropReason?, _ s: inout State) throws(SpoolError) {
        var done: [UInt64] = []
        done.reserveCapacity(sequences.count)
        // Records acknowledged together mostly lie in one segment: the last one found is tried first, and its live
        // count is lowered once for the records settled in a row there.
        var segment = -1, segmentID: UInt32 = 0, settledThere = 0
        for seq in sequences {
            guard let loc = s.inFlight.removeValue(forKey: seq) ?? locations[seq] else { continue }
            done.append(seq)
            s.leaves.adjustDepth(loc.slot, by: -1)
            if let reason { s.dropped[reason, default: [:]][s.leaves[loc.slot].name, default: 0] += 1 }
            if segment < 0 || segmentID != loc.segment {
                if segment >= 0 { s.segments[segment].live -= settledThere }
                segment = s.segments.firstIndex(where: { $0.id == loc.segment }) ?? -1
                segmentID = loc.segment
                settledThere = 0
            }
            settledThere += 1
        }
        if segment >= 0 { s.segments[segment].live -= settledThere }
        guard !done.isEmpty else { return }
        // The ledger is told the acknowledged ranges of the window these fall in, read back from the bitmap: merged
        // with their neighbours and in order without sorting `done` (coalesced messages of interleaved leaves
        // acknowledge sequences far apart; one entry each made the ledger 16 bytes a reading).
        var low = UInt64.max, high: UInt64 = 0, allKept = true
        for seq in done {
            allKept = s.acked.insert(seq) && allKept
            low = min(low, seq)
            high = max(high, seq)
        }
        // …unless the window holds more ranges than `done` makes on its own (older acknowledgements broken up by
        // records still in flight): then each run of `done` as given, so the ledger never grows faster than before.
        // Counted first, made only when they are used: coalesced messages of interleaved leaves give a run per
        // record, and making them all to be compared cost ~55 instructions a reading.
        let given = AckSet.runCount(done)
        let window = allKept && (high - low) / 64 <= UInt64(done.count) * 4 ? s.acked.ranges(from: low, through: high) : nil
        let runs = window.flatMap { $0.count <= given ? $0 : nil } ?? AckSet.runs(done)
        // Fully settled segments other than the active one are deleted first: on a full disk that is what frees
        // the space the ledger write needs.
        var removedAny = false
        while s.segments.count > 1, s.segments[0].live == 0 {
            Self.removeSegment(at: 0, &s)
            removedAny = true
        }
        if removedAny, let lowest = s.segments.first?.firstSequence { s.acked.drop(below: lowest) }
        // The in-memory ack set is authoritative; a failed ledger write (ENOSPC) only means these records could be
        // redelivered after a crash, so it is retried by a full rewrite instead of failing the acknowledgement.
        do throws(SpoolError) {
            if s.ledgerNeedsRewrite || (removedAny && s.acked.rangeCount(upTo: 1024) < 1024) {
                try Self.rewriteLedger(&s, dir: configuration.directory)
                s.ledgerNeedsRewrite = false
            } else {
                try s.ledger?.append(LedgerFile.encode(runs))
                s.unsynced = true
            }
        } catch {
            guard error.errno == ENOSPC else { throw error }
            s.ledgerNeedsRewrite = true
            logger.warning("spool: the disk is full; acknowledgements are kept in memory until the ledger can be written")
        }
    }

    // MARK: housekeeping

    /// Every use of the state, timed by the heartbeat while it waits for the lock and while it runs.
    func withState<T, E: Error>(_ body: (inout State) throws(E) -> sending T) throws(E) -> sending T {
        let outermost = heartbeat.enterBusy()
        defer { heartbeat.leaveBusy(outermost) }
        return try state.withLock { s throws(E) -> sending T in try body(&s) }
    }

    /// The message id of a record: the same for every delivery attempt and across restarts.
    public func messageID(for sequence: UInt64) -> String { messageIDPrefix + String(sequence) }
    /// What every message id starts with; the decimal sequence follows (the uplink writes ids from these two).
    public var messageIDPrefix: String { epoch + "-" }

    /// fdatasync now: everything appended or acknowledged before the call is durable when it returns (the interval
    /// flusher calls this). The fdatasync runs outside the lock, on duplicated descriptors, so appends go on
    /// meanwhile instead of waiting for the disk; what they write is marked for the next round.
    public func sync() throws(SpoolError) {
        try syncing.withLock { _ throws(SpoolError) in try syncOutsideStateLock() }
    }

    private func syncOutsideStateLock() throws(SpoolError) {
        let round = try withState { s throws(SpoolError) -> SyncRound? in
            guard !s.closed, s.unsynced else { return nil }
            return try Self.takeSyncRound(&s)
        }
        guard let round else { return }
        let result = Result { () throws(SpoolError) in try round.run(segmentsDirectory: configuration.directory + "/segments") }
        withState { s in finish(round, result, &s) }
        try result.get()
    }

    /// What one sync makes durable, as descriptors of its own (a sealed segment may be deleted meanwhile): segments
    /// sealed since the last round, the active segment and the ledger (oldest data first), and whether the segments
    /// directory has a new entry.
    private struct SyncRound {
        var sealed: [FileHandle]
        var activeAndLedger: [FileHandle]
        var directory: Bool
        /// The last sequence appended when the round was taken: durable once it has run.
        var through: UInt64

        /// fdatasyncs every file, then the directory; closes the files either way, here and not under the state
        /// lock: a deleted segment's space comes back as soon as its last descriptor goes (a full disk waits on it).
        func run(segmentsDirectory: String) throws(SpoolError) {
            defer { for f in sealed + activeAndLedger { f.close() } }
            for f in sealed + activeAndLedger { try f.dataSync() }
            if directory { Directory.sync(segmentsDirectory) }
        }
    }

    /// Takes the marks: what is written from now on belongs to the next round.
    private static func takeSyncRound(_ s: inout State) throws(SpoolError) -> SyncRound {
        var others: [FileHandle] = []
        do throws(SpoolError) {
            for handle in [s.segments.last?.handle, s.ledger] {
                if let handle { others.append(try handle.duplicate()) }
            }
        } catch {
            for f in others { f.close() }
            throw error
        }
        let round = SyncRound(sealed: s.sealedUnsynced, activeAndLedger: others, directory: s.directoryUnsynced, through: s.nextSequence - 1)
        s.sealedUnsynced = []
        s.directoryUnsynced = false
        s.unsynced = false
        s.lastSync = .now
        s.roundsInFlight += 1
        return round
    }

    /// After a round. The mark moves only when no other round is in flight (an append's own round can finish
    /// before a flusher round that holds segments sealed earlier), and never again after a failure: the kernel
    /// reports a writeback error once and may drop the pages it could not write, so a retry would succeed without
    /// them. What is written after the failure is synced by the next round as usual.
    private func finish(_ round: SyncRound, _ result: Result<Void, SpoolError>, _ s: inout State) {
        s.roundsInFlight -= 1
        switch result {
        case .success:
            s.markCandidate = max(s.markCandidate, round.through)
        case .failure(let error):
            if !s.syncFailed {
                logger.error("spool: \(error); records appended before it may not be on disk, and the spool no longer reports a durable mark")
            }
            s.syncFailed = true
            s.unsynced = true
            s.directoryUnsynced = s.directoryUnsynced || round.directory
        }
        if s.roundsInFlight == 0 && !s.syncFailed { s.durableThrough = max(s.durableThrough, s.markCandidate) }
    }

    /// Every record this spool appended (or found at open) up to this sequence is on disk: under `interval`, what
    /// the flusher's last completed round covered. The power-cut tests check that nothing at or below it is lost.
    public var durableSequence: UInt64 { withState { $0.durableThrough } }

    /// The sequence of the newest record appended (or found at open); 0 before any. A rise shows readings came in.
    public var lastAppendedSequence: UInt64 { withState { $0.nextSequence - 1 } }

    /// True while appended (interval policy) or acknowledged data waits for the flusher's next fdatasync.
    public var hasUnsyncedData: Bool { withState { $0.unsynced } }

    /// The same round as `sync`, in line under the state lock (a starved flusher, `close`).
    private func syncLocked(_ s: inout State) throws(SpoolError) {
        guard s.unsynced else { return }
        let round = try Self.takeSyncRound(&s)
        let result = Result { () throws(SpoolError) in try round.run(segmentsDirectory: configuration.directory + "/segments") }
        finish(round, result, &s)
        try result.get()
    }

    /// Records not yet settled (queued, retried, in flight): `statistics().depth` without building the rest.
    public var depth: Int { withState { $0.leaves.depth } }

    public func statistics(nowMs: Int64 = WallClock.nowMilliseconds()) -> SpoolStatistics {
        withState { s in
            let oldest = s.segments.filter { $0.live > 0 }.map(\.oldestAcquiredMs).min()
            return SpoolStatistics(
                depth: s.leaves.depth, bytes: s.segments.reduce(0) { $0 + $1.size + $1.indexBytes },
                oldestAgeMilliseconds: oldest.map { nowMs - $0 }, depthByLeaf: s.leaves.depthByLeaf,
                dropped: s.dropped, corruptRegions: s.corruptRegions, tornTails: s.tornTails,
                corruptLedgerEntries: s.corruptLedgerEntries, salvagedRecords: s.salvaged)
        }
    }

    public func close() {
        flusher?.timer.cancel()
        // After any flusher round in flight: it may hold sealed segments still to sync, and `clean` must come last.
        syncing.withLock { _ in closeLocked() }
    }

    private func closeLocked() {
        withState { s in
            guard !s.closed else { return }
            // Under `syncing`: no flusher round is in flight, so what is unmarked is on disk already.
            let synced = isReadOnly || (try? syncLocked(&s)) != nil
            for handle in s.sealedUnsynced { handle.close() }
            for seg in s.segments { seg.handle.close() }
            s.ledger?.close()
            s.deadLetter?.close()
            s.closed = true
            // Every record is on disk: the next open may number on from the last one (no jump to the floor).
            if !isReadOnly && synced, let f = try? FileHandle.open(configuration.directory + "/clean", flags: O_WRONLY | O_CREAT | O_TRUNC) {
                f.close()
                Directory.sync(configuration.directory)
            }
            // LOCK_UN frees the lock on the open file description even if a forked child still holds a copy.
            if lockFD >= 0 { flock(lockFD, LOCK_UN) }
        }
    }
}

