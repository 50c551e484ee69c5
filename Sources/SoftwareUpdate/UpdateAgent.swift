import Dispatch
import FieldgateCore
import HubTunnel
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The daemon's side of software update, factory reset and the maintenance window (docs/software-update.md).
/// Desired `firmware` and `maintenance` come from the gateway's twin; the decisions are `FirmwarePlan`'s and
/// `MaintenanceWindow`'s; this carries them out: download (libcurl, resumable, capped, through the proxy), checks,
/// the hand-off to the privileged helper, and every status in the twin. It never installs anything itself.
public final class UpdateAgent: Sendable {
    /// What the agent needs from the gateway around it.
    public struct Environment: Sendable {
        /// Reports a patch for the gateway's identity and waits until the hub took it.
        public var report: @Sendable (JSONValue, Duration) async -> UpdateError?
        /// Flushes the spool to disk (before a restart).
        public var flushSpool: @Sendable () async -> Void
        /// The newest spooled sequence (a rise: readings came in).
        public var spooledSequence: @Sendable () -> UInt64
        /// A hub connection is open (spooled readings confirm a new version only while none is: offline).
        public var hubConnected: @Sendable () async -> Bool = { false }
        /// How packages are downloaded: TLS (system CAs unless set) and the configured proxy.
        public var https: HTTPSSettings
        /// Runs the reboot (after the window allowed it).
        public var reboot: @Sendable () async -> Void
        /// This machine's dpkg architecture; nil: asked of dpkg.
        public var architecture: String?

        public init(report: @escaping @Sendable (JSONValue, Duration) async -> UpdateError?, flushSpool: @escaping @Sendable () async -> Void,
                    spooledSequence: @escaping @Sendable () -> UInt64, https: HTTPSSettings, reboot: @escaping @Sendable () async -> Void) {
            self.report = report
            self.flushSpool = flushSpool
            self.spooledSequence = spooledSequence
            self.https = https
            self.reboot = reboot
        }
    }

    /// A disruptive action waiting for the maintenance window.
    struct Pending: Sendable, Equatable {
        var rebootAtMs: Int64?
        var factoryResetAtMs: Int64?
    }

    private struct State: Sendable {
        var record = UpdateRecord()
        var request: FirmwareRequest?
        var uri = ""
        var window: Result<MaintenanceWindow, MaintenanceWindow.Problem>?
        var pending = Pending()
        var flowRunning = false
        var factoryReset: JSONValue = .null
    }

    public let configuration: UpdateConfiguration
    public let currentVersion: String
    private let environment: Environment
    private let logger: Logger
    private let state = Mutex(State())
    private let startSequence: UInt64

    public init(configuration: UpdateConfiguration, currentVersion: String, environment: Environment, logger: Logger) {
        self.configuration = configuration
        self.currentVersion = currentVersion
        self.environment = environment
        self.logger = logger
        startSequence = environment.spooledSequence()
        // Read before anything asks: a desired value arriving first must see an update under way as such.
        mkdir(configuration.directory, 0o750)
        if var loaded = StateFile.read(configuration.directory + "/" + UpdateHandoff.recordFile).flatMap({ JSONValue.parse($0) }).flatMap({ UpdateRecord(json: $0) }) {
            var changed = false
            if loaded.status == .downloading || loaded.status == .verifying {
                // Interrupted: it begins again (resuming the partial download) once the twin's desired value is known.
                loaded.substatus = "interrupted at \(loaded.status.rawValue); resumes with the desired value"
                loaded.status = .current
                changed = true
            } else if loaded.status == .current || loaded.status == .error,
                      let result = UpdateHandoff.Report.read(configuration.helperDirectory + "/" + UpdateHandoff.resultFile),
                      [.rolledback, .error].contains(result.outcome), let settled = loaded.settled(by: result, running: currentVersion) {
                // The helper rolled back after this record was written (a confirmation that came too late): its word
                // stands, or the same package would be installed again.
                loaded = settled
                changed = true
            }
            // An update that restarted this process: `resume` runs its last step, and until then no desired value
            // reports the old step over it.
            state.withLock {
                $0.record = loaded
                $0.flowRunning = loaded.status == .applying || loaded.status == .rebooting
            }
            if changed { writeRecord(loaded) }
        }
    }

    private func path(_ name: String) -> String { configuration.directory + "/" + name }
    private func helperPath(_ name: String) -> String { configuration.helperDirectory + "/" + name }

    // MARK: - Start

    /// At start (the record of an earlier run was read at init): an update that restarted this process is confirmed
    /// (this is the new version) or its outcome read from the helper (the old one is back); an interrupted download
    /// begins again with the desired value.
    public func resume() async {
        await reportHelperResultOfReset()
        let record = state.withLock { $0.record }
        switch record.status {
        case .applying, .rebooting:
            // flowRunning was set at init for this.
            Task {
                if record.pendingVersion == self.currentVersion {
                    await self.confirmNewVersion(record)
                } else {
                    await self.awaitHelperOutcome(record, afterRestart: true)
                }
                self.state.withLock { $0.flowRunning = false }
                await self.reevaluate()
            }
        default:
            break
        }
    }

    private func startTask(_ body: @escaping @Sendable () async -> Void) {
        let go = state.withLock { s -> Bool in
            guard !s.flowRunning else { return false }
            s.flowRunning = true
            return true
        }
        guard go else { return }
        Task {
            await body()
            self.state.withLock { $0.flowRunning = false }
            await self.reevaluate()
        }
    }

    // MARK: - Desired properties

    /// The gateway twin's desired document changed: returns the reported `firmware` and `maintenance` sections, and
    /// starts an update when one is due.
    public func desired(_ desired: JSONValue) -> JSONValue {
        let window: Result<MaintenanceWindow, MaintenanceWindow.Problem>?
        if let w = desired["maintenance"]?["window"], w != .null {
            do throws(MaintenanceWindow.Problem) { window = .success(try MaintenanceWindow(desired: w)) } catch { window = .failure(error) }
        } else {
            window = nil
        }
        let request = FirmwareRequest(desired: desired["firmware"])
        state.withLock {
            $0.window = window
            $0.request = request
            $0.uri = request?.uri ?? ""
        }
        let running = state.withLock { $0.flowRunning }
        let record = plan(nowMs: WallClock.nowMilliseconds())
        // While an update runs, it reports its own steps: a desired value's answer must not report an older one.
        if running { return ["maintenance": maintenanceReport(nowMs: WallClock.nowMilliseconds())] }
        return ["firmware": record.reported(currentVersion: currentVersion), "maintenance": maintenanceReport(nowMs: WallClock.nowMilliseconds())]
    }

    /// Decides on the current desired value; starts the flow when due. Returns the record to report.
    private func plan(nowMs: Int64) -> UpdateRecord {
        let (request, record, window, busy) = state.withLock { ($0.request, $0.record, $0.window, $0.flowRunning) }
        if busy { return record }
        switch FirmwarePlan.decide(request, record: record, currentVersion: currentVersion, enabled: configuration.enabled, window: window, nowMs: nowMs) {
        case .report(let r), .wait(let r):
            if r != record {
                state.withLock { $0.record = r }
                writeRecord(r)
            }
            return r
        case .start(let attempt, let request):
            state.withLock { $0.record = attempt }
            logger.notice("update: \(currentVersion) → \(request.version) from \(HTTPSClient.redacted(request.uri))")
            startTask { await self.install(attempt, request) }
            return attempt
        }
    }

    /// Every few seconds (the daemon's loop): a deferred update or a pending reboot or factory reset goes once the
    /// window opens.
    public func tick() async {
        await reevaluate()
    }

    private func reevaluate() async {
        let nowMs = WallClock.nowMilliseconds()
        let before = state.withLock { $0.record }
        let after = plan(nowMs: nowMs)
        if after != before && !after.status.isBusy {
            _ = await environment.report(["firmware": after.reported(currentVersion: currentVersion), "maintenance": maintenanceReport(nowMs: nowMs)], .seconds(10))
        }
        let (pending, open, busy) = state.withLock { ($0.pending, Self.windowAllows($0.window, nowMs: nowMs), $0.flowRunning) }
        guard open, !busy else { return }
        if pending.factoryResetAtMs != nil {
            state.withLock { $0.pending.factoryResetAtMs = nil }
            await performFactoryReset()
        } else if pending.rebootAtMs != nil {
            state.withLock { $0.pending.rebootAtMs = nil }
            _ = await environment.report(["maintenance": maintenanceReport(nowMs: nowMs)], .seconds(10))
            await environment.reboot()
        }
    }

    private static func windowAllows(_ window: Result<MaintenanceWindow, MaintenanceWindow.Problem>?, nowMs: Int64) -> Bool {
        switch window {
        case .none: true
        case .failure: false
        case .success(let w): w.isOpen(atMs: nowMs)
        }
    }

    /// The reported `maintenance` section: the window in force, whether it is open, what waits for it, and whether
    /// the gateway can comply (a window it cannot read holds disruptive actions back until fixed or forced).
    func maintenanceReport(nowMs: Int64) -> JSONValue {
        let (window, pending, record) = state.withLock { ($0.window, $0.pending, $0.record) }
        var o: [String: JSONValue] = [
            "window": .null, "inWindow": true, "nextWindowStart": .null, "compliant": true, "problem": .null,
            "pendingUpdate": record.status == .current && !record.pendingVersion.isEmpty ? .string(record.pendingVersion) : .null,
            "pendingReboot": pending.rebootAtMs.map { .string(WallClock.iso8601(milliseconds: $0)) } ?? .null,
            "pendingFactoryReset": pending.factoryResetAtMs.map { .string(WallClock.iso8601(milliseconds: $0)) } ?? .null,
        ]
        switch window {
        case .none: break
        case .failure(let p):
            o["compliant"] = false
            o["problem"] = .string(p.message)
            o["inWindow"] = false
        case .success(let w):
            o["window"] = w.json
            o["inWindow"] = .bool(w.isOpen(atMs: nowMs))
            o["nextWindowStart"] = .string(WallClock.iso8601(milliseconds: w.nextOpening(afterMs: nowMs)))
        }
        return .object(o)
    }

    // MARK: - Reboot and factory reset

    /// A reboot request: now when the window allows (or `force`), else when it opens. Returns whether it may go now.
    public func mayRebootNow(force: Bool) async -> Bool {
        let nowMs = WallClock.nowMilliseconds()
        if state.withLock({ $0.flowRunning }) {
            // Not in the middle of an install: it goes when the update has ended (and the window allows).
            state.withLock { $0.pending.rebootAtMs = nowMs }
            return false
        }
        let open = force || state.withLock { Self.windowAllows($0.window, nowMs: nowMs) }
        if !open {
            state.withLock { $0.pending.rebootAtMs = nowMs }
            _ = await environment.report(["maintenance": maintenanceReport(nowMs: nowMs)], .seconds(10))
        }
        return open
    }

    /// The `factoryReset` method: (status, answer).
    public func factoryReset(force: Bool) async -> (Int, JSONValue) {
        guard configuration.factoryReset else {
            return (403, ["error": "factory reset is off in this gateway's configuration ([update] factory_reset = true enables it)"])
        }
        let nowMs = WallClock.nowMilliseconds()
        let clears = configuration.factoryResetClears.map(\.rawValue).sorted()
        if state.withLock({ $0.flowRunning }) {
            return (409, ["error": "a software update is under way; ask again when firmware.fwUpdateStatus is no longer busy"])
        }
        let open = force || state.withLock { Self.windowAllows($0.window, nowMs: nowMs) }
        if !open {
            let status: JSONValue = ["status": "pending", "requestedAt": .string(WallClock.iso8601(milliseconds: nowMs)), "clears": .string(clears.joined(separator: ","))]
            state.withLock {
                $0.pending.factoryResetAtMs = nowMs
                $0.factoryReset = status
            }
            _ = await environment.report(["iothubDM": ["factoryReset": status], "maintenance": maintenanceReport(nowMs: nowMs)], .seconds(10))
            return (202, ["status": "pending", "reason": "waiting for the maintenance window; force: true resets now", "clears": .array(clears.map { .string($0) })])
        }
        Task { await self.performFactoryReset() }
        return (200, ["status": "resetting", "clears": .array(clears.map { .string($0) })])
    }

    private func performFactoryReset() async {
        let nowMs = WallClock.nowMilliseconds()
        let clears = configuration.factoryResetClears.map(\.rawValue).sorted().joined(separator: ",")
        try? await Task.sleep(for: .milliseconds(200))  // the method's answer goes first
        let status: JSONValue = ["status": "resetting", "startedAt": .string(WallClock.iso8601(milliseconds: nowMs)), "clears": .string(clears)]
        if let e = await environment.report(["iothubDM": ["factoryReset": status]], .seconds(15)) {
            logger.warning("factory reset: the status was not reported (\(e)); resetting anyway")
        }
        let request = UpdateHandoff.Request(id: UpdateHandoff.newRequestID(), action: .factoryReset)
        if let e = await handOff(request) {
            logger.error("factory reset: \(e)")
            _ = await environment.report(["iothubDM": ["factoryReset": ["status": "error", "reason": .string(e.message)]]], .seconds(10))
        }
    }

    /// After a factory reset the state directory may be empty: the helper's result says what was done.
    private func reportHelperResultOfReset() async {
        let (result, reported) = await offCooperativePool { [configuration] in
            (UpdateHandoff.Report.read(configuration.helperDirectory + "/" + UpdateHandoff.resultFile),
             StateFile.read(configuration.directory + "/" + UpdateHandoff.reportedFile).flatMap { JSONValue.parse($0) })
        }
        guard let result, result.outcome == .reset, reported?["reset"]?.stringValue != result.requestID else { return }
        let status: JSONValue = ["status": "done", "lastFactoryReset": .string(WallClock.iso8601(milliseconds: result.atMs)), "reason": .string(result.reason)]
        Task {
            for _ in 0..<60 {
                if await self.environment.report(["iothubDM": ["factoryReset": status]], .seconds(10)) == nil {
                    let dir = self.configuration.directory
                    _ = await offCooperativePool { StateFile.replace(dir + "/" + UpdateHandoff.reportedFile, with: JSONValue.object(["reset": .string(result.requestID)]).bytes) }
                    return
                }
                try? await Task.sleep(for: .seconds(5))
            }
        }
    }

    // MARK: - Install

    private func install(_ attempt: UpdateRecord, _ request: FirmwareRequest) async {
        var r = attempt
        await persistAndReport(r)
        // Download, resumable: a partial file from an interrupted try of the same package (its check value is in the
        // name) is continued. A package downloaded and verified earlier (the window closed before its hand-off) is
        // checked again, not fetched again.
        let verified = path(request.fileName)
        let part = path(request.fileName + "." + request.checkValue.prefix(16) + ".part")
        let have = await offCooperativePool { PackageInspector.sha256(of: verified) == request.checkValue }
        if have { _ = await offCooperativePool { rename(verified, part) } }
        var lastError = ""
        var done = have
        for delay in [0, 5, 30] where !done {
            if delay > 0 { try? await Task.sleep(for: .seconds(delay)) }
            let outcome = await offCooperativePool { [configuration, environment] in
                HTTPSClient.download(request.uri, to: part, maxBytes: configuration.maxDownloadBytes, settings: environment.https)
            }
            switch outcome {
            case .success(let (status, _)) where status == 200 || status == 206 || status == 416:
                done = true
            case .success(let (status, _)):
                lastError = "the server answered HTTP \(status)"
                if (400..<500).contains(status) && status != 408 && status != 429 { break }
                continue
            case .failure(let e):
                lastError = e.message
                if e.message.contains("larger than") { break }
                continue
            }
            break
        }
        guard done else {
            if lastError.contains("larger than") || lastError.contains("HTTP 4") { _ = await offCooperativePool { unlink(part) } }
            return await fail(r, "download failed: \(lastError)")
        }
        r.status = .verifying
        r.substatus = "checking the SHA-256 and the package"
        await persistAndReport(r)
        let checked: Result<Void, UpdateError> = await offCooperativePool { [environment] in
            guard let digest = PackageInspector.sha256(of: part) else { return .failure(UpdateError("the download cannot be read")) }
            guard digest == request.checkValue else {
                unlink(part)
                return .failure(UpdateError("checksum mismatch: fwPackageCheckValue is \(request.checkValue), the download's SHA-256 is \(digest)"))
            }
            switch PackageInspector.control(of: part) {
            case .failure(let e):
                unlink(part)
                return .failure(e)
            case .success(let control):
                let arch = environment.architecture ?? PackageInspector.hostArchitecture() ?? "unknown"
                if let m = PackageInspector.mismatch(control, version: request.version, architecture: arch) {
                    unlink(part)
                    return .failure(UpdateError(m))
                }
            }
            return rename(part, verified) == 0 ? .success(()) : .failure(UpdateError("cannot keep the package: \(String(cString: strerror(errno)))"))
        }
        if case .failure(let e) = checked { return await fail(r, e.message) }
        if let keyring = configuration.keyring {
            // Signed packages only: the signature comes fresh each time, small, and gpgv checks it as the helper will.
            let signature = verified + ".sig"
            let outcome: Result<Void, UpdateError> = await offCooperativePool { [environment] in
                unlink(signature)
                switch HTTPSClient.download(request.signatureURI, to: signature, maxBytes: 64 << 10, settings: environment.https) {
                case .failure(let e): return .failure(UpdateError("the package's signature could not be downloaded: \(e.message)"))
                case .success(let (status, _)) where status != 200:
                    return .failure(UpdateError("the package's signature could not be downloaded: HTTP \(status) for \(HTTPSClient.redacted(request.signatureURI))"))
                case .success:
                    return PackageInspector.verifySignature(of: verified, signature: signature, keyring: keyring).map { .failure($0) } ?? .success(())
                }
            }
            if case .failure(let e) = outcome { return await fail(r, e.message) }
        }
        // The download may have taken the window's time: the restart waits for it too.
        let nowMs = WallClock.nowMilliseconds()
        if !request.force, !state.withLock({ Self.windowAllows($0.window, nowMs: nowMs) }) {
            r.status = .current
            r.substatus = "downloaded and verified; waiting for the maintenance window to install"
            r.startedAtMs = attempt.startedAtMs
            await persistAndReport(r)
            return
        }

        r.status = .applying
        r.substatus = "handing the package to the update helper"
        var handoff = UpdateHandoff.Request(id: UpdateHandoff.newRequestID(), action: .install)
        handoff.version = request.version
        handoff.file = request.fileName
        handoff.sha256 = request.checkValue
        handoff.confirmSeconds = configuration.confirmSeconds
        r.requestID = handoff.id
        await persistAndReport(r)
        if let e = await handOff(handoff) { return await fail(r, e.message) }
        // The helper checked the package again and waits for our word: report `rebooting`, flush, give it.
        r.status = .rebooting
        r.substatus = "restarting onto \(request.version)"
        await persistAndReport(r, retryForSeconds: 30)  // the helper waits 120 s for restart-ok
        await environment.flushSpool()
        let id = handoff.id
        _ = await offCooperativePool { [self] in StateFile.replace(path(UpdateHandoff.restartAllowedFile), with: Array(id.utf8), durable: true) }
        logger.notice("update: \(request.version) goes in now; this process will be restarted")
        await awaitHelperOutcome(r, afterRestart: false)
    }

    /// Writes the request and waits until the helper has checked it (`verified`), refused it, or did not come.
    private func handOff(_ request: UpdateHandoff.Request) async -> UpdateError? {
        let requestPath = path(UpdateHandoff.requestFile)
        let progressPath = helperPath(UpdateHandoff.progressFile)
        if let e = await offCooperativePool({ StateFile.replace(requestPath, with: request.json.bytes, durable: true) }) {
            return UpdateError("cannot write the request for the update helper: \(String(cString: strerror(e)))")
        }
        // Taken within a minute (else the helper is not installed or its path unit not active); checked within 20
        // (copying and hashing the package, keeping the running version as a package on a slow board).
        var taken = false
        let start = WallClock.nowMilliseconds()
        while WallClock.nowMilliseconds() - start < (taken ? 20 * 60_000 : 60_000) {
            try? await Task.sleep(for: .milliseconds(250))
            guard let progress = await offCooperativePool({ UpdateHandoff.Report.read(progressPath) }), progress.requestID == request.id else { continue }
            switch progress.outcome {
            case .taken: taken = true
            case .verified, .confirming, .installed, .reset: return nil
            case .error, .rolledback: return UpdateError(progress.reason)
            }
        }
        if taken { return UpdateError("the update helper took the request but did not finish its checks within 20 minutes") }
        _ = await offCooperativePool { unlink(requestPath) }
        return UpdateError("the update helper did not take the request within 60 s (fieldgate-update.path must be active: systemctl enable --now fieldgate-update.path)")
    }

    /// Waits for the helper's result of `record`'s request: an error or a rollback is reported. (When the install
    /// goes on, this process is stopped before any result comes.)
    private func awaitHelperOutcome(_ record: UpdateRecord, afterRestart: Bool) async {
        let resultPath = helperPath(UpdateHandoff.resultFile)
        let deadline = WallClock.nowMilliseconds() + Int64(configuration.confirmSeconds + 600) * 1000
        while WallClock.nowMilliseconds() < deadline {
            if let result = await offCooperativePool({ UpdateHandoff.Report.read(resultPath) }), result.requestID == record.requestID,
               [.rolledback, .error, .installed].contains(result.outcome) {
                var r = record.settled(by: result, running: currentVersion) ?? record
                if r.status.isBusy {  // installed, but not this version: this process was not restarted onto it
                    r.status = .error
                    r.substatus = "the helper installed \(result.version), but this process (\(currentVersion)) was not restarted"
                }
                logger.notice("update: \(r.status.rawValue): \(r.substatus)")
                await persistAndReport(r, retryForSeconds: afterRestart ? 600 : 60)
                return
            }
            try? await Task.sleep(for: .seconds(1))
        }
        await fail(record, "the update helper gave no result for \(record.pendingVersion)")
    }

    /// This is the new version, started by the helper: confirm once the hub took our first report (or, with the hub
    /// out of reach, once readings were spooled), then say so in the twin.
    private func confirmNewVersion(_ record: UpdateRecord) async {
        var r = record
        r.status = .current
        r.substatus = "installed \(currentVersion) (was \(record.fromVersion))"
        r.pendingVersion = ""
        r.endedAtMs = WallClock.nowMilliseconds()
        let confirmed = path(UpdateHandoff.confirmedFile)
        var written = false
        state.withLock { $0.record = r }  // what any report says from now on
        while true {
            let reported = await environment.report(["firmware": r.reported(currentVersion: currentVersion)], .seconds(10)) == nil
            var offline = false
            if !reported && environment.spooledSequence() > startSequence { offline = !(await environment.hubConnected()) }
            if !written && (reported || offline) {
                _ = await offCooperativePool { StateFile.replace(confirmed, with: Array(self.currentVersion.utf8), durable: true, mode: 0o644) }
                written = true
                logger.notice("update: \(currentVersion) confirmed (\(reported ? "the hub took its report" : "readings are spooling, the hub is out of reach"))")
            }
            if reported { break }
            try? await Task.sleep(for: .seconds(2))
        }
        await persist(r)
    }

    private func fail(_ record: UpdateRecord, _ why: String) async {
        var r = record
        r.status = .error
        r.substatus = why
        r.endedAtMs = WallClock.nowMilliseconds()
        logger.error("update to \(record.pendingVersion) failed: \(why)")
        await persistAndReport(r)
    }

    // MARK: - Records

    /// Writes go one at a time, in order, on their own queue (two at once would share the temporary file).
    private let writer = DispatchQueue(label: "fieldgate.update.record")

    private func persist(_ r: UpdateRecord) async {
        await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
            writer.async { [self] in
                writeRecordNow(r)
                cont.resume()
            }
        }
    }

    private func writeRecord(_ r: UpdateRecord) { writer.async { [self] in writeRecordNow(r) } }

    private func writeRecordNow(_ r: UpdateRecord) {
        let file = path(UpdateHandoff.recordFile)
        if let e = StateFile.replace(file, with: r.json.bytes, durable: true) {
            logger.error("update: cannot keep its record in \(file): \(String(cString: strerror(e)))")
        }
    }

    /// Keeps and reports `r`; waits for the hub's acknowledgement (so the statuses arrive in order), retrying a while.
    private func persistAndReport(_ r: UpdateRecord, retryForSeconds: Int = 60) async {
        state.withLock { $0.record = r }
        await persist(r)
        let deadline = WallClock.nowMilliseconds() + Int64(retryForSeconds) * 1000
        while true {
            let e = await environment.report(["firmware": r.reported(currentVersion: currentVersion)], .seconds(10))
            if e == nil || WallClock.nowMilliseconds() > deadline {
                if let e { logger.warning("update: status \(r.status.rawValue) not reported: \(e)") }
                return
            }
            try? await Task.sleep(for: .seconds(2))
        }
    }

    /// The last record (tests, status).
    public var record: UpdateRecord { state.withLock { $0.record } }
}
