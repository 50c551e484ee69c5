import FieldgateCore

/// The statuses of IoT Hub's firmware-update pattern, reported as `firmware.fwUpdateStatus`.
public enum FirmwareStatus: String, Sendable, Equatable, CaseIterable {
    case current, downloading, verifying, applying, rebooting, error, rolledback

    /// An update is under way: a new desired value waits until it ends.
    public var isBusy: Bool { [.downloading, .verifying, .applying, .rebooting].contains(self) }
}

/// The twin's desired `firmware`: `{fwVersion, fwPackageURI, fwPackageCheckValue}` (SHA-256, hex), and our
/// `force` (do not wait for the maintenance window).
public struct FirmwareRequest: Sendable, Equatable {
    public var version: String
    public var uri: String
    public var checkValue: String
    public var force: Bool
    /// Where the detached signature is (with `[update] keyring`); default: the package's URI + ".sig".
    public var signatureURI: String

    public init(version: String, uri: String, checkValue: String, force: Bool = false, signatureURI: String? = nil) {
        self.version = version
        self.uri = uri
        self.checkValue = checkValue
        self.force = force
        self.signatureURI = signatureURI ?? uri + ".sig"
    }

    /// nil when the desired document has no usable `firmware` section (absent, or null to cancel).
    public init?(desired firmware: JSONValue?) {
        guard let f = firmware, case .object = f else { return nil }
        self.init(version: f["fwVersion"]?.stringValue ?? "", uri: f["fwPackageURI"]?.stringValue ?? "",
                  checkValue: (f["fwPackageCheckValue"]?.stringValue ?? "").lowercased(), force: f["force"] == .bool(true),
                  signatureURI: f["fwPackageSignatureURI"]?.stringValue)
    }

    /// Why the request cannot be carried out, in the words reported as `fwUpdateSubstatus`; nil when it can.
    public var problem: String? {
        guard !version.isEmpty, version.utf8.count <= 64,
              version.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7a) || $0 == 0x2e || $0 == 0x2b || $0 == 0x7e || $0 == 0x2d }),
              version.utf8.first.map({ $0 >= 0x30 && $0 <= 0x39 }) == true
        else { return "fwVersion must be a Debian version of fieldgate (digits first; letters, digits, . + ~ -)" }
        guard uri.lowercased().hasPrefix("https://"), uri.count > 8, signatureURI.lowercased().hasPrefix("https://") else {
            return "Insecure package URI: only https is accepted"
        }
        guard checkValue.utf8.count == 64, checkValue.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }) else {
            return "fwPackageCheckValue must be the package's SHA-256 (64 hex digits)"
        }
        return nil
    }

    /// The package's file name in the update directory; its signature's is this + ".sig".
    public var fileName: String { "fieldgate_\(version).deb" }
}

/// What the gateway did about its last update, kept across restarts (`<state dir>/update/state.json`).
public struct UpdateRecord: Sendable, Equatable {
    public var status: FirmwareStatus = .current
    public var substatus = ""
    /// The version being (or last) installed, its check value and its URI: together they name an attempt.
    public var pendingVersion = ""
    public var checkValue = ""
    public var uri = ""
    /// The version running when the attempt began.
    public var fromVersion = ""
    public var startedAtMs: Int64?
    public var endedAtMs: Int64?
    /// The hand-off to the helper, to match its result.
    public var requestID = ""

    public init() {}

    public var json: JSONValue {
        ["status": .string(status.rawValue), "substatus": .string(substatus), "pendingVersion": .string(pendingVersion),
         "checkValue": .string(checkValue), "uri": .string(uri), "fromVersion": .string(fromVersion), "startedAtMs": startedAtMs.map { .int($0) } ?? .null,
         "endedAtMs": endedAtMs.map { .int($0) } ?? .null, "requestID": .string(requestID)]
    }

    public init?(json: JSONValue) {
        guard let s = json["status"]?.stringValue, let status = FirmwareStatus(rawValue: s) else { return nil }
        self.status = status
        substatus = json["substatus"]?.stringValue ?? ""
        pendingVersion = json["pendingVersion"]?.stringValue ?? ""
        checkValue = json["checkValue"]?.stringValue ?? ""
        uri = json["uri"]?.stringValue ?? ""
        fromVersion = json["fromVersion"]?.stringValue ?? ""
        startedAtMs = json["startedAtMs"]?.intValue
        endedAtMs = json["endedAtMs"]?.intValue
        requestID = json["requestID"]?.stringValue ?? ""
    }

    /// This record once the helper's `result` for its request is known; nil when the result is not for it, or
    /// changes nothing. `running`: the version of this process.
    public func settled(by result: UpdateHandoff.Report, running: String) -> UpdateRecord? {
        guard !requestID.isEmpty, result.requestID == requestID else { return nil }
        var r = self
        r.endedAtMs = result.atMs
        switch result.outcome {
        case .rolledback:
            r.status = .rolledback
            r.pendingVersion = result.version.isEmpty ? pendingVersion : result.version
            r.substatus = "rolled back to \(result.restoredVersion.isEmpty ? fromVersion : result.restoredVersion): \(result.reason)"
        case .installed where result.version == running:
            r.status = .current
            r.pendingVersion = ""
            r.substatus = "installed \(result.version) (was \(fromVersion))"
        case .error:
            r.status = .error
            r.pendingVersion = result.version.isEmpty ? pendingVersion : result.version
            r.substatus = result.reason.isEmpty ? "the update helper ended with an error" : result.reason
        default:
            return nil
        }
        return r == self ? nil : r
    }

    /// The reported `firmware` section (IoT Hub's firmware-update pattern). Times are "" until known, as the
    /// pattern shows them.
    public func reported(currentVersion: String) -> JSONValue {
        ["currentFwVersion": .string(currentVersion),
         "pendingFwVersion": .string(pendingVersion == currentVersion ? "" : pendingVersion),
         "fwUpdateStatus": .string(status.rawValue),
         "fwUpdateSubstatus": .string(substatus),
         "lastFwUpdateStartTime": .string(startedAtMs.map(WallClock.iso8601(milliseconds:)) ?? ""),
         "lastFwUpdateEndTime": .string(endedAtMs.map(WallClock.iso8601(milliseconds:)) ?? "")]
    }
}

/// What to do about a desired `firmware` section. Pure: the agent carries the answer out.
public enum FirmwarePlan: Sendable, Equatable {
    /// Nothing to start; report the record as it is (it may have changed: the returned one).
    case report(UpdateRecord)
    /// Wait for the maintenance window; the record says so.
    case wait(UpdateRecord)
    /// Start downloading now; the record is the attempt's first.
    case start(UpdateRecord, FirmwareRequest)

    public static func decide(_ request: FirmwareRequest?, record: UpdateRecord, currentVersion: String, enabled: Bool,
                              window: Result<MaintenanceWindow, MaintenanceWindow.Problem>?, nowMs: Int64) -> FirmwarePlan {
        var r = record
        guard !record.status.isBusy else { return .report(record) }
        guard let request else {
            // Nothing desired (or cancelled): a deferred attempt is dropped.
            if r.status == .current { r.pendingVersion = ""; r.substatus = "" }
            return .report(r)
        }
        if request.version == currentVersion {
            // Up to date. A failed attempt or a deferred one for another version is no longer wanted: the times
            // of the last attempt stay.
            if r.status != .current || !r.pendingVersion.isEmpty {
                r.status = .current
                r.pendingVersion = ""
                r.substatus = ""
            }
            return .report(r)
        }
        let attemptFailed = (record.status == .error || record.status == .rolledback)
            && record.pendingVersion == request.version && record.checkValue == request.checkValue && record.uri == request.uri
        if attemptFailed { return .report(record) }  // no retry loop: a new desired value (another package or URI) retries
        guard enabled else {
            // Not an attempt: once the configuration allows it (a restart), the same desired value goes.
            let why = "software update is off in this gateway's configuration ([update] enabled = true)"
            if record.status == .error && record.substatus == why && record.pendingVersion == request.version { return .report(record) }
            var r = failed(record, request, why, nowMs: nowMs)
            r.checkValue = ""
            r.uri = ""
            return .report(r)
        }
        if let problem = request.problem { return .report(failed(record, request, problem, nowMs: nowMs)) }
        if !request.force {
            switch window {
            case .none: break
            case .failure(let problem):
                r = waiting(record, request, "waiting: the maintenance window is not valid (\(problem.message)); force: true skips it")
                return .wait(r)
            case .success(let w) where !w.isOpen(atMs: nowMs):
                r = waiting(record, request, "waiting for the maintenance window (\(w.summary)), next at \(WallClock.iso8601(milliseconds: w.nextOpening(afterMs: nowMs)))")
                return .wait(r)
            case .success: break
            }
        }
        var attempt = UpdateRecord()
        attempt.status = .downloading
        attempt.substatus = "downloading \(request.fileName)"
        attempt.pendingVersion = request.version
        attempt.checkValue = request.checkValue
        attempt.uri = request.uri
        attempt.fromVersion = currentVersion
        attempt.startedAtMs = nowMs
        return .start(attempt, request)
    }

    private static func failed(_ record: UpdateRecord, _ request: FirmwareRequest, _ why: String, nowMs: Int64) -> UpdateRecord {
        var r = record
        r.status = .error
        r.substatus = why
        r.pendingVersion = request.version
        r.checkValue = request.checkValue
        r.uri = request.uri
        r.startedAtMs = nowMs
        r.endedAtMs = nowMs
        return r
    }

    private static func waiting(_ record: UpdateRecord, _ request: FirmwareRequest, _ why: String) -> UpdateRecord {
        var r = record
        r.status = .current
        r.pendingVersion = request.version
        r.checkValue = request.checkValue
        r.substatus = why
        return r
    }
}
