import FieldgateCore

#if canImport(Glibc)
import Glibc
#endif

/// How the hardened daemon and the privileged helper talk (docs/software-update.md): the daemon writes a request
/// into its own update directory, where `fieldgate-update.path` sees it and starts the helper as root; the helper
/// writes its progress and result into its own directory, which the daemon can read and not write.
public enum UpdateHandoff {
    /// In the daemon's directory.
    public static let requestFile = "request.json"
    /// The daemon has reported `rebooting` and flushed its spool: the helper may restart it.
    public static let restartAllowedFile = "restart-ok"
    /// Written by the new version once it runs and has reached the hub (or, offline, spooled readings).
    public static let confirmedFile = "confirmed"
    /// The daemon's own record (UpdateRecord).
    public static let recordFile = "state.json"
    /// Helper results already reported (their ids), so a restart does not report them twice.
    public static let reportedFile = "reported.json"
    /// In the helper's directory.
    public static let progressFile = "progress.json"
    public static let resultFile = "result.json"

    /// What the daemon asks for.
    public struct Request: Sendable, Equatable {
        public enum Action: String, Sendable { case install, factoryReset = "factory-reset" }
        public var id: String
        public var action: Action
        /// install: the package (a file name in the daemon's directory), its version and SHA-256.
        public var version = ""
        public var file = ""
        public var sha256 = ""
        public var confirmSeconds = 300

        public init(id: String, action: Action) {
            self.id = id
            self.action = action
        }

        public var json: JSONValue {
            ["id": .string(id), "action": .string(action.rawValue), "version": .string(version), "file": .string(file),
             "sha256": .string(sha256), "confirmSeconds": .int(Int64(confirmSeconds))]
        }

        /// Checked strictly: the helper runs as root on what the daemon wrote.
        public init(json: JSONValue) throws(UpdateError) {
            guard let id = json["id"]?.stringValue, !id.isEmpty, id.utf8.count <= 64,
                  id.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x7a) || $0 == 0x2d })
            else { throw UpdateError("the request has no valid id") }
            guard let a = json["action"]?.stringValue, let action = Action(rawValue: a) else { throw UpdateError("the request names no known action") }
            self.init(id: id, action: action)
            if action == .install {
                let request = FirmwareRequest(version: json["version"]?.stringValue ?? "", uri: "https://-",
                                              checkValue: json["sha256"]?.stringValue ?? "")
                if let problem = request.problem { throw UpdateError("install request: \(problem)") }
                guard json["file"]?.stringValue == request.fileName else { throw UpdateError("install request: the file must be \(request.fileName)") }
                version = request.version
                file = request.fileName
                sha256 = request.checkValue
                let confirm = Int(json["confirmSeconds"]?.intValue ?? 300)
                guard UpdateConfiguration.confirmRange.contains(confirm) else { throw UpdateError("install request: confirmSeconds out of range") }
                confirmSeconds = confirm
            }
        }
    }

    /// What the helper says while it works, and at the end.
    public struct Report: Sendable, Equatable {
        public enum Outcome: String, Sendable {
            /// Progress: the helper has the request and is checking (a repack of the running version may take
            /// minutes on a slow board).
            case taken
            /// Progress: the package passed the helper's checks; it waits for the daemon's `restart-ok`.
            case verified
            /// Progress: the new version is installed and must confirm.
            case confirming
            /// Results.
            case installed, rolledback, error, reset
        }
        public var requestID: String
        public var outcome: Outcome
        public var reason = ""
        public var version = ""
        /// The version running after a rollback.
        public var restoredVersion = ""
        public var atMs: Int64

        public init(requestID: String, outcome: Outcome, reason: String = "", version: String = "", atMs: Int64 = WallClock.nowMilliseconds()) {
            self.requestID = requestID
            self.outcome = outcome
            self.reason = reason
            self.version = version
            self.atMs = atMs
        }

        public var json: JSONValue {
            ["requestID": .string(requestID), "outcome": .string(outcome.rawValue), "reason": .string(reason), "version": .string(version),
             "restoredVersion": .string(restoredVersion), "atMs": .int(atMs)]
        }

        public init?(json: JSONValue) {
            guard let id = json["requestID"]?.stringValue, let o = json["outcome"]?.stringValue, let outcome = Outcome(rawValue: o) else { return nil }
            self.init(requestID: id, outcome: outcome, reason: json["reason"]?.stringValue ?? "", version: json["version"]?.stringValue ?? "",
                      atMs: json["atMs"]?.intValue ?? 0)
            restoredVersion = json["restoredVersion"]?.stringValue ?? ""
        }

        /// The helper's file at `path`, if any (small, not through a link).
        public static func read(_ path: String) -> Report? {
            StateFile.read(path, limit: 64 << 10).flatMap { JSONValue.parse($0) }.flatMap { Report(json: $0) }
        }
    }

    /// A request id: the time and a random part.
    public static func newRequestID(nowMs: Int64 = WallClock.nowMilliseconds()) -> String {
        String(nowMs) + "-" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
    }
}

/// This module's error: a sentence for the twin's substatus, the method's answer or the journal.
public struct UpdateError: Error, Sendable, CustomStringConvertible, Equatable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
