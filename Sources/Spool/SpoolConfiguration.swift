/// How a spool stores, bounds and syncs. Owned by the Spool module; the daemon's config maps onto it.
public struct SpoolConfiguration: Sendable, Equatable {
    public enum SyncPolicy: Sendable, Equatable {
        /// fdatasync before `append` returns. Nothing acknowledged is ever lost.
        case always
        /// Group commit: `append` returns after the write; data is fdatasync'd within this many milliseconds.
        /// Power loss may lose that window; a process crash loses nothing.
        case interval(milliseconds: Int)
    }

    public enum FullPolicy: Sendable, Equatable {
        /// Delete the oldest segment (counting its undelivered records as dropped).
        case dropOldest
        /// Refuse appends with `SpoolError.full` (back-pressure to the adapters).
        case rejectNew
    }

    public var directory: String
    /// Segment size. Default: 8 MiB.
    public var segmentBytes = 8 * 1024 * 1024
    /// Total bytes of segment files. Disk use stays ≤ cap + one segment. Default: 256 MiB.
    public var capBytes = 256 * 1024 * 1024
    /// Default: always.
    public var sync: SyncPolicy = .always
    /// Default: drop-oldest.
    public var fullPolicy: FullPolicy = .dropOldest
    /// At most this many undelivered records per leaf; beyond it the leaf's oldest queued record is dropped
    /// (reason `overflow`), so one noisy or dead leaf cannot crowd out the others. Default: nil (only the total cap).
    public var perLeafCapRecords: Int?
    /// Records older than this are dropped undelivered (reason `ttl`). Default: nil (kept until delivered).
    public var ttlMilliseconds: Int64?
    /// Size bound of the dead-letter file (it is rotated once). Default: 4 MiB.
    public var deadLetterBytes = 4 * 1024 * 1024

    /// Locations of queued records kept listed in memory at most; the records of segments started past it are read
    /// back from their segment's index when their leaves get to them (`LeafQueues`). Small in tests.
    var listedRecordsBudget = 65_536

    public init(directory: String) { self.directory = directory }
}

/// Why a record left the spool undelivered.
public enum DropReason: String, Sendable, CaseIterable {
    case overflow, ttl, rejected
}

public struct SpoolStatistics: Sendable, Equatable {
    /// Records not yet acknowledged (including in flight).
    public var depth: Int
    public var bytes: Int
    public var oldestAgeMilliseconds: Int64?
    public var depthByLeaf: [String: Int]
    public var dropped: [DropReason: [String: Int]]
    /// Corrupt records or regions found at open, torn tails truncated, corrupt ledger entries.
    public var corruptRegions: Int
    public var tornTails: Int
    public var corruptLedgerEntries: Int
    public var salvagedRecords: Int
}
