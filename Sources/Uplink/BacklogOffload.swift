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
    /// Where files wait, written and synced, until the hub has them. The readings leave the spool only once their
    /// file is there, so a crash between the two uploads the file at the next start rather than losing anything.
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

    /// `<leaf, percent-encoded>.<first sequence>-<last sequence>.<records>.jsonl.gz`
    static func name(leaf: String, first: UInt64, last: UInt64, records: Int) -> String {
        "\(PercentEncoding.encode(leaf)).\(first)-\(last).\(records).jsonl.gz"
    }

    init(path: String, leaf: String, records: Int) {
        self.path = path
        self.leaf = leaf
        self.records = records
    }

    /// From a staged file's path; nil for anything else in the directory.
    init?(path: String) {
        let name = String(path.split(separator: "/").last ?? "")
        guard name.hasSuffix(".jsonl.gz") else { return nil }
        // From the right: a device id may hold dots itself.
        let parts = name.dropLast(".jsonl.gz".count).split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count >= 3, let records = Int(parts[parts.count - 1]), parts[parts.count - 2].contains("-"),
              let leaf = PercentEncoding.decode(parts.dropLast(2).joined(separator: ".")), !leaf.isEmpty
        else { return nil }
        self.init(path: path, leaf: leaf, records: records)
    }

    var fileName: String { String(path.split(separator: "/").last ?? "") }
}

/// Moves old readings from the spool into staged files. Runs on the spool pump's queue, between its jobs, so the
/// records it takes are not being fetched for D2C at the same time.
struct BacklogStager {
    let policy: BacklogOffloadPolicy
    let spool: Spool
    /// Leaves the uplink carries (a file can only be uploaded with its leaf's credential).
    let leaves: Set<String>
    /// Leaves with a file staged already: no second one until the hub has it, so what waits outside the spool (and
    /// its cap) is one file per leaf at most.
    let waiting: Set<String>

    /// Stages at most one file per leaf whose backlog is over the threshold. The records of a staged file are
    /// acknowledged in the spool once the file is synced.
    func stage(nowMs: Int64) throws(SpoolError) -> [StagedBacklogFile] {
        let depth = spool.statistics(nowMs: nowMs).depthByLeaf
        let cutoff = nowMs - policy.olderThanMilliseconds
        var staged: [StagedBacklogFile] = []
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
            try spool.acknowledge(old.map(\.sequence))
            staged.append(StagedBacklogFile(path: path, leaf: leaf, records: old.count))
        }
        return staged
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
