import FieldgateCore
import Gzip
import IoTHub
import Spool

#if canImport(Glibc)
import Glibc
#endif

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// When a leaf's backlog goes to files instead of D2C messages (docs/iothub-protocol.md §17): a multi-day backlog
/// replayed as D2C costs a message of the daily quota per reading, a file costs two.
public struct BacklogOffloadPolicy: Sendable, Equatable {
    /// A leaf whose spooled readings number at least this many has its old ones offloaded.
    public var minRecords: Int
    /// Only readings acquired at least this long ago go to files; newer ones stay D2C.
    public var olderThanMilliseconds: Int64
    /// Readings per file, at most.
    public var maxRecordsPerFile = 100_000
    /// Where files wait, written and synced, until the hub has them. Their readings stay in the spool, held back
    /// from D2C, until the hub confirmed the upload (docs/iothub-protocol.md §17).
    public var stagingDirectory: String
    /// How often backlogs are looked at and staged files uploaded. Default: 60 s.
    public var checkIntervalMilliseconds: Int64 = 60_000

    public init(minRecords: Int, olderThanMilliseconds: Int64, stagingDirectory: String) {
        self.minRecords = minRecords
        self.olderThanMilliseconds = olderThanMilliseconds
        self.stagingDirectory = stagingDirectory
    }
}

/// A file of readings staged for upload.
struct StagedBacklogFile: Equatable, Sendable {
    var path: String
    var leaf: String
    var records: Int
    /// The spool sequences of its first and last reading (its readings are the leaf's records between them).
    var first: UInt64
    var last: UInt64

    /// `<leaf, percent-encoded>.<first sequence>-<last sequence>.<records>.jsonl.gz`
    static func name(leaf: String, first: UInt64, last: UInt64, records: Int) -> String {
        "\(PercentEncoding.encode(leaf)).\(first)-\(last).\(records).jsonl.gz"
    }

    init(path: String, leaf: String, records: Int, first: UInt64, last: UInt64) {
        self.path = path
        self.leaf = leaf
        self.records = records
        self.first = first
        self.last = last
    }

    /// From a staged file's path; nil for anything else in the directory.
    init?(path: String) {
        let name = String(path.split(separator: "/").last ?? "")
        guard name.hasSuffix(".jsonl.gz") else { return nil }
        // From the right: a device id may hold dots itself.
        let parts = name.dropLast(".jsonl.gz".count).split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count >= 3, let records = Int(parts[parts.count - 1]) else { return nil }
        let range = parts[parts.count - 2].split(separator: "-")
        guard range.count == 2, let first = UInt64(range[0]), let last = UInt64(range[1]), first <= last,
              let leaf = PercentEncoding.decode(parts.dropLast(2).joined(separator: ".")), !leaf.isEmpty
        else { return nil }
        self.init(path: path, leaf: leaf, records: records, first: first, last: last)
    }

    var fileName: String { String(path.split(separator: "/").last ?? "") }

    /// The staged files in `directory`, oldest name first (a directory read: not on the cooperative pool).
    static func all(in directory: String) -> [StagedBacklogFile] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.sorted().compactMap { StagedBacklogFile(path: directory + "/" + $0) }
    }
}

/// Copies old readings from the spool into staged files and holds them back from D2C until the hub has the file.
/// Runs on the spool pump's queue, between its jobs, so the records it takes are not being fetched for D2C at the
/// same time.
struct BacklogStager {
    let policy: BacklogOffloadPolicy
    let spool: Spool
    /// Leaves the uplink carries (a file can only be uploaded with its leaf's credential).
    let leaves: Set<String>
    /// Leaves with a file staged already: no second one until the hub has it, so what waits outside the spool (and
    /// its cap) is one file per leaf at most.
    let waiting: Set<String>

    /// Stages at most one file per leaf whose backlog is over the threshold. The records of a staged file stay
    /// taken (in flight) in the spool: acknowledged once the hub confirmed the upload, given back if it refuses it.
    func stage(nowMs: Int64) throws(SpoolError) -> [(file: StagedBacklogFile, sequences: [UInt64])] {
        let depth = spool.statistics(nowMs: nowMs).depthByLeaf
        let cutoff = nowMs - policy.olderThanMilliseconds
        var staged: [(file: StagedBacklogFile, sequences: [UInt64])] = []
        for (leaf, n) in depth.sorted(by: { $0.key < $1.key })
        where n >= policy.minRecords && leaves.contains(leaf) && !waiting.contains(leaf) {
            // The leaf's oldest records, in order (what D2C has in flight already stays there).
            let taken = try spool.next(max: policy.maxRecordsPerFile, quantum: policy.maxRecordsPerFile, nowMs: nowMs) { _, l, wanted in
                l == leaf ? max(0, wanted) : 0
            }
            let old = taken.prefix { $0.acquiredAtMs <= cutoff }
            let newer = taken.dropFirst(old.count)
            if !newer.isEmpty { spool.release(newer.map(\.sequence)) }
            guard let first = old.first, let last = old.last else { continue }
            let bytes = Gzip.compress(Self.jsonLines(old, messageIDPrefix: spool.messageIDPrefix))
            let path = policy.stagingDirectory + "/" + StagedBacklogFile.name(leaf: leaf, first: first.sequence, last: last.sequence, records: old.count)
            if let e = StateFile.replace(path, with: bytes, durable: true) {
                spool.release(old.map(\.sequence))
                throw SpoolError(.io, "cannot stage \(old.count) readings of \(leaf) in \(path): \(String(cString: strerror(e)))", errno: e)
            }
            staged.append((StagedBacklogFile(path: path, leaf: leaf, records: old.count, first: first.sequence, last: last.sequence),
                           old.map(\.sequence)))
        }
        return staged
    }

    /// At start, before any D2C fetch: the readings of files an earlier run staged and did not get confirmed are
    /// taken again (held back from D2C) so they go in their file, not as D2C behind newer readings. A file whose
    /// readings are no longer spooled (the hub confirmed it, the run ended before the file was removed) holds none:
    /// it is uploaded again, with the same message ids.
    func reclaim(_ files: [StagedBacklogFile], nowMs: Int64) throws(SpoolError) -> [String: [UInt64]] {
        var held: [String: [UInt64]] = [:]
        for file in files {
            let taken = try spool.next(max: file.records, quantum: file.records, nowMs: nowMs) { _, l, wanted in
                l == file.leaf ? max(0, wanted) : 0
            }
            let mine = taken.filter { (file.first...file.last).contains($0.sequence) }
            let others = taken.filter { !(file.first...file.last).contains($0.sequence) }
            if !others.isEmpty { spool.release(others.map(\.sequence)) }
            held[file.path] = mine.map(\.sequence)
        }
        return held
    }

    /// One JSON object per reading: the message id it would have had as D2C, its device, its acquisition time (as
    /// `iothub-creation-time-utc`), content type and encoding, properties, and the body: as JSON when it is JSON on one
    /// line, else base64.
    static func jsonLines(_ records: some Sequence<SpoolRecord>, messageIDPrefix: String) -> [UInt8] {
        var out: [UInt8] = []
        for r in records {
            let envelope = TelemetryEnvelope(decoding: r.payload)
            var line: [String: JSONValue] = [
                "messageId": .string(messageIDPrefix + String(r.sequence)),
                "deviceId": .string(r.leaf),
                "creationTimeUtc": .string(WallClock.iso8601(milliseconds: r.acquiredAtMs)),
            ]
            if let envelope {
                line["contentType"] = .string(envelope.contentType)
                line["contentEncoding"] = .string(envelope.contentEncoding)
                line["properties"] = .object(envelope.properties.mapValues(JSONValue.string))
            }
            let body = envelope?.body ?? r.payload
            if envelope?.contentType.hasPrefix("application/json") == true, !body.contains(10), !body.contains(13), let value = JSONValue.parse(body) {
                line["body"] = value
            } else {
                line["bodyBase64"] = .string(Data(body).base64EncodedString())
            }
            out += JSONValue.object(line).bytes
            out.append(10)
        }
        return out
    }
}
