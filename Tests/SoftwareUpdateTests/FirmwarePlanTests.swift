import FieldgateCore
import HubTunnel
import Logging
import MessageAuthentication
import Synchronization
import Testing
@testable import SoftwareUpdate

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The pure parts of software update: the maintenance window, what a desired `firmware` leads to, the hand-off's
/// request checks, the package's control fields and SHA-256.
@Suite("Software update decisions")
struct FirmwarePlanTests {
    /// 2026-12-05 00:00 UTC.
    let midnight: Int64 = 1_796_428_800_000
    let hour: Int64 = 3_600_000
    let check = String(repeating: "ab", count: 32)

    @Test func windowOpensDailyInItsZone() throws {
        let w = try MaintenanceWindow(desired: ["start": "02:00", "durationMinutes": 60, "timezone": "UTC"])
        #expect(!w.isOpen(atMs: midnight + hour) && w.isOpen(atMs: midnight + 2 * hour) && w.isOpen(atMs: midnight + 2 * hour + 59 * 60_000))
        #expect(!w.isOpen(atMs: midnight + 3 * hour))
        #expect(w.nextOpening(afterMs: midnight + hour) == midnight + 2 * hour)
        #expect(w.nextOpening(afterMs: midnight + 3 * hour) == midnight + 26 * hour, "tomorrow's")
        // Across midnight, in a zone east of UTC: 23:30+01:00 for 90 min = 22:30 to 00:00 UTC.
        let late = try MaintenanceWindow(desired: ["start": "23:30", "durationMinutes": 90, "timezone": "+01:00"])
        #expect(late.isOpen(atMs: midnight - 30 * 60_000) && !late.isOpen(atMs: midnight + 60_000) && !late.isOpen(atMs: midnight - 2 * hour))
        #expect(late.nextOpening(afterMs: midnight) == midnight + 22 * hour + 30 * 60_000)
        #expect(try MaintenanceWindow(desired: ["start": "02:00", "durationMinutes": 30, "timezone": "UTC-05:30"]).utcOffsetMinutes == -330)
        for bad: JSONValue in [["start": "2:00", "durationMinutes": 60], ["start": "02:00", "durationMinutes": 0],
                               ["start": "02:00", "durationMinutes": 60, "timezone": "Europe/Berlin"], "02:00"] {
            #expect(throws: MaintenanceWindow.Problem.self) { try MaintenanceWindow(desired: bad) }
        }
    }

    private func request(_ version: String = "0.2.0", uri: String = "https://example.com/fieldgate_0.2.0_arm64.deb", force: Bool = false) -> FirmwareRequest {
        FirmwareRequest(desired: ["fwVersion": .string(version), "fwPackageURI": .string(uri), "fwPackageCheckValue": .string(check.uppercased()), "force": .bool(force)])!
    }

    @Test func aDesiredVersionStartsOnlyWhenItMay() throws {
        let now = midnight + hour
        let window = try MaintenanceWindow(desired: ["start": "02:00", "durationMinutes": 60])
        // Same version: current, nothing pending.
        guard case .report(let same) = FirmwarePlan.decide(request("0.1.0"), record: UpdateRecord(), currentVersion: "0.1.0", enabled: true, window: nil, nowMs: now) else {
            Issue.record("the running version started an update"); return
        }
        #expect(same.status == .current && same.pendingVersion.isEmpty)
        // Off in the configuration: error, said so.
        guard case .report(let off) = FirmwarePlan.decide(request(), record: UpdateRecord(), currentVersion: "0.1.0", enabled: false, window: nil, nowMs: now) else {
            Issue.record("started while off"); return
        }
        #expect(off.status == .error && off.substatus.contains("[update] enabled"))
        // Not https: error, "Insecure package URI" as the pattern says.
        guard case .report(let insecure) = FirmwarePlan.decide(request(uri: "http://example.com/p.deb"), record: UpdateRecord(), currentVersion: "0.1.0", enabled: true, window: nil, nowMs: now) else {
            Issue.record("started from http"); return
        }
        #expect(insecure.status == .error && insecure.substatus.hasPrefix("Insecure package URI"))
        // Outside the window: waits, with the version pending.
        guard case .wait(let waiting) = FirmwarePlan.decide(request(), record: UpdateRecord(), currentVersion: "0.1.0", enabled: true, window: .success(window), nowMs: now) else {
            Issue.record("did not wait for the window"); return
        }
        #expect(waiting.status == .current && waiting.pendingVersion == "0.2.0" && waiting.substatus.contains("maintenance window"))
        // Forced, or inside the window: starts, and the check value is compared in lower case.
        guard case .start(let attempt, let r) = FirmwarePlan.decide(request(force: true), record: waiting, currentVersion: "0.1.0", enabled: true, window: .success(window), nowMs: now) else {
            Issue.record("force did not start"); return
        }
        #expect(attempt.status == .downloading && attempt.fromVersion == "0.1.0" && attempt.startedAtMs == now && r.checkValue == check)
        guard case .start = FirmwarePlan.decide(request(), record: waiting, currentVersion: "0.1.0", enabled: true, window: .success(window), nowMs: now + hour) else {
            Issue.record("the open window did not start it"); return
        }
        // A window it cannot read holds updates back.
        guard case .wait = FirmwarePlan.decide(request(), record: UpdateRecord(), currentVersion: "0.1.0", enabled: true,
                                               window: .failure(.init(message: "bad")), nowMs: now) else {
            Issue.record("an unreadable window let it go"); return
        }
    }

    @Test func aFailedAttemptIsNotRetriedUntilTheDesiredValueChanges() {
        var failed = UpdateRecord()
        failed.status = .rolledback
        failed.pendingVersion = "0.2.0"
        failed.checkValue = check
        failed.uri = "https://example.com/fieldgate_0.2.0_arm64.deb"
        failed.substatus = "rolled back"
        #expect(FirmwarePlan.decide(request(), record: failed, currentVersion: "0.1.0", enabled: true, window: nil, nowMs: midnight) == .report(failed))
        var other = request()
        other.checkValue = String(repeating: "cd", count: 32)
        guard case .start = FirmwarePlan.decide(other, record: failed, currentVersion: "0.1.0", enabled: true, window: nil, nowMs: midnight) else {
            Issue.record("a new package was not tried"); return
        }
        // Back to the running version: current again, the last attempt's times kept.
        failed.startedAtMs = 5
        failed.endedAtMs = 6
        guard case .report(let back) = FirmwarePlan.decide(request("0.1.0"), record: failed, currentVersion: "0.1.0", enabled: true, window: nil, nowMs: midnight) else {
            Issue.record("no report"); return
        }
        #expect(back.status == .current && back.pendingVersion.isEmpty && back.startedAtMs == 5 && back.endedAtMs == 6)
        // Busy: a new desired value waits.
        var busy = UpdateRecord()
        busy.status = .downloading
        #expect(FirmwarePlan.decide(other, record: busy, currentVersion: "0.1.0", enabled: true, window: nil, nowMs: midnight) == .report(busy))
    }

    /// Off in the configuration is not a failed attempt: once it is on (a restart), the same desired value goes;
    /// while it is off, deciding again changes nothing (no report every few seconds).
    @Test func updatesOffIsNotSticky() {
        guard case .report(let off) = FirmwarePlan.decide(request(), record: UpdateRecord(), currentVersion: "0.1.0", enabled: false, window: nil, nowMs: midnight) else {
            Issue.record("no report"); return
        }
        #expect(FirmwarePlan.decide(request(), record: off, currentVersion: "0.1.0", enabled: false, window: nil, nowMs: midnight + hour) == .report(off))
        guard case .start = FirmwarePlan.decide(request(), record: off, currentVersion: "0.1.0", enabled: true, window: nil, nowMs: midnight + hour) else {
            Issue.record("enabling did not start it"); return
        }
    }

    /// The helper's result settles the record of its request: a rollback it did after the new version had already
    /// written `current` (too late) stands, so the same package is not installed again.
    @Test func theHelpersResultSettlesTheRecord() {
        var late = UpdateRecord()
        late.status = .current
        late.fromVersion = "0.1.0"
        late.checkValue = check
        late.uri = "https://example.com/fieldgate_0.2.0_arm64.deb"
        late.requestID = "17-ab"
        var rolledBack = UpdateHandoff.Report(requestID: "17-ab", outcome: .rolledback, reason: "0.2.0 did not confirm within 30 s", version: "0.2.0")
        rolledBack.restoredVersion = "0.1.0"
        let settled = late.settled(by: rolledBack, running: "0.1.0")
        #expect(settled?.status == .rolledback && settled?.pendingVersion == "0.2.0" && settled?.substatus.contains("rolled back to 0.1.0") == true)
        if let settled {
            #expect(FirmwarePlan.decide(request(), record: settled, currentVersion: "0.1.0", enabled: true, window: nil, nowMs: midnight) == .report(settled),
                    "not installed again")
        }
        #expect(late.settled(by: UpdateHandoff.Report(requestID: "other", outcome: .rolledback), running: "0.1.0") == nil)
        var installed = late
        installed.status = .rebooting
        installed.pendingVersion = "0.2.0"
        #expect(installed.settled(by: UpdateHandoff.Report(requestID: "17-ab", outcome: .installed, version: "0.2.0"), running: "0.2.0")?.status == .current)
    }

    @Test func reportedSectionHasThePatternsFields() {
        var r = UpdateRecord()
        r.status = .applying
        r.pendingVersion = "0.2.0"
        r.startedAtMs = midnight
        let f = r.reported(currentVersion: "0.1.0")
        #expect(f["currentFwVersion"] == "0.1.0" && f["pendingFwVersion"] == "0.2.0" && f["fwUpdateStatus"] == "applying")
        #expect(f["lastFwUpdateStartTime"] == .string(WallClock.iso8601(milliseconds: midnight)) && f["lastFwUpdateEndTime"] == "")
        #expect(UpdateRecord(json: r.json) == r)
    }

    @Test func theHelperTakesOnlyWellFormedRequests() throws {
        var good = UpdateHandoff.Request(id: "1796428800000-ab12", action: .install)
        good.version = "0.2.0"
        good.file = "fieldgate_0.2.0.deb"
        good.sha256 = check
        #expect(try UpdateHandoff.Request(json: good.json) == good)
        for (field, value) in [("file", "../../etc/shadow"), ("version", "0.2.0; rm -rf /"), ("sha256", "xyz"), ("id", "../x"), ("action", "format"),
                               ("confirmSeconds", "5")] as [(String, String)] {
            guard case .object(var o) = good.json else { return }
            o[field] = field == "confirmSeconds" ? .int(5) : .string(value)
            #expect(throws: UpdateError.self, "\(field) = \(value)") { try UpdateHandoff.Request(json: .object(o)) }
        }
    }

    @Test func packageFieldsAndDigest() {
        let control = PackageInspector.parseFields("Package: fieldgate\nVersion: 0.2.0\nArchitecture: arm64\n")
        #expect(control == PackageInspector.Control(package: "fieldgate", version: "0.2.0", architecture: "arm64"))
        #expect(PackageInspector.mismatch(control!, version: "0.2.0", architecture: "amd64")?.contains("for arm64") == true)
        #expect(PackageInspector.mismatch(control!, version: "0.2.1", architecture: "arm64")?.contains("not 0.2.1") == true)
        #expect(PackageInspector.mismatch(control!, version: "0.2.0", architecture: "arm64") == nil)
        #expect(SHA256Digest.hex(of: Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }
}

/// The window holds `reboot` and `factoryReset` back unless forced; a factory reset that is off is refused (403).
@Suite("Maintenance window and factory reset")
struct DisruptiveActionTests {
    final class Reports: Sendable { let patches = Mutex<[JSONValue]>([]) }

    private func agent(factoryReset: Bool, reports: Reports, rebooted: Reports) throws -> UpdateAgent {
        let directory = FileManager.default.temporaryDirectory.path + "/fieldgate-agent-\(Int.random(in: 0..<1_000_000))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var configuration = UpdateConfiguration(directory: directory + "/update")
        configuration.factoryReset = factoryReset
        configuration.helperDirectory = directory + "/helper"
        let environment = UpdateAgent.Environment(
            report: { patch, _ in reports.patches.withLock { $0.append(patch) }; return nil },
            flushSpool: {}, spooledSequence: { 0 }, https: HTTPSSettings(), reboot: { rebooted.patches.withLock { $0.append("rebooted") } })
        return UpdateAgent(configuration: configuration, currentVersion: "0.1.0", environment: environment, logger: Logger(label: "test.update"))
    }

    /// A window that is closed now: start an hour from now, for 30 minutes.
    private var closedWindow: JSONValue {
        let minute = (Int(WallClock.nowMilliseconds() / 60_000) + 60) % 1440
        return ["maintenance": ["window": ["start": .string(MaintenanceWindow.clock(minute)), "durationMinutes": 30, "timezone": "UTC"]]]
    }

    @Test func aRebootWaitsForTheWindowUnlessForced() async throws {
        let reports = Reports(), rebooted = Reports()
        let a = try agent(factoryReset: true, reports: reports, rebooted: rebooted)
        let reported = a.desired(closedWindow)
        #expect(reported["maintenance"]?["inWindow"] == false && reported["maintenance"]?["compliant"] == true)
        #expect(await a.mayRebootNow(force: false) == false)
        #expect(reports.patches.withLock { $0.last?["maintenance"]?["pendingReboot"]?.stringValue } != nil, "the pending reboot is reported")
        #expect(await a.mayRebootNow(force: true) == true)
        await a.tick()
        #expect(rebooted.patches.withLock { $0.isEmpty }, "nothing runs while the window is closed")
        // The window is lifted: the pending reboot goes at the next tick.
        _ = a.desired([:])
        await a.tick()
        #expect(rebooted.patches.withLock { $0.count } == 1)
    }

    @Test func aFactoryResetWaitsForTheWindow() async throws {
        let reports = Reports()
        let a = try agent(factoryReset: true, reports: reports, rebooted: Reports())
        _ = a.desired(closedWindow)
        let (status, answer) = await a.factoryReset(force: false)
        #expect(status == 202 && answer["status"] == "pending")
        let last = reports.patches.withLock { $0.last }
        #expect(last?["iothubDM"]?["factoryReset"]?["status"] == "pending" && last?["maintenance"]?["pendingFactoryReset"]?.stringValue != nil)
    }

    @Test func anUnreadableWindowHoldsActionsBack() async throws {
        let a = try agent(factoryReset: true, reports: Reports(), rebooted: Reports())
        let reported = a.desired(["maintenance": ["window": ["start": "2am", "durationMinutes": 60]]])
        #expect(reported["maintenance"]?["compliant"] == false && reported["maintenance"]?["problem"]?.stringValue?.contains("HH:MM") == true)
        #expect(await a.mayRebootNow(force: false) == false)
    }

    @Test func factoryResetOffIsRefused() async throws {
        let a = try agent(factoryReset: false, reports: Reports(), rebooted: Reports())
        let (status, answer) = await a.factoryReset(force: true)
        #expect(status == 403 && answer["error"]?.stringValue?.contains("factory_reset") == true)
    }
}
