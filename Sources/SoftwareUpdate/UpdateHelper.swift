import FieldgateCore
import MessageAuthentication

#if canImport(Glibc)
import Glibc
#endif

/// The privileged side (docs/software-update.md): run as root by `fieldgate-update.service` when the daemon left a
/// request. It trusts nothing the daemon wrote beyond its request's fields: it copies the package out of the
/// daemon's directory without following links, checks its SHA-256 and that it is fieldgate for this architecture,
/// keeps the running version as a package for the rollback, installs with dpkg, and reinstalls the kept version if
/// the new one does not confirm in time. Factory reset clears only what /etc/fieldgate/fieldgate.toml names.
/// Blocking throughout: it is a program of its own, not part of the daemon.
public struct UpdateHelper: Sendable {
    public struct Settings: Sendable {
        /// The daemon's update directory (fieldgate's) and the helper's (root's).
        public var daemonDirectory: String
        public var helperDirectory = UpdateConfiguration.defaultHelperDirectory
        /// From the configuration: what the helper may do at all.
        public var updateEnabled: Bool
        /// An older version than the running one may be installed on request (the helper's own rollback always may).
        public var allowDowngrade = false
        /// Packages must carry a detached signature by a key of this keyring (root's).
        public var keyring: String?
        public var factoryResetEnabled: Bool
        public var resetClears: Set<UpdateConfiguration.ResetTarget>
        public var maxBytes: Int
        public var spoolDirectory: String
        public var stateDirectory: String
        public var devicesDirectory: String
        public var service = "fieldgated.service"
        /// How long the daemon has to say `restart-ok` after the helper verified the package; without it nothing is
        /// installed.
        public var restartWaitSeconds = 120

        public init(daemonDirectory: String, updateEnabled: Bool, factoryResetEnabled: Bool, resetClears: Set<UpdateConfiguration.ResetTarget>,
                    maxBytes: Int, spoolDirectory: String, stateDirectory: String, devicesDirectory: String) {
            self.daemonDirectory = daemonDirectory
            self.updateEnabled = updateEnabled
            self.factoryResetEnabled = factoryResetEnabled
            self.resetClears = resetClears
            self.maxBytes = maxBytes
            self.spoolDirectory = spoolDirectory
            self.stateDirectory = stateDirectory
            self.devicesDirectory = devicesDirectory
        }
    }

    public let settings: Settings
    private let log: @Sendable (String) -> Void

    public init(settings: Settings, log: @escaping @Sendable (String) -> Void) {
        self.settings = settings
        self.log = log
    }

    private func daemonPath(_ name: String) -> String { settings.daemonDirectory + "/" + name }
    private func helperPath(_ name: String) -> String { settings.helperDirectory + "/" + name }

    /// Takes the waiting request, if any, and carries it out. Returns false when there was none.
    @discardableResult
    public func runOnce() -> Bool {
        mkdir(settings.helperDirectory, 0o755)
        chmod(settings.helperDirectory, 0o755)
        // An install this helper began and did not end (a power cut, a killed helper): finished first.
        if let marker = StateFile.read(helperPath(Self.pendingFile), limit: 64 << 10).flatMap({ JSONValue.parse($0) }) {
            resumeInterrupted(marker)
        }
        let requestPath = daemonPath(UpdateHandoff.requestFile)
        guard let bytes = StateFile.read(requestPath, limit: 64 << 10) else {
            if access(requestPath, F_OK) == 0 {
                unlink(requestPath)
                finish(UpdateHandoff.Report(requestID: "unknown", outcome: .error, reason: "the request is not a small regular file"))
            }
            return false
        }
        unlink(requestPath)  // taken: the path unit does not start the helper again for it
        let request: UpdateHandoff.Request
        do throws(UpdateError) {
            guard let json = JSONValue.parse(bytes) else { throw UpdateError("the request is not JSON") }
            request = try UpdateHandoff.Request(json: json)
        } catch {
            finish(UpdateHandoff.Report(requestID: JSONValue.parse(bytes)?["id"]?.stringValue ?? "unknown", outcome: .error, reason: error.message))
            return true
        }
        log("request \(request.id): \(request.action.rawValue) \(request.version)")
        progress(UpdateHandoff.Report(requestID: request.id, outcome: .taken, version: request.version))
        switch request.action {
        case .install: install(request)
        case .factoryReset: factoryReset(request)
        }
        return true
    }

    // MARK: - Install

    /// Written before dpkg installs a new version and removed when the helper has its result: found at the next
    /// start (fieldgate-update.service also runs at boot), it means the confirmation wait was cut off.
    static let pendingFile = "pending.json"

    private func resumeInterrupted(_ marker: JSONValue) {
        let id = marker["requestID"]?.stringValue ?? "unknown"
        let version = marker["version"]?.stringValue ?? ""
        let from = marker["from"]?.stringValue ?? ""
        let confirmSeconds = Int(marker["confirmSeconds"]?.intValue ?? 300)
        let installed = PackageInspector.installedVersion() ?? ""
        log("request \(id): the install of \(version) was interrupted; \(installed.isEmpty ? "nothing" : installed) is installed")
        if installed == version {
            // The new version is there: it gets its confirmation time again from now.
            _ = HostCommand.run(["systemctl", "reset-failed", settings.service])
            _ = HostCommand.run(["systemctl", "start", settings.service])
            settleInstall(id: id, version: version, from: from, confirmSeconds: confirmSeconds)
        } else {
            unlink(helperPath(Self.pendingFile))
            finish(UpdateHandoff.Report(requestID: id, outcome: .error,
                                        reason: "the install of \(version) was interrupted (a power cut?); \(installed.isEmpty ? "no fieldgate" : installed) is installed", version: version))
        }
    }

    /// Waits for the new version's confirmation; keeps it, or reinstalls the kept previous package.
    private func settleInstall(id: String, version: String, from: String, confirmSeconds: Int) {
        let candidate = helperPath("candidate.deb"), previous = helperPath("previous.deb"), kept = helperPath("installed.deb")
        defer { unlink(helperPath(Self.pendingFile)) }
        let deadline = WallClock.nowMilliseconds() + Int64(confirmSeconds) * 1000
        var confirmed = false
        while WallClock.nowMilliseconds() < deadline {
            if StateFile.read(daemonPath(UpdateHandoff.confirmedFile), limit: 256).map({ String(decoding: $0, as: UTF8.self) }) == version {
                confirmed = true
                break
            }
            usleep(500_000)
        }
        if confirmed {
            unlink(kept)
            rename(candidate, kept)
            unlink(previous)
            log("fieldgate \(version) confirmed")
            return finish(UpdateHandoff.Report(requestID: id, outcome: .installed, version: version))
        }
        let state = serviceState()
        log("fieldgate \(version) did not confirm within \(confirmSeconds) s (\(state)); rolling back to \(from)")
        var report = UpdateHandoff.Report(requestID: id, outcome: .rolledback,
                                          reason: "\(version) did not confirm within \(confirmSeconds) s (\(state))", version: version)
        report.restoredVersion = from
        // A unit that failed its starts in a row is held by systemd's start limit: released before the reinstall.
        _ = HostCommand.run(["systemctl", "reset-failed", settings.service])
        if access(previous, R_OK) != 0 {
            report.outcome = .error
            report.reason += "; no kept package of \(from) to reinstall"
        } else if let e = dpkgInstall(previous) {
            report.outcome = .error
            report.reason += "; reinstalling \(from) failed: \(e.message)"
        } else {
            unlink(kept)
            rename(previous, kept)
        }
        unlink(candidate)
        finish(report)
    }

    private func install(_ request: UpdateHandoff.Request) {
        func refuse(_ why: String) { finish(UpdateHandoff.Report(requestID: request.id, outcome: .error, reason: why, version: request.version)) }
        guard settings.updateEnabled else { return refuse("software update is off in /etc/fieldgate/fieldgate.toml ([update] enabled)") }
        let candidate = helperPath("candidate.deb")
        if let e = copyVerified(daemonPath(request.file), to: candidate, sha256: request.sha256) { return refuse(e.message) }
        if let keyring = settings.keyring {
            let signature = helperPath("candidate.deb.sig")
            guard let bytes = StateFile.read(daemonPath(request.file + ".sig"), limit: 64 << 10) else {
                return refuse("the package has no signature beside it, and [update] keyring requires one")
            }
            guard StateFile.replace(signature, with: bytes, mode: 0o600) == nil else { return refuse("cannot keep the signature") }
            if let e = PackageInspector.verifySignature(of: candidate, signature: signature, keyring: keyring) { return refuse(e.message) }
        }
        let control: PackageInspector.Control
        switch PackageInspector.control(of: candidate) {
        case .failure(let e): return refuse(e.message)
        case .success(let c): control = c
        }
        guard let architecture = PackageInspector.hostArchitecture() else { return refuse("dpkg cannot tell this machine's architecture") }
        if let m = PackageInspector.mismatch(control, version: request.version, architecture: architecture) { return refuse(m) }
        guard let from = PackageInspector.installedVersion() else { return refuse("fieldgate is not installed as a Debian package here: nothing to update or roll back to") }
        if !settings.allowDowngrade, HostCommand.run(["dpkg", "--compare-versions", request.version, "gt", from]) != 0 {
            return refuse("\(request.version) is not newer than the running \(from): downgrades are refused unless [update] allow_downgrade = true")
        }
        // The running version, as a package, for the rollback.
        let previous = helperPath("previous.deb")
        let kept = helperPath("installed.deb")
        if case .success(let c)? = access(kept, R_OK) == 0 ? PackageInspector.control(of: kept) : nil, c.version == from {
            unlink(previous)
            guard link(kept, previous) == 0 else { return refuse("cannot keep \(from) for a rollback: \(String(cString: strerror(errno)))") }
        } else if let e = Self.repackInstalled(into: previous, work: helperPath("repack")) {
            return refuse("cannot keep \(from) as a package for a rollback: \(e.message)")
        }
        progress(UpdateHandoff.Report(requestID: request.id, outcome: .verified, version: request.version))
        // The daemon reports `rebooting` and flushes its spool, then says so; it is stopped either way.
        let allowed = daemonPath(UpdateHandoff.restartAllowedFile)
        var restartAllowed = false
        for _ in 0..<(settings.restartWaitSeconds * 4) {
            if StateFile.read(allowed, limit: 256).map({ String(decoding: $0, as: UTF8.self) }) == request.id {
                restartAllowed = true
                break
            }
            usleep(250_000)
        }
        unlink(allowed)
        guard restartAllowed else {
            unlink(candidate)
            return refuse("fieldgated did not get ready for its restart within \(settings.restartWaitSeconds) s (report, spool flush); nothing was installed")
        }
        unlink(daemonPath(UpdateHandoff.confirmedFile))
        progress(UpdateHandoff.Report(requestID: request.id, outcome: .confirming, version: request.version))
        log("installing fieldgate \(request.version) (running \(from))")
        let marker: JSONValue = ["requestID": .string(request.id), "version": .string(request.version), "from": .string(from),
                                 "confirmSeconds": .int(Int64(request.confirmSeconds))]
        StateFile.replace(helperPath(Self.pendingFile), with: marker.bytes, durable: true, mode: 0o600)
        if let e = dpkgInstall(candidate) {
            unlink(helperPath(Self.pendingFile))
            log("dpkg failed: \(e.message); reinstalling \(from)")
            let back = dpkgInstall(previous)
            return finish(UpdateHandoff.Report(requestID: request.id, outcome: .error,
                                               reason: "dpkg could not install \(request.version): \(e.message)" + (back == nil ? "; \(from) reinstalled" : "; reinstalling \(from) failed too: \(back!.message)"),
                                               version: request.version))
        }
        settleInstall(id: request.id, version: request.version, from: from, confirmSeconds: request.confirmSeconds)
    }

    /// Copies the daemon's file into the helper's directory — not through a link, a regular file within the size
    /// cap — and checks its SHA-256 on the copy, the file that will be installed.
    private func copyVerified(_ source: String, to target: String, sha256: String) -> UpdateError? {
        let input = open(source, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
        guard input >= 0 else { return UpdateError("the package \(source) cannot be opened: \(String(cString: strerror(errno)))") }
        defer { close(input) }
        var info = stat()
        guard fstat(input, &info) == 0, info.st_mode & S_IFMT == S_IFREG else { return UpdateError("the package is not a regular file") }
        guard info.st_size <= settings.maxBytes else { return UpdateError("the package is larger than \(settings.maxBytes) bytes") }
        unlink(target)
        let output = open(target, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard output >= 0 else { return UpdateError("cannot write \(target): \(String(cString: strerror(errno)))") }
        defer { close(output) }
        var digest = SHA256Digest()
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var total = 0
        while true {
            let n = buffer.withUnsafeMutableBytes { read(input, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { return UpdateError("reading the package failed: \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            total += n
            guard total <= settings.maxBytes else { return UpdateError("the package is larger than \(settings.maxBytes) bytes") }
            buffer.withUnsafeBytes { digest.update(UnsafeRawBufferPointer(rebasing: $0[..<n])) }
            var done = 0
            while done < n {
                let w = buffer.withUnsafeBytes { write(output, $0.baseAddress! + done, n - done) }
                if w < 0 && errno == EINTR { continue }
                guard w > 0 else { return UpdateError("writing the copy failed: \(String(cString: strerror(errno)))") }
                done += w
            }
        }
        guard fsync(output) == 0 else { return UpdateError("syncing the copy failed: \(String(cString: strerror(errno)))") }
        let found = digest.hex()
        guard found == sha256 else { return UpdateError("checksum mismatch: expected \(sha256), the package's SHA-256 is \(found)") }
        return nil
    }

    /// dpkg -i, keeping the operator's configuration files; the package's maintainer scripts restart the service.
    /// If it is not running afterwards (the scripts skip the restart with an invalid configuration, or the restart
    /// failed), it is started once more here; a version that cannot start then fails its confirmation.
    private func dpkgInstall(_ path: String) -> UpdateError? {
        setenv("DEBIAN_FRONTEND", "noninteractive", 1)
        guard let (status, output) = HostCommand.capture(["dpkg", "--force-confold", "--force-confdef", "-i", path], withStderr: true) else {
            return UpdateError("dpkg cannot be started")
        }
        guard status == 0 else { return UpdateError(output.split(separator: "\n").suffix(3).joined(separator: " | ")) }
        if HostCommand.capture(["systemctl", "is-active", settings.service])?.output != "active" {
            _ = HostCommand.run(["systemctl", "reset-failed", settings.service])
            _ = HostCommand.run(["systemctl", "restart", settings.service])
        }
        return nil
    }

    /// The service's state for a rollback's reason: "active", or "failed, exit status 1, 5 restarts".
    private func serviceState() -> String {
        let out = HostCommand.capture(["systemctl", "show", settings.service, "-p", "ActiveState", "-p", "Result", "-p", "ExecMainStatus", "-p", "NRestarts"])?.output ?? ""
        var f: [String: String] = [:]
        for line in out.split(separator: "\n") { if let eq = line.firstIndex(of: "=") { f[String(line[..<eq])] = String(line[line.index(after: eq)...]) } }
        var parts = ["fieldgated \(f["ActiveState"] ?? "unknown")"]
        if let r = f["Result"], r != "success" { parts.append("result \(r)") }
        if let s = f["ExecMainStatus"], s != "0" { parts.append("exit status \(s)") }
        if let n = f["NRestarts"], n != "0" { parts.append("\(n) restarts") }
        return parts.joined(separator: ", ")
    }

    // MARK: - Factory reset

    private func factoryReset(_ request: UpdateHandoff.Request) {
        guard settings.factoryResetEnabled else {
            return finish(UpdateHandoff.Report(requestID: request.id, outcome: .error, reason: "factory reset is off in /etc/fieldgate/fieldgate.toml ([update] factory_reset)"))
        }
        progress(UpdateHandoff.Report(requestID: request.id, outcome: .verified))
        usleep(500_000)  // the daemon's last report goes out
        log("factory reset: stopping \(settings.service), clearing \(settings.resetClears.map(\.rawValue).sorted().joined(separator: ", "))")
        // Deletions under the state directory run as its owner (the fieldgate user), never as root: that user
        // controls the directory, and a link planted in it must not turn a root `rm` onto other files.
        var owner = stat()
        guard lstat(settings.stateDirectory, &owner) == 0, owner.st_mode & S_IFMT == S_IFDIR, owner.st_uid != 0 else {
            return finish(UpdateHandoff.Report(requestID: request.id, outcome: .error,
                                               reason: "the state directory \(settings.stateDirectory) is not a directory of the service's user: not cleared"))
        }
        func removeAsOwner(_ path: String) {
            _ = HostCommand.run(["setpriv", "--reuid=\(owner.st_uid)", "--regid=\(owner.st_gid)", "--clear-groups", "--",
                                 "rm", "-rf", "--one-file-system", "--", path])
        }
        _ = HostCommand.run(["systemctl", "stop", settings.service])
        var cleared: [String] = []
        if settings.resetClears.contains(.spool) {
            removeAsOwner(settings.spoolDirectory)
            cleared.append("spool")
        }
        if settings.resetClears.contains(.state) {
            // Everything else under the state directory: the spool stays unless it was named too, and so does the
            // record of the last software update (the installed software is not reset: forgetting that a package
            // failed would install it again).
            let names = (try? directoryEntries(settings.stateDirectory)) ?? []
            for name in names where settings.stateDirectory + "/" + name != settings.spoolDirectory {
                let path = settings.stateDirectory + "/" + name
                if path == settings.daemonDirectory {
                    for entry in (try? directoryEntries(path)) ?? [] where entry != UpdateHandoff.recordFile { removeAsOwner(path + "/" + entry) }
                } else {
                    removeAsOwner(path)
                }
            }
            cleared.append("state")
        }
        if settings.resetClears.contains(.devices) {
            // /etc/fieldgate/devices.d is root's: its regular files only.
            for name in (try? directoryEntries(settings.devicesDirectory)) ?? [] where name.hasSuffix(".toml") {
                var info = stat()
                if lstat(settings.devicesDirectory + "/" + name, &info) == 0, info.st_mode & S_IFMT == S_IFREG { unlink(settings.devicesDirectory + "/" + name) }
            }
            cleared.append("devices.d")
        }
        finish(UpdateHandoff.Report(requestID: request.id, outcome: .reset, reason: "cleared " + cleared.joined(separator: ", ")))
        _ = HostCommand.run(["systemctl", "start", settings.service])
    }

    private func directoryEntries(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    // MARK: - Reports

    private func progress(_ report: UpdateHandoff.Report) {
        StateFile.replace(helperPath(UpdateHandoff.progressFile), with: report.json.bytes, durable: true, mode: 0o644)
    }

    private func finish(_ report: UpdateHandoff.Report) {
        log("request \(report.requestID): \(report.outcome.rawValue)\(report.reason.isEmpty ? "" : ": " + report.reason)")
        progress(report)
        StateFile.replace(helperPath(UpdateHandoff.resultFile), with: report.json.bytes, durable: true, mode: 0o644)
    }

    // MARK: - Keeping the running version

    /// Builds a .deb of the installed fieldgate from its files, control data and maintainer scripts (as dpkg-repack
    /// does), so a rollback has a package even when the running version came from a file apt did not keep.
    static func repackInstalled(into output: String, work: String) -> UpdateError? {
        _ = HostCommand.run(["rm", "-rf", "--", work])
        defer { _ = HostCommand.run(["rm", "-rf", "--", work]) }
        guard mkdir(work, 0o755) == 0, mkdir(work + "/DEBIAN", 0o755) == 0 else { return UpdateError("cannot make \(work)") }
        guard let (s1, list) = HostCommand.capture(["dpkg-query", "--listfiles", "fieldgate"]), s1 == 0 else { return UpdateError("dpkg-query --listfiles failed") }
        for path in list.split(separator: "\n").map(String.init) where path.hasPrefix("/") && path != "/." {
            var info = stat(), followed = stat()
            guard lstat(path, &info) == 0 else { continue }  // a file the operator removed: not kept
            // A directory of the package is one in the copy, even where this system has a link for it (merged /usr:
            // /lib → usr/lib).
            if info.st_mode & S_IFMT == S_IFDIR || (stat(path, &followed) == 0 && followed.st_mode & S_IFMT == S_IFDIR) {
                if info.st_mode & S_IFMT != S_IFDIR { info = followed }
                _ = HostCommand.run(["mkdir", "-p", work + path])
                chmod(work + path, info.st_mode & 0o7777)
            } else {
                let parent = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
                _ = HostCommand.run(["mkdir", "-p", work + parent])
                guard HostCommand.run(["cp", "-a", "--no-dereference", "--", path, work + path]) == 0 else { return UpdateError("cannot copy \(path)") }
            }
        }
        guard let (s2, status) = HostCommand.capture(["dpkg-query", "--status", "fieldgate"]), s2 == 0 else { return UpdateError("dpkg-query --status failed") }
        // dpkg's own bookkeeping fields go (Status, Config-Version, Conffiles with its continuation lines).
        var control = ""
        var skipping = false
        for line in status.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix(" ") { if !skipping { control += line + "\n" }; continue }
            skipping = line.hasPrefix("Status:") || line.hasPrefix("Config-Version:") || line.hasPrefix("Conffiles:")
            if !skipping && !line.isEmpty { control += line + "\n" }
        }
        guard StateFile.replace(work + "/DEBIAN/control", with: Array(control.utf8), mode: 0o644) == nil else { return UpdateError("cannot write the control file") }
        // The maintainer scripts and the conffiles list, through dpkg-query (not dpkg's database files).
        let present = Set((HostCommand.capture(["dpkg-query", "--control-list", "fieldgate"])?.output ?? "").split(separator: "\n").map(String.init))
        for name in ["preinst", "postinst", "prerm", "postrm", "conffiles"] where present.contains(name) {
            guard let (status, text) = HostCommand.capture(["dpkg-query", "--control-show", "fieldgate", name]), status == 0,
                  StateFile.replace(work + "/DEBIAN/" + name, with: Array((text + "\n").utf8), mode: name == "conffiles" ? 0o644 : 0o755) == nil
            else { return UpdateError("cannot keep the package's \(name)") }
        }
        unlink(output)
        guard let (s3, out) = HostCommand.capture(["dpkg-deb", "--build", work, output], withStderr: true), s3 == 0 else {
            return UpdateError("dpkg-deb --build failed")
        }
        _ = out
        chmod(output, 0o600)
        return nil
    }
}
