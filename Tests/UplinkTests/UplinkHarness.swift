import FieldgateCore
import HubEmulator
import HubTestSupport
import IoTHub
import Logging
import ProtonAMQP
import Spool
import Testing
import Uplink

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A spool in a temporary directory and an uplink to a test hub over real TLS.
final class UplinkHarness: Sendable {
    let spool: Spool
    let uplink: Uplink
    let spoolDirectory: String

    init(hub: TestHub, leaves: [LeafConfiguration], router: (any LeafRouter)? = nil,
         clock: TestClock? = nil, configure: (inout UplinkConfiguration) -> Void = { _ in }, random: (@Sendable () -> Double)? = nil) throws {
        spoolDirectory = FileManager.default.temporaryDirectory.path + "/fieldgate-uplink-test-" + AMQPUUID.random().description
        var spoolConfig = SpoolConfiguration(directory: spoolDirectory)
        spoolConfig.sync = .interval(milliseconds: 50)
        spool = try Spool(configuration: spoolConfig)
        var config = UplinkHarness.configuration(for: hub)
        configure(&config)
        var logger = Logger(label: "test.uplink")
        logger.logLevel = ProcessInfo.processInfo.environment["UPLINK_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .error
        var nowMs: @Sendable () -> Int64 = { WallClock.nowMilliseconds() }
        if let clock { nowMs = clock.nowMs }
        var randomNumber: @Sendable () -> Double = { Double.random(in: 0..<1) }
        if let random { randomNumber = random }
        uplink = try Uplink(configuration: config, leaves: leaves, spool: spool, router: router, logger: logger, nowMs: nowMs, random: randomNumber)
        hub.onStop { [self] in await stop() }
    }

    /// TLS to the hub's AMQPS port, verifying its certificate against the test CA; unpaced, quick retries.
    static func configuration(for hub: TestHub) -> UplinkConfiguration {
        var config = UplinkConfiguration(hostName: hub.hostName)
        config.address = "127.0.0.1"
        config.port = hub.running.amqpsPort!
        config.transport = .tls(.init(caFile: hub.certificates.caCertificate))
        config.route = .amqps  // the WebSocket suites choose their routes themselves
        config.attachesPerSecond = nil
        config.reconnectBackoff = Backoff(initialMilliseconds: 50, maximumMilliseconds: 500)
        config.leafBackoff = Backoff(initialMilliseconds: 50, maximumMilliseconds: 500)
        return config
    }

    func stop() async {
        await uplink.stop()
        spool.close()
        try? FileManager.default.removeItem(atPath: spoolDirectory)
    }

    /// Appends one JSON reading per entry; returns the message ids the spool assigned.
    @discardableResult
    func append(_ readings: [(leaf: String, json: String, properties: [String: String])]) throws -> [String] {
        let entries = readings.map {
            Spool.Entry(leaf: $0.leaf, acquiredAtMs: WallClock.nowMilliseconds(),
                        payload: TelemetryEnvelope(body: Array($0.json.utf8), properties: $0.properties).encoded())
        }
        let seqs = try spool.append(entries)
        uplink.wake()
        return seqs.map { spool.messageID(for: $0) }
    }
}

/// Creates devices on the hub and the leaf configurations (primary and secondary keys) for them.
func createLeaves(_ hub: TestHub, count: Int, prefix: String = "leaf") async throws -> [LeafConfiguration] {
    let ids = (0..<count).map { "\(prefix)-\($0)" }
    let records = try await hub.core.perform { core in
        try ids.map { id in try core.upsertDevice(id: id, status: nil, primaryKey: nil, secondaryKey: nil) }
    }
    return records.map {
        LeafConfiguration(deviceID: $0.deviceId, credential: .symmetricKey(
            primary: $0.authentication.symmetricKey.primaryKey, secondary: $0.authentication.symmetricKey.secondaryKey))
    }
}

/// Polls `condition` every 50 ms until it holds or `seconds` pass.
func eventually(_ seconds: Double = 20, _ what: String, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(50))
    }
    Issue.record("timed out after \(seconds) s waiting for: \(what)")
    throw CancellationError()
}

/// Every event the hub has, paging through its log.
func allEvents(_ hub: TestHub) async throws -> [ReceivedEvent] {
    var out: [ReceivedEvent] = []
    var from: Int64 = 1
    while true {
        let page = try await hub.events(from: from)
        out += page
        guard let last = page.last, page.count == 10_000 else { return out }
        from = last.sequenceNumber + 1
    }
}

extension UplinkStatus {
    func count(_ phase: LeafPhase) -> Int { leaves.values.filter { $0.phase == phase }.count }
}

/// A wall clock a test controls.
struct TestClock: Sendable {
    let nowMs: @Sendable () -> Int64
}
