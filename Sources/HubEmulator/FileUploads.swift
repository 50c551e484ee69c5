import FieldgateCore
import IoTHub
import MessageAuthentication
import ProtonAMQP

#if canImport(Glibc)
import Glibc
#endif

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// IoT Hub file upload as the hub keeps it (docs/iothub-protocol.md §17): SAS URIs handed to devices for blobs in
/// the hub's storage container, at most 10 outstanding per device, completed (or abandoned) by the device's
/// notification, and file-upload notifications for the service side. The "storage account" is the hub's own
/// blob store (`BlobStore`), reached on its HTTPS port. Reactor-thread state, like the rest of `HubCore`.
struct FileUploads {
    struct Upload {
        var deviceId: String
        var blobName: String
        var expiresMs: Int64
    }

    /// What the service side reads from `/messages/serviceBound/filenotifications`.
    struct Notification: Codable, Sendable, Equatable {
        var deviceId: String
        var blobUri: String
        var blobName: String
        var lastUpdatedTime: String
        var blobSizeInBytes: Int
        var enqueuedTimeUtc: String
    }

    static let container = "fieldgate-uploads"
    /// Outstanding SAS URIs per device (IoT Hub: 10; more is 403006).
    static let maxActivePerDevice = 10
    /// How long a SAS URI is good for (IoT Hub's default: 1 h).
    static let sasLifetimeMilliseconds: Int64 = 3_600_000
    /// Notifications kept for the service side, oldest dropped first.
    static let notificationCapacity = 10_000

    /// The key that signs the blob SAS tokens this hub issues: random per run, like a storage account key.
    let storageKey = (0..<32).map { _ in UInt8.random(in: 0...255) }
    private(set) var active: [String: Upload] = [:]
    /// For the service side, over REST (long poll) or AMQP (`/messages/serviceBound/filenotifications`).
    var notifications = HandOffQueue<Notification>(capacity: notificationCapacity)

    /// Starts an upload: the blob is `{deviceId}/{blobName}`, the SAS allows writing it until `expiresMs`.
    mutating func start(deviceId: String, blobName: String, nowMs: Int64) throws(HubError) -> (correlationId: String, blobName: String, sasToken: String) {
        expire(nowMs: nowMs)
        guard !blobName.isEmpty, blobName.utf8.count <= 1024, !blobName.hasPrefix("/"),
              !blobName.split(separator: "/", omittingEmptySubsequences: false).contains(where: { $0.isEmpty || $0 == "." || $0 == ".." })
        else { throw HubError(.badRequest, "blobName '\(blobName)' is not a valid blob name (1 to 1024 characters, no empty, '.' or '..' segments)", errorCode: 400004) }
        guard deviceId != "." && deviceId != ".." else {
            throw HubError(.badRequest, "device \(deviceId) cannot name a blob directory", errorCode: 400004)
        }
        let outstanding = active.values.filter { $0.deviceId == deviceId }.count
        guard outstanding < Self.maxActivePerDevice else {
            throw HubError(.forbidden, "DeviceMaximumActiveFileUploadLimitExceeded: device \(deviceId) has \(outstanding) file uploads outstanding; at most \(Self.maxActivePerDevice)", errorCode: 403006)
        }
        let name = "\(deviceId)/\(blobName)"
        let correlation = AMQPUUID.random().description
        let expires = nowMs + Self.sasLifetimeMilliseconds
        active[correlation] = Upload(deviceId: deviceId, blobName: name, expiresMs: expires)
        return (correlation, name, sasToken(blob: name, expiresMs: expires))
    }

    /// The device's notification: the upload is over (whatever its outcome). nil when the correlation id is not an
    /// outstanding upload of this device.
    mutating func finish(deviceId: String, correlationId: String) -> Upload? {
        guard let u = active[correlationId], u.deviceId == deviceId else { return nil }
        active[correlationId] = nil
        return u
    }

    mutating func expire(nowMs: Int64) {
        active = active.filter { $0.value.expiresMs > nowMs }
    }

    /// `?sv=…&sr=b&sp=cw&se=…&sig=…`: what a storage SAS for one blob looks like; signed with `storageKey`.
    func sasToken(blob: String, expiresMs: Int64) -> String {
        let se = WallClock.iso8601(milliseconds: expiresMs)
        return "?sv=2018-03-28&sr=b&sp=cw&se=\(PercentEncoding.encode(se))&sig=\(PercentEncoding.encode(signature(blob: blob, se: se)))"
    }

    private func signature(blob: String, se: String) -> String {
        Data(HMACSHA256.authenticationCode(for: Array("\(Self.container)/\(blob)\n\(se)".utf8), key: storageKey)).base64EncodedString()
    }

    /// Checks a blob request's SAS (its query items): the signature covers this blob and the expiry, which has not
    /// passed. Returns why not, or nil.
    func refusal(blob: String, query: [String: String], nowMs: Int64) -> String? {
        guard let se = query["se"], let sig = query["sig"] else { return "the request has no SAS (se, sig)" }
        guard sig == signature(blob: blob, se: se) else { return "Signature did not match for this blob" }
        guard let expires = WallClock.parseISO8601(se), expires > nowMs else { return "Signed expiry time has passed" }
        guard query["sp"]?.contains("w") == true else { return "This SAS does not allow writing" }
        return nil
    }
}

/// The hub's blob storage: files under `<state dir>/blobs/<container>/…`, or in memory without a state directory.
/// Written whole on PUT, as a block blob is.
final class BlobStore: @unchecked Sendable {
    struct Blob: Codable, Sendable, Equatable {
        var name: String
        var size: Int
        var lastModified: String
    }

    private let directory: String?
    private var memory: [String: (bytes: [UInt8], modifiedMs: Int64)] = [:]

    init(stateDirectory: String?) {
        directory = stateDirectory.map { $0 + "/blobs/" + FileUploads.container }
    }

    /// A name of the container: segments that are not empty, `.` or `..` (nothing outside the store is reachable).
    static func isSafe(_ name: String) -> Bool {
        !name.isEmpty && !name.split(separator: "/", omittingEmptySubsequences: false).contains { $0.isEmpty || $0 == "." || $0 == ".." }
    }

    func put(_ name: String, bytes: [UInt8], nowMs: Int64) throws(HubError) {
        guard Self.isSafe(name) else { throw HubError(.badRequest, "InvalidResourceName: \(name)") }
        guard let directory else { memory[name] = (bytes, nowMs); return }
        let path = directory + "/" + name
        let parent = String(path[..<path.lastIndex(of: "/")!])
        do {
            try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
            try Data(bytes).write(to: URL(fileURLWithPath: path + ".part"))
            // Whole or not at all, as a block blob's PUT.
            guard rename(path + ".part", path) == 0 else { throw HubError(.internalError, "rename: errno \(errno)") }
        } catch {
            throw HubError(.internalError, "cannot store blob \(name): \(error)")
        }
    }

    func get(_ name: String) -> [UInt8]? {
        guard Self.isSafe(name) else { return nil }
        guard let directory else { return memory[name]?.bytes }
        return FileManager.default.contents(atPath: directory + "/" + name).map(Array.init)
    }

    func size(_ name: String) -> Int? { list(prefix: name).first { $0.name == name }?.size }

    func list(prefix: String = "") -> [Blob] {
        guard let directory else {
            return memory.filter { $0.key.hasPrefix(prefix) }.map {
                Blob(name: $0.key, size: $0.value.bytes.count, lastModified: WallClock.iso8601(milliseconds: $0.value.modifiedMs))
            }.sorted { $0.name < $1.name }
        }
        guard let paths = try? FileManager.default.subpathsOfDirectory(atPath: directory) else { return [] }
        var out: [Blob] = []
        for relative in paths {
            guard relative.hasPrefix(prefix), !relative.hasSuffix(".part") else { continue }
            // stat(2) rather than FileManager's attributes: their number types differ between Foundation and
            // FoundationEssentials (a size read as Int was 0 in the hub's own build).
            var st = stat()
            guard stat(directory + "/" + relative, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { continue }
            let modified = Int64(st.st_mtim.tv_sec) * 1000 + Int64(st.st_mtim.tv_nsec) / 1_000_000
            out.append(Blob(name: relative, size: Int(st.st_size), lastModified: WallClock.iso8601(milliseconds: modified)))
        }
        return out.sorted { $0.name < $1.name }
    }
}
