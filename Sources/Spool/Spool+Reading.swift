import FieldgateCore
import Logging

#if canImport(Glibc)
import Glibc
#endif

extension Spool {
    /// Up to `max` records, per leaf in order, taking leaves in turn (round-robin) and skipping `excluding`
    /// (leaves that are backing off). Records stay in flight until acknowledged, released or dead-lettered.
    public func next(max: Int, excluding: Set<String> = [], nowMs: Int64 = WallClock.nowMilliseconds()) throws(SpoolError) -> [SpoolRecord] {
        try next(max: max, nowMs: nowMs) { !excluding.contains($0) }
    }

    /// Up to `max` records, per leaf in order, leaves in turn; `admit(leaf)` is asked before each record is taken
    /// (under the spool's lock, so keep it cheap): the uplink uses it to give each ready leaf its own budget.
    ///
    /// The records are picked first, then read with one `pread` per run of nearby records (`ReadPlan`): a batch
    /// of records appended together is one read, not two per record.
    ///
    /// `quantum`: records taken from one leaf per turn (the uplink's coalescing asks for a message's worth, so a
    /// small fetch still fills whole messages for a few leaves rather than carrying a reading or two for each).
    public func next(max: Int, quantum: Int = 1, nowMs: Int64 = WallClock.nowMilliseconds(), admit: (String) -> Bool) throws(SpoolError) -> [SpoolRecord] {
        try next(max: max, quantum: quantum, nowMs: nowMs) { _, leaf, wanted in
            guard wanted > 0 else { return 0 }  // what `admit` allowed stays allowed
            var granted = 0
            while granted < wanted, admit(leaf) { granted += 1 }
            return granted
        }
    }

    /// The same, asking once per turn: `grant(slot, leaf, wanted)` says how many of up to `wanted` records the leaf
    /// may give now (a leaf with fewer queued gives what it has). A negative `wanted` gives back that many granted
    /// records that turned out expired or corrupt (they were settled, not handed out); the answer is ignored.
    /// `slot` numbers the leaf for the spool's lifetime (0, 1, … in order of first appearance), so a caller can keep
    /// per-leaf state in an array instead of hashing the name for every record.
    public func next(max: Int, quantum: Int = 1, nowMs: Int64 = WallClock.nowMilliseconds(),
                     grant: (_ slot: Int, _ leaf: String, _ wanted: Int) -> Int) throws(SpoolError) -> [SpoolRecord] {
        try fetch(max: max, quantum: quantum, nowMs: nowMs, grant: grant).values
    }

    /// `next`, with the records as views into the bytes read (the uplink's path: no array per record).
    public func fetch(max: Int, quantum: Int = 1, nowMs: Int64 = WallClock.nowMilliseconds(),
                      grant: (_ slot: Int, _ leaf: String, _ wanted: Int) -> Int) throws(SpoolError) -> SpoolBatch {
        try withState { s throws(SpoolError) -> SpoolBatch in
            var out = SpoolBatch()
            // Room for what there is, at most `max`: growing a large fetch's array copied it ~90 instructions a record.
            out.reserveCapacity(Swift.min(max, s.leaves.depth))
            // Records that turn out expired (TTL) or corrupt are settled and given back to the leaf's grant (a
            // negative `wanted`), and the pick goes on: an expired backlog does not hold up what follows it.
            while out.count < max {
                var picked: [LeafQueues.Taken] = []
                picked.reserveCapacity(out.records.capacity - out.count)
                var idleRounds = 0
                while picked.count < max - out.count, s.leaves.count > 0, idleRounds < s.leaves.count {
                    s.roundRobin %= s.leaves.count
                    let slot = Int32(s.roundRobin)
                    s.roundRobin += 1
                    var taken = 0
                    if s.leaves[slot].hasQueued {
                        let granted = grant(Int(slot), s.leaves[slot].name, Swift.min(quantum, max - out.count - picked.count))
                        while taken < granted, let t = take(slot, &s) {
                            picked.append(t)
                            taken += 1
                        }
                    }
                    idleRounds = taken == 0 ? idleRounds + 1 : 0
                }
                guard !picked.isEmpty else { break }
                let frames: [FrameRef]
                do throws(SpoolError) {
                    frames = try read(picked.map(\.location), s, into: &out, largestFrame: &s.largestFrame)
                } catch {
                    // Nothing is lost to a failed read: what this call took goes back to the front of its leaf.
                    s.leaves.putBack(picked)
                    s.leaves.giveBack(out.records.compactMap { r in s.inFlight.removeValue(forKey: r.sequence).map { (r.sequence, $0) } })
                    throw error
                }
                var expired: [UInt64: RecordLocation] = [:]
                var wasted: [Int32: Int] = [:]
                s.inFlight.reserve(s.inFlight.count + picked.count)
                for (t, record) in zip(picked, frames) {
                    guard record.isReadable else {
                        unreadable(t.location, &s)
                        wasted[t.location.slot, default: 0] += 1
                        continue
                    }
                    if let ttl = configuration.ttlMilliseconds, nowMs - record.acquiredAtMs > ttl {
                        expired[record.sequence] = t.location
                        wasted[t.location.slot, default: 0] += 1
                        continue
                    }
                    s.inFlight[record.sequence] = t.location
                    let slot = t.location.slot
                    out.append(SpoolBatch.Record(sequence: record.sequence, acquiredAtMs: record.acquiredAtMs,
                                                 flags: record.flags, leafIndex: Int(slot), buffer: record.buffer, payload: record.payload),
                               leaf: s.leaves[slot].name)
                }
                guard !wasted.isEmpty else { break }
                for (slot, n) in wasted { _ = grant(Int(slot), s.leaves[slot].name, -n) }
                if !expired.isEmpty { try settle(Array(expired.keys), locations: expired, reason: .ttl, &s) }
            }
            return out
        }
    }

    /// The leaf's next record (`LeafQueues.take`), listing the records of cold segments as the leaf gets to them.
    func take(_ slot: Int32, _ s: inout State) -> LeafQueues.Taken? {
        while true {
            if let t = s.leaves.take(slot) { return t }
            guard s.leaves.cold(slot) > 0, list(for: slot, &s) else { return nil }
        }
    }

    /// Lists the records of the leaf's first cold segment (and those of the leaves `LeafQueues.beginListing` lists
    /// along), read back from its index. False when there is none, or it cannot be read now (the records stay
    /// counted, and the next fetch tries again).
    func list(for slot: Int32, _ s: inout State) -> Bool {
        guard let front = s.leaves.frontier(slot), let i = s.segments.firstIndex(where: { $0.id >= front }) else {
            logLost(s.leaves.loseCold(slot), s)
            return false
        }
        let segment = s.segments[i]
        s.leaves.beginListing(segment: segment.id, previous: i > 0 ? s.segments[i - 1].id : nil, records: segment.live, dry: slot)
        let slots = s.leaves.listingSlots
        // A few leaves read their own sections of a sealed segment's index; many (or a segment without a version 2
        // index) walk it whole.
        let walked = (i < s.segments.count - 1 && slots.count <= Self.mostLeavesListedBySection && listSections(ofSegmentAt: i, slots, &s))
            || walkUnacknowledged(ofSegmentAt: i, &s) { s, slot, offset in
                _ = s.leaves.list(slot, segment: segment.id, offset: offset)
            }
        guard walked else {
            s.leaves.abandonListing()
            return false
        }
        logLost(s.leaves.finishListing(segment: segment.id, next: i + 1 < s.segments.count ? s.segments[i + 1].id : nil), s)
        releaseSectionMap(ofSegmentAt: i, &s)
        return true
    }

    /// Past this many leaves in one listing, one read of the whole index costs less than a read per leaf.
    static let mostLeavesListedBySection = 64

    /// Lists the unacknowledged records of `slots` in the sealed segment at `i` from their sections of its index, one
    /// `pread` each: a leaf behind the others lists a segment without walking every leaf's records (a 1 M drain over
    /// 1000 leaves lists ~13,500 times; walking ~31,000 records each time doubled the drain's CPU). Every section is
    /// read and checked before any record is listed. False, with nothing listed, when the index has no sections
    /// (version 1, gone, damaged): the caller walks the segment instead.
    func listSections(ofSegmentAt i: Int, _ slots: [Int32], _ s: inout State) -> Bool {
        if case .unread = s.segments[i].sections { s.segments[i].sections = sectionMap(of: s.segments[i], &s) }
        guard case .bySlot(let bySlot) = s.segments[i].sections else { return false }
        let segment = s.segments[i]
        // An I/O error (say, out of descriptors) lets this listing walk the segment; the next one tries again.
        guard let file = try? FileHandle.open(SegmentIndex.path(ofSegment: segment.path), flags: O_RDONLY) else { return false }
        defer { file.close() }
        var sections: [(slot: Int32, bytes: [UInt8])] = []
        sections.reserveCapacity(slots.count)
        for slot in slots where Int(slot) < bySlot.count && bySlot[Int(slot)] != 0 {
            let place = bySlot[Int(slot)]
            let count = Int(place & 0xFFFF_FFFF)
            guard let bytes = try? file.read(offset: Int(place >> 32), count: count), bytes.count == count else { return false }
            guard SegmentIndex.isValid(section: bytes, segmentSize: segment.size) else {
                // Damaged since its map was read: the walk checks the whole file, scans the segment and indexes it again.
                logger.warning("spool: a section of segment \(segment.id)'s index is damaged; listing from the segment itself")
                s.segments[i].sections = .unavailable
                return false
            }
            sections.append((slot, bytes))
        }
        s.listingsBySection += 1
        for (slot, bytes) in sections {
            SegmentIndex.forEach(checkedSection: bytes, segmentSize: segment.size) { sequence, offset, _ in
                guard !s.acked.contains(sequence) else { return }
                _ = s.leaves.list(slot, segment: segment.id, offset: UInt32(offset))
            }
        }
        return true
    }

    /// Forgets the segment's section map once no leaf with records there still has to list it (8 bytes a leaf for
    /// every segment between the slowest leaf and the fastest would otherwise stay until the segment is deleted);
    /// a later listing of it reads the map again.
    func releaseSectionMap(ofSegmentAt i: Int, _ s: inout State) {
        guard case .bySlot(let bySlot) = s.segments[i].sections else { return }
        let id = s.segments[i].id
        for (slot, place) in bySlot.enumerated() where place != 0 {
            let leaf = Int32(slot)
            if s.leaves.cold(leaf) > 0, let front = s.leaves.frontier(leaf), front <= id { return }
        }
        s.segments[i].sections = .unread
    }

    /// Where each leaf's section lies in the segment's index (by slot: offset << 32 | size; 0: none), read once per
    /// segment, when a listing first needs it.
    private func sectionMap(of segment: Segment, _ s: inout State) -> Segment.Sections {
        guard let bytes = Self.readIndex(of: segment), let sections = SegmentIndex.LeafSections(bytes, segmentSize: segment.size) else {
            return .unavailable
        }
        var bySlot: [UInt64] = []
        for (name, range) in zip(sections.names, sections.sections) where range.count > 4 {
            // A leaf without a slot has nothing queued here (its records were acknowledged before the spool opened).
            guard let known = s.leaves.existingSlot(of: name) else { continue }
            let slot = Int(known)
            if slot >= bySlot.count { bySlot.append(contentsOf: repeatElement(0, count: slot + 1 - bySlot.count)) }
            // Two names the leaves' table holds as one: the walk lists both.
            guard bySlot[slot] == 0 else { return .unavailable }
            bySlot[slot] = UInt64(range.lowerBound) << 32 | UInt64(range.count)
        }
        return .bySlot(bySlot)
    }

    /// Calls `body` with the slot and offset of every unacknowledged record of the segment, each leaf's in file
    /// order, from its index (the active segment's is in memory; a sealed segment whose index is gone or damaged is
    /// scanned). A sealed segment without a version 2 index gets one here when what it was listed from is sound (a
    /// version 1 index, or a scan that found no damage), so later listings read sections. Records counted when the
    /// segment was indexed and no longer there (corruption since) are counted as corrupt: the segment does not wait
    /// for them. False when the segment cannot be read now.
    func walkUnacknowledged(ofSegmentAt i: Int, _ s: inout State, _ body: (inout State, Int32, UInt32) -> Void) -> Bool {
        let segment = s.segments[i]
        s.listingsWhole += 1
        var present = 0
        var rebuilt: SegmentIndex?
        func visit(_ r: SpoolRecord, _ offset: Int) {
            rebuilt?.add(r, at: offset)
            guard !s.acked.contains(r.sequence) else { return }
            present += 1
            let slot = s.leaves.slot(of: r.leaf)
            body(&s, slot, UInt32(offset))
        }
        if i == s.segments.count - 1 {
            s.activeIndex.forEach(segmentSize: segment.size, visit)
        } else {
            let index = Self.readIndex(of: segment)
            // Anything but a current index is replaced by one made from what this walk visits (a version 1 index
            // read whole, or a clean scan of the segment).
            let isCurrent = index.map { $0.count > 4 && $0[4] == SegmentIndex.version } ?? false
            if !isReadOnly && !isCurrent { rebuilt = SegmentIndex() }
            // Checked whole before any visit: a damaged index visits nothing and the segment is scanned instead.
            let walked = index.map { SegmentIndex.forEach($0, segmentSize: segment.size, visit) } ?? false
            if !walked {
                if !isReadOnly { rebuilt = SegmentIndex() }
                let bytes: [UInt8]
                do throws(SpoolError) { bytes = try segment.handle.read(offset: 0, count: segment.size) } catch {
                    logger.warning("spool: cannot read segment \(segment.id) to list its records (\(error)); trying again later")
                    return false
                }
                let scan = bytes.withUnsafeBytes { SegmentScan(scanning: $0, keepRecords: false, visit) }
                // Damage stays unindexed, so the next open scans the segment and quarantines it.
                if !scan.corruptRegions.isEmpty || scan.tornTail || scan.validEnd != bytes.count { rebuilt = nil }
            }
            if let rebuilt {
                s.segments[i].indexBytes = Self.writeIndex(of: s.segments[i], rebuilt)
                s.segments[i].sections = .unread
            }
        }
        if present < segment.live {
            logger.warning("spool: segment \(segment.id) holds \(segment.live - present) records fewer than counted; counted as corrupt")
            s.corruptRegions += segment.live - present
            s.segments[i].live = present
        }
        return true
    }

    /// Records counted for these leaves were not found where they were counted: said once per leaf.
    private func logLost(_ lost: [(slot: Int32, count: Int)], _ s: State) {
        for (slot, count) in lost {
            logger.warning("spool: \(count) records of \(s.leaves[slot].name) were not found where they were counted; skipped")
        }
    }

    /// Removes the leaf's oldest queued (not in-flight) record, for the per-leaf cap.
    func popQueued(_ slot: Int32, _ s: inout State) -> (sequence: UInt64, location: RecordLocation)? {
        while let location = take(slot, &s)?.location {
            guard let r = try? read([location], s)[0] else { unreadable(location, &s); continue }
            return (r.sequence, location)
        }
        return nil
    }

    /// A record an index listed whose bytes no longer pass their CRC (bit rot in a sealed segment): counted as a
    /// corrupt region, and the segment's index removed so the next open scans it and quarantines the damage.
    func unreadable(_ location: RecordLocation, _ s: inout State) {
        s.corruptRegions += 1
        s.leaves.adjustDepth(location.slot, by: -1)
        if let i = s.segments.firstIndex(where: { $0.id == location.segment }) {
            s.segments[i].live -= 1
            if !isReadOnly {  // an inspection changes nothing on disk
                Directory.remove(SegmentIndex.path(ofSegment: s.segments[i].path))
                s.segments[i].indexBytes = 0
                s.segments[i].sections = .unavailable
            }
        }
        logger.warning("spool: a record of \(s.leaves[location.slot].name) at \(location.offset) in segment \(location.segment) is corrupt; skipped and counted")
    }

    /// The records at `locations`, in their order; nil where the bytes do not decode (or the segment is gone).
    func read(_ locations: [RecordLocation], _ s: State) throws(SpoolError) -> [SpoolRecord?] {
        var batch = SpoolBatch()
        var largest = 0
        let frames = try read(locations, s, into: &batch, largestFrame: &largest)
        return zip(locations, frames).map { l, f in
            guard f.isReadable else { return nil }
            return SpoolRecord(leaf: s.leaves[l.slot].name, sequence: f.sequence, acquiredAtMs: f.acquiredAtMs, flags: f.flags,
                               payload: batch.withPayload(buffer: f.buffer, f.payload) { Array($0) })
        }
    }

    /// Where a record read lies in a batch's buffers, with its header. Plain data (no reference, no optional):
    /// copying optional records through the reading loop cost ~500 instructions a record in value witnesses.
    struct FrameRef {
        var sequence: UInt64 = 0
        var acquiredAtMs: Int64 = 0
        var flags: UInt8 = 0
        /// -1: the record did not decode (or its segment is gone).
        var buffer = -1
        var payload: Range<Int> = 0..<0
        var isReadable: Bool { buffer >= 0 }
    }

    /// The records at `locations`, in their order, as places in `batch`'s buffers (the bytes read are added to it;
    /// the records are not).
    /// `largestFrame` grows to the largest frame read.
    func read(_ locations: [RecordLocation], _ s: State, into batch: inout SpoolBatch, largestFrame: inout Int) throws(SpoolError) -> [FrameRef] {
        var out = [FrameRef](repeating: FrameRef(), count: locations.count)
        func frame(_ v: RecordCodec.FrameView, buffer: Int) -> FrameRef {
            FrameRef(sequence: v.sequence, acquiredAtMs: v.acquiredAtMs, flags: v.flags, buffer: buffer, payload: v.payload)
        }
        let tail = s.readTail
        for run in ReadPlan(locations, tail: tail).runs {
            guard let seg = s.segments.first(where: { $0.id == run.segment }) else { continue }
            let start = run.firstOffset
            // Past the last record's start: its frame, guessed; a longer frame is read again on its own below.
            let end = Swift.min(seg.size, run.lastOffset + tail)
            guard end > start else { continue }
            // Read straight into the batch's own memory, which its records point into.
            let read = OwnedBytes(count: end - start)
            let length = try seg.handle.read(offset: start, into: read.bytes)
            let bytes = UnsafeRawBufferPointer(rebasing: read.bytes[..<Swift.min(length, end - start)])
            let buffer = batch.add(read)
            var used = 0
            for member in run.members {
                let at = Int(locations[member].offset) - start
                switch RecordCodec.decodeView(bytes, at: at) {
                case .record(let v):
                    out[member] = frame(v, buffer: buffer)
                    used += v.payload.count
                    largestFrame = Swift.max(largestFrame, v.frameSize)
                case .truncated:
                    guard let bytes = try readFrame(seg, offset: Int(locations[member].offset)) else { break }
                    if case .record(let v) = bytes.withUnsafeBytes({ RecordCodec.decodeView($0, at: 0) }) {
                        out[member] = frame(v, buffer: batch.add(buffer: bytes))
                        largestFrame = Swift.max(largestFrame, v.frameSize)
                    }
                case .corrupt: break
                }
            }
            // A read mostly of other records (gaps, the tail guess) is not kept for a few payloads: they are copied
            // into one buffer of their own, so a batch holds about what it delivers.
            if used * 2 < bytes.count { compact(run.members, from: buffer, &out, &batch) }
        }
        return out
    }

    /// Moves the payloads of `members` that lie in `buffer` into one new buffer, and lets go of `buffer`.
    private func compact(_ members: [Int], from buffer: Int, _ out: inout [FrameRef], _ batch: inout SpoolBatch) {
        var total = 0
        for m in members where out[m].buffer == buffer { total += out[m].payload.count }
        var placed: [(member: Int, range: Range<Int>)] = []
        placed.reserveCapacity(members.count)
        let compacted = OwnedBytes(count: total)
        var at = 0
        for m in members where out[m].buffer == buffer {
            let range = out[m].payload
            if !range.isEmpty {
                batch.withPayload(buffer: buffer, range) { source in
                    (compacted.bytes.baseAddress! + at).copyMemory(from: source.baseAddress!, byteCount: range.count)
                }
            }
            placed.append((m, at..<(at + range.count)))
            at += range.count
        }
        batch.replace(buffer: buffer, with: compacted)
        for p in placed { out[p.member].payload = p.range }
    }

    /// One frame on its own: its length first, then the rest.
    private func readFrame(_ seg: Segment, offset: Int) throws(SpoolError) -> [UInt8]? {
        let header = try seg.handle.read(offset: offset, count: RecordCodec.prefixSize)
        guard header.count == RecordCodec.prefixSize else { return nil }
        let length = header.withUnsafeBytes { Int(RecordCodec.read32($0, 0)) }
        guard length <= RecordCodec.maxRecordSize else { return nil }
        return try seg.handle.read(offset: offset, count: RecordCodec.prefixSize + length)
    }
}

/// Groups record locations into runs that one `pread` each can cover: same segment, ascending offsets, spanning at
/// most `maxSpan` bytes. Pure.
struct ReadPlan {
    struct Run: Equatable {
        var segment: UInt32
        var firstOffset: Int
        var lastOffset: Int
        /// Indexes into the locations given.
        var members: [Int]
    }

    /// At most this many bytes are read past the start of a run's last record (`State.readTail`).
    static let tailGuess = 4096
    /// The largest stretch one read covers (gaps between picked records are read too).
    static let maxSpan = 1 << 20
    /// The largest gap between two picked records that one read still covers: past it, another `pread` costs less
    /// than copying the gap (leaves that drain at different paces leave their next records far apart).
    static let maxGap = 32 * 1024

    let runs: [Run]

    /// `tail`: the bytes read past the start of a run's last record.
    init(_ locations: [RecordLocation], tail: Int = tailGuess) {
        // The common case needs no sort: every record in one segment, within one read's span and dense enough that
        // no more than `maxGap` a record is read in vain.
        if let first = locations.first, locations.allSatisfy({ $0.segment == first.segment }) {
            var low = first.offset, high = first.offset
            for l in locations {
                low = Swift.min(low, l.offset)
                high = Swift.max(high, l.offset)
            }
            let span = Int(high - low)
            if span + tail <= Self.maxSpan, span <= Self.maxGap * locations.count {
                runs = [Run(segment: first.segment, firstOffset: Int(low), lastOffset: Int(high), members: Array(locations.indices))]
                return
            }
        }
        if let (dense, sparse) = Self.windows(locations, tail: tail) {
            // The sparse windows' records go the general way, by their indexes among all.
            let rest = sparse.isEmpty ? [] : Self.sortedRuns(sparse.map { locations[$0] }, tail: tail).map { run in
                Run(segment: run.segment, firstOffset: run.firstOffset, lastOffset: run.lastOffset, members: run.members.map { sparse[$0] })
            }
            runs = dense + rest
            return
        }
        runs = Self.sortedRuns(locations, tail: tail)
    }

    /// The general way: the locations in file order, a run ending where the next record lies more than `maxGap`
    /// past the last or would take the read past `maxSpan`.
    static func sortedRuns(_ locations: [RecordLocation], tail: Int) -> [Run] {
        var runs: [Run] = []
        for i in fileOrder(locations) {
            let l = locations[i]
            let offset = Int(l.offset)
            if let last = runs.last, last.segment == l.segment, offset - last.firstOffset + tail <= maxSpan,
               offset - last.lastOffset <= maxGap {
                runs[runs.count - 1].lastOffset = offset
                runs[runs.count - 1].members.append(i)
            } else {
                runs.append(Run(segment: l.segment, firstOffset: offset, lastOffset: offset, members: [i]))
            }
        }
        return runs
    }

    /// Dense picks over more than one read's span (a backlog fetched for many leaves at once: each leaf's records
    /// interleave with everyone's), placed without sorting: each segment's stretch from its lowest picked offset
    /// is cut into windows one read covers, and each record goes to its window by arithmetic. Sorting them cost
    /// ~190 instructions a record. Runs come in file order; a run's members in the order given (`read` takes them
    /// in any order). A window holding its records sparsely (more than two frames' worth a record) is not read
    /// whole: its records' indexes come back in `sparse`, for the general way. Nil when the picks span many segments.
    static func windows(_ locations: [RecordLocation], tail: Int) -> (dense: [Run], sparse: [Int])? {
        let width = maxSpan - tail
        let n = locations.count
        guard width > 0, n > 0 else { return nil }
        // The segments (a fetch touches one or two), each with its lowest and highest picked offset; the current
        // segment's in locals (element-wise updates of the arrays cost more than the rest of the plan).
        var ids: [UInt32] = [], lows: [UInt32] = [], highs: [UInt32] = []
        var at = -1, low: UInt32 = 0, high: UInt32 = 0
        for l in locations {
            if at < 0 || l.segment != ids[at] {
                if at >= 0 { (lows[at], highs[at]) = (low, high) }
                if let known = ids.firstIndex(of: l.segment) {
                    at = known
                } else {
                    guard ids.count < 8 else { return nil }
                    ids.append(l.segment)
                    lows.append(l.offset)
                    highs.append(l.offset)
                    at = ids.count - 1
                }
                (low, high) = (lows[at], highs[at])
            }
            low = Swift.min(low, l.offset)
            high = Swift.max(high, l.offset)
        }
        (lows[at], highs[at]) = (low, high)
        // Window numbers: the segments in file order, each one's windows after the ones before it.
        var firstWindow = [Int](repeating: 0, count: ids.count)
        var windowSegment: [UInt32] = []
        for k in ids.indices.sorted(by: { ids[$0] < ids[$1] }) {
            firstWindow[k] = windowSegment.count
            let windows = Int(highs[k] - lows[k]) / width + 1
            guard windowSegment.count + windows <= n else { return nil }
            windowSegment.append(contentsOf: repeatElement(ids[k], count: windows))
        }
        let windowCount = windowSegment.count
        // Each record's window, and per window its count and lowest and highest offset (through one buffer pointer,
        // as the per-record step of a fetch).
        struct Window { var count = 0, low = UInt32.max, high: UInt32 = 0 }
        var windows = [Window](repeating: Window(), count: windowCount)
        at = 0
        let windowOf = windows.withUnsafeMutableBufferPointer { stats in
            locations.map { l -> Int in
                if l.segment != ids[at] { at = ids.firstIndex(of: l.segment)! }
                let w = firstWindow[at] + Int(l.offset - lows[at]) / width
                stats[w].count += 1
                stats[w].low = Swift.min(stats[w].low, l.offset)
                stats[w].high = Swift.max(stats[w].high, l.offset)
                return w
            }
        }
        var starts = [Int](repeating: 0, count: windowCount + 1)
        for w in 0..<windowCount { starts[w + 1] = starts[w] + windows[w].count }
        // The records by window (a counting sort, each window's in the order given).
        var filled = starts
        let byWindow = [Int](unsafeUninitializedCapacity: n) { out, initialized in
            for (i, w) in windowOf.enumerated() {
                (out.baseAddress! + filled[w]).initialize(to: i)
                filled[w] += 1
            }
            initialized = n
        }
        // Only windows mostly of picked records: about a frame (`tail`) a record at most twice over. Sparser picks
        // (a thousand leaves draining at their own paces) take the general way, whose reads end at gaps: a window
        // read for a few records was a megabyte of heap for a moment, and the drain's peak grew by ~0.3 MB.
        let densest = Swift.min(maxGap, 2 * tail)
        var runs: [Run] = []
        var sparse: [Int] = []
        for (w, window) in windows.enumerated() where window.count > 0 {
            let members = byWindow[starts[w] ..< starts[w + 1]]
            guard Int(window.high - window.low) <= densest * window.count else {
                sparse.append(contentsOf: members)
                continue
            }
            runs.append(Run(segment: windowSegment[w], firstOffset: Int(window.low), lastOffset: Int(window.high), members: Array(members)))
        }
        return (runs, sparse)
    }

    /// The indexes of `locations` by (segment, offset). Each as one integer — segment rank, offset, index — sorted
    /// without a comparison closure: the tuple comparison cost ~270 instructions a record when a fetch spanned
    /// segments or more than one read.
    static func fileOrder(_ locations: [RecordLocation]) -> [Int] {
        // A fetch touches a segment or two: found with a linear look-up rather than a hash per record.
        var segments: [UInt32] = []
        var last: UInt32?
        for l in locations where l.segment != last {
            last = l.segment
            if !segments.contains(l.segment) { segments.append(l.segment) }
            if segments.count > 256 { break }
        }
        segments.sort()
        guard segments.count <= 256, locations.count < 1 << 24 else {
            return locations.indices.sorted {
                (locations[$0].segment, locations[$0].offset) < (locations[$1].segment, locations[$1].offset)
            }
        }
        var keys: [UInt64] = []
        keys.reserveCapacity(locations.count)
        for (i, l) in locations.enumerated() {
            let rank = segments.count == 1 ? 0 : UInt64(segments.firstIndex(of: l.segment)!)
            keys.append(rank << 56 | UInt64(l.offset) << 24 | UInt64(i))
        }
        sortByPlace(&keys)
        return keys.map { Int($0 & 0xFF_FFFF) }
    }

    /// Sorts keys built by `fileOrder` by their place (bits 24–63: segment rank and offset), keeping keys of equal
    /// place in their order: a byte-at-a-time radix sort that skips the bytes all keys share. `sort()` compared its
    /// way through the leaves' interleaved runs at ~180 instructions a key.
    static func sortByPlace(_ keys: inout [UInt64]) {
        guard keys.count > 1 else { return }
        var all: UInt64 = 0, common: UInt64 = ~0
        for k in keys { all |= k; common &= k }
        let differing = all ^ common
        var scratch = [UInt64](repeating: 0, count: keys.count)
        var sortedInScratch = false
        keys.withUnsafeMutableBufferPointer { keysBuffer in
            scratch.withUnsafeMutableBufferPointer { scratchBuffer in
                withUnsafeTemporaryAllocation(of: Int.self, capacity: 256) { starts in
                    for shift in stride(from: UInt64(24), to: 64, by: 8) where (differing >> shift) & 0xFF != 0 {
                        let from = sortedInScratch ? scratchBuffer : keysBuffer
                        let to = sortedInScratch ? keysBuffer : scratchBuffer
                        starts.initialize(repeating: 0)
                        for k in from { starts[Int((k >> shift) & 0xFF)] += 1 }
                        var at = 0
                        for digit in 0..<256 {
                            let n = starts[digit]
                            starts[digit] = at
                            at += n
                        }
                        for k in from {
                            let digit = Int((k >> shift) & 0xFF)
                            to[starts[digit]] = k
                            starts[digit] += 1
                        }
                        sortedInScratch.toggle()
                    }
                }
            }
        }
        if sortedInScratch { keys = scratch }
    }
}
