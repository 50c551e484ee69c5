import Dispatch
import FieldgateCore
import FrameCodecs
import SerialAdapter
import Spool
import Synchronization
import Testing
import Uplink

#if canImport(Glibc)
import Glibc
#endif

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A pty pair from socat: the adapter opens `device`, the test plays the device on `peer`. Killing socat is an
/// unplugged USB adapter; starting it again is the replug.
final class SocatPair: @unchecked Sendable {
    let dir: String
    var pid: pid_t = 0
    var device: String { dir + "/dev" }
    var peer: String { dir + "/peer" }

    init() async throws {
        dir = FileManager.default.temporaryDirectory.path + "/fieldgate-serial-" + String(UInt64.random(in: 1...UInt64.max))
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try await plug()
    }

    /// Waits without blocking the cooperative pool (other tests share its two threads).
    func plug() async throws {
        let args: [String] = ["socat", "pty,raw,echo=0,link=\(device)", "pty,raw,echo=0,link=\(peer)"]
        let argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        guard posix_spawnp(&pid, "socat", nil, nil, argv, environ) == 0 else { throw SerialAdapterTestError("cannot start socat") }
        for _ in 0..<100 where !(FileManager.default.fileExists(atPath: device) && FileManager.default.fileExists(atPath: peer)) {
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    func unplug() async throws {
        kill()
        for _ in 0..<100 where FileManager.default.fileExists(atPath: device) { try await Task.sleep(for: .milliseconds(10)) }
    }

    /// SIGKILL: a child spawned from a test thread inherits its blocked signal mask, so SIGTERM could be ignored.
    /// waitpid returns at once after SIGKILL.
    private func kill() {
        guard pid > 0 else { return }
        Glibc.kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        pid = 0
    }

    /// Writes to the device side of the line.
    func write(_ bytes: [UInt8]) {
        let fd = open(peer, O_WRONLY | O_NOCTTY)
        defer { close(fd) }
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    }

    func write(_ s: String) { write(Array(s.utf8)) }

    deinit {
        kill()
        try? FileManager.default.removeItem(atPath: dir)
    }
}

struct SerialAdapterTestError: Error { var m: String; init(_ m: String) { self.m = m } }

@Suite("Serial adapter over socat ptys", .serialized)
struct SerialAdapterTests {
    private func withAdapter(_ configure: (inout SerialPortConfiguration, SocatPair) -> Void, _ body: (SerialAdapter, Spool, SocatPair) async throws -> Void) async throws {
        let pair = try await SocatPair()
        var sc = SpoolConfiguration(directory: pair.dir + "/spool")
        sc.sync = .interval(milliseconds: 50)
        let spool = try Spool(configuration: sc)
        var config = SerialPortConfiguration(path: pair.device)
        config.reopenIntervalMilliseconds = 100
        configure(&config, pair)
        let adapter = try SerialAdapter(configuration: config, spool: spool)
        adapter.start()
        try await eventually("open") { adapter.statistics().connected }
        do { try await body(adapter, spool, pair) } catch { await adapter.stop(); spool.close(); throw error }
        await adapter.stop()
        spool.close()
    }

    private func eventually(_ what: String, _ condition: () -> Bool) async throws {
        for _ in 0..<150 { if condition() { return }; try await Task.sleep(for: .milliseconds(20)) }
        Issue.record("timed out: \(what)")
        throw SerialAdapterTestError(what)
    }

    private func values(_ spool: Spool) throws -> [(String, JSONValue)] {
        try spool.next(max: 1000).compactMap { r in TelemetryEnvelope(decoding: r.payload).flatMap { JSONValue.parse($0.body) }.map { (r.leaf, $0) } }
    }

    @Test func linesWithKeyValuesAmidGarbageAndHalfFrames() async throws {
        try await withAdapter({ c, _ in
            c.leaf = "meter"
            c.format = .keyValue(fieldMap: ["T": "temperature"], onlyMapped: true, idField: nil)
            c.framing = .lines(maxLength: 32)
        }) { adapter, spool, pair in
            pair.write("T=21.5\n\u{01}\u{02}garbage-without-equals\nT=2")
            pair.write("2\r\n" + String(repeating: "z", count: 100) + "\nT=23\n")
            try await eventually("three readings") { adapter.statistics().readings["meter"] == 3 }
            #expect(try values(spool).map(\.1) == [["temperature": 21.5], ["temperature": 22], ["temperature": 23]])
            let s = adapter.statistics()
            #expect(s.rejected["malformed"] == 1 && s.framingErrors == 1)
        }
    }

    @Test func pingAndStateForTheTwin() async throws {
        let reports = Mutex<[(String, JSONValue)]>([])
        try await withAdapter({ c, _ in c.leaf = "meter" }) { adapter, _, _ in
            adapter.reportStates { leaf, patch in reports.withLock { $0.append((leaf, patch)) } }
            try await eventually("state reported") { reports.withLock { !$0.isEmpty } }
            let (leaf, patch) = try #require(reports.withLock { $0.first })
            #expect(leaf == "meter" && patch["serial"]?["state"]?["connected"] == true)
            let ping = await adapter.invoke(MethodCall(deviceID: "meter", name: "ping", payload: nil, deadlineMilliseconds: WallClock.nowMilliseconds() + 5000))
            #expect(ping?.status == 200 && ping?.payload["connected"] == true)
        }
    }

    @Test func idFieldNamesTheLeafButOnlyAllowedOnes() async throws {
        try await withAdapter({ c, _ in
            c.leaves = ["gps-1", "gps-2"]
            c.format = .csv(fields: ["id", "lat", "lon"], idField: "id")
        }) { adapter, spool, pair in
            pair.write("gps-1,47.1,8.5\ngps-9,1,2\ngps-2,46.0,7.0\n")
            try await eventually("two readings") { adapter.statistics().readings.values.reduce(0, +) == 2 }
            #expect(try values(spool).map(\.0) == ["gps-1", "gps-2"])
            #expect(adapter.statistics().rejected["notAllowedForLeaf"] == 1)
        }
    }

    @Test func markersRegexAndTheWritePathWithReply() async throws {
        try await withAdapter({ c, _ in
            c.leaf = "scale"
            c.framing = .markers(start: 0x02, end: 0x03, escape: 0x10)
            c.format = .regex(pattern: #"W:(?<weight>[+-]\d+\.\d+)kg"#, idField: nil)
            c.replyPattern = "OK.*|ERR.*"
        }) { adapter, spool, pair in
            pair.write([0x02] + Array("W:+0012.50kg".utf8) + [0x03])
            try await eventually("a weight") { adapter.statistics().readings["scale"] == 1 }
            #expect(try values(spool).first?.1 == ["weight": 12.5])
            // C2D "TARE": the device sees the framed command and answers OK → complete.
            let fd = open(pair.peer, O_RDWR | O_NOCTTY)
            defer { close(fd) }
            DispatchQueue.global().async {
                var buf = [UInt8](repeating: 0, count: 64)
                var got: [UInt8] = []
                while !got.contains(0x03) { let n = read(fd, &buf, 64); if n <= 0 { break }; got += buf[0..<n] }
                let reply: [UInt8] = got.contains(Array("TARE".utf8).first!) ? [0x02] + Array("OK tared".utf8) + [0x03] : []
                _ = reply.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            }
            let outcome = await adapter.cloudToDevice(C2DMessage(deviceID: "scale", body: Array("TARE".utf8)))
            #expect(outcome == .complete)
            // No answer in time → abandon (the hub redelivers).
            let silent = await adapter.cloudToDevice(C2DMessage(deviceID: "scale", body: Array("ZERO".utf8)))
            guard case .abandon = silent else { Issue.record("\(silent)"); return }
        }
    }

    @Test func unplugAndReplugRecoverWithoutARestart() async throws {
        try await withAdapter({ c, _ in
            c.leaf = "meter"
            c.format = .json(idField: nil)
        }) { adapter, spool, pair in
            pair.write(#"{"n":1}"# + "\n")
            try await eventually("first reading") { adapter.statistics().readings["meter"] == 1 }
            try await pair.unplug()
            try await eventually("noticed the unplug") { !adapter.statistics().connected }
            let gone = await adapter.invoke(MethodCall(deviceID: "meter", name: "send", payload: ["data": "PING"], deadlineMilliseconds: WallClock.nowMilliseconds() + 1000))
            #expect(gone?.status == 503 || gone?.status == 504, "a command while unplugged fails clearly: \(String(describing: gone))")
            try await pair.plug()
            try await eventually("reopened") { adapter.statistics().connected && adapter.statistics().opens == 2 }
            pair.write(#"{"n":2}"# + "\n")
            try await eventually("reading after the replug") { adapter.statistics().readings["meter"] == 2 }
            #expect(try values(spool).map(\.1) == [["n": 1], ["n": 2]])
        }
    }
}
