import FieldgateCore
import MessageAuthentication

#if canImport(Glibc)
import Glibc
#endif

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Assignments DPS made, kept under the state directory (`/var/lib/fieldgate/provisioning.json`) so a restart
/// reuses them without asking DPS. An entry holds only while the id scope, the endpoint and the key it was made with
/// stay the same (the key is kept as a fingerprint, never in the clear): a change registers the identity again.
public struct AssignmentStore: Sendable {
    public struct Entry: Codable, Sendable, Equatable {
        public var hub: String
        public var deviceId: String
        public var idScope: String
        public var endpoint: String
        public var keyFingerprint: String
        public var assignedAt: String
    }

    private struct File: Codable {
        var version = 1
        var identities: [String: Entry]
    }

    public let path: String
    public private(set) var entries: [String: Entry] = [:]
    /// Why the file could not be read (it is then ignored and written anew), for the log.
    public private(set) var loadProblem: String?

    public init(path: String) {
        self.path = path
        guard let bytes = StateFile.read(path, limit: 64 << 20) else { return }
        do {
            entries = try JSONDecoder().decode(File.self, from: Data(bytes)).identities
        } catch {
            loadProblem = "\(path) is not a valid assignment file (\(error)); every identity registers again"
        }
    }

    /// What a key is known by in the store: not the key, and not enough to guess it.
    public static func fingerprint(ofKey key: String) -> String {
        String(SHA256Digest.hex(of: Array("fieldgate-dps-assignment:\(key)".utf8)).prefix(16))
    }

    /// The stored assignment of `registrationID`, if it was made with these settings and key.
    public func assignment(for registrationID: String, idScope: String, endpoint: String, keyFingerprint: String) -> Assignment? {
        guard let e = entries[registrationID], e.idScope == idScope, e.endpoint == endpoint, e.keyFingerprint == keyFingerprint else { return nil }
        return Assignment(hub: e.hub, deviceID: e.deviceId)
    }

    public mutating func record(_ assignment: Assignment, for registrationID: String, idScope: String, endpoint: String,
                                keyFingerprint: String, nowMilliseconds: Int64) {
        entries[registrationID] = Entry(hub: assignment.hub, deviceId: assignment.deviceID, idScope: idScope, endpoint: endpoint,
                                        keyFingerprint: keyFingerprint, assignedAt: WallClock.iso8601(milliseconds: nowMilliseconds))
    }

    public mutating func forget(_ registrationID: String) { entries[registrationID] = nil }

    /// Writes the file durably (temporary file, fdatasync, rename); the errno of a failure.
    public func save() -> Int32? {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard let bytes = try? encoder.encode(File(identities: entries)) else { return EINVAL }
        return StateFile.replace(path, with: Array(bytes), durable: true, mode: 0o640)
    }
}
