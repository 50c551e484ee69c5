import ControlSocket
import FieldgateCore

#if canImport(Glibc)
import Glibc
#endif

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

public struct PeerError: Error, CustomStringConvertible { public var description: String; public init(_ d: String) { description = d } }

/// The repository's root (Tests/HubTestSupport/ModbusPeer.swift is two levels down).
public let repositoryRoot: String = {
    var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3)
    return parts.joined(separator: "/")
}()

/// A pymodbus slave (Tests/peers/modbus_server.py, the version pinned in requirements.txt, installed into
/// .venv-peers by scripts/setup.sh) with its control socket; over TCP, or RTU on one end of a socat pty pair.
public final class ModbusPeer: @unchecked Sendable {
    public let dir: String
    private var pids: [pid_t] = []
    public private(set) var port = 0
    /// For RTU: the end fieldgate opens.
    public private(set) var device = ""
    public var control: String { dir + "/control.sock" }

    public enum Transport: Sendable { case tcp, rtu(baud: Int) }

    public init(_ transport: Transport, units: [Int], initial: [JSONValue] = []) async throws {
        dir = FileManager.default.temporaryDirectory.path + "/fieldgate-modbus-" + String(UInt64.random(in: 1...UInt64.max))
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let python = repositoryRoot + "/.venv-peers/bin/python"
        guard FileManager.default.isExecutableFile(atPath: python) else {
            throw PeerError("\(python) is missing: run scripts/setup.sh (it installs the pinned pymodbus)")
        }
        var args = [python, repositoryRoot + "/Tests/peers/modbus_server.py", "--units", units.map(String.init).joined(separator: ","),
                    "--control", control, "--ready-file", dir + "/ready", "--init", JSONValue.array(initial).serialized]
        switch transport {
        case .tcp:
            args += ["--tcp", "127.0.0.1:0"]
        case .rtu(let baud):
            device = dir + "/tty-gateway"
            try spawn(["socat", "pty,raw,echo=0,link=\(device)", "pty,raw,echo=0,link=\(dir)/tty-slave"])
            try await waitFor { FileManager.default.fileExists(atPath: self.device) && FileManager.default.fileExists(atPath: self.dir + "/tty-slave") }
            args += ["--rtu", dir + "/tty-slave", "--baud", String(baud)]
        }
        try spawn(args)
        try await waitFor(seconds: 30) { FileManager.default.fileExists(atPath: self.dir + "/ready") }
        let ready = JSONValue.parse(Array(try String(contentsOfFile: dir + "/ready", encoding: .utf8).utf8))
        port = Int(ready?["port"]?.intValue ?? 0)
    }

    private func spawn(_ argv: [String]) throws {
        switch spawnProcess(argv, searchPath: true) {
        case .success(let pid): pids.append(pid)
        case .failure(let f): throw PeerError("cannot start \(argv[0]): errno \(f.errno)")
        }
    }

    private func waitFor(seconds: Int = 10, _ condition: () -> Bool) async throws {
        for _ in 0..<(seconds * 50) {
            if condition() { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        stop()
        throw PeerError("the Modbus peer did not start")
    }

    @discardableResult
    public func send(_ request: JSONValue) throws -> JSONValue {
        do { return try ControlClient.request(request, socketPath: control) } catch { throw PeerError("peer control: \(error)") }
    }

    public func registers(unit: Int, _ table: String, _ address: Int, count: Int) throws -> [Int64] {
        try send(["cmd": "get", "unit": .int(Int64(unit)), "table": .string(table), "address": .int(Int64(address)), "count": .int(Int64(count))])["values"]?
            .arrayValue?.compactMap(\.intValue) ?? []
    }

    public func set(unit: Int, _ table: String, _ address: Int, _ values: [Int64]) throws {
        try send(["cmd": "set", "unit": .int(Int64(unit)), "table": .string(table), "address": .int(Int64(address)), "values": .array(values.map { .int($0) })])
    }

    public func silence(unit: Int, _ on: Bool = true) throws { try send(["cmd": "silent", "unit": .int(Int64(unit)), "on": .bool(on)]) }

    public struct Request: Equatable, Sendable { public var time: Double; public var unit: Int; public var function: Int; public var address: Int; public var count: Int }
    public struct Frame: Equatable, Sendable { public var time: Double; public var received: Bool; public var unit: Int; public var function: Int }

    public func log() throws -> (requests: [Request], frames: [Frame]) {
        let l = try send(["cmd": "log"])
        let requests = (l["requests"]?.arrayValue ?? []).compactMap { r -> Request? in
            guard let a = r.arrayValue, a.count == 5 else { return nil }
            return Request(time: a[0].double, unit: Int(a[1].intValue ?? 0), function: Int(a[2].intValue ?? 0),
                           address: Int(a[3].intValue ?? 0), count: Int(a[4].intValue ?? 0))
        }
        let frames = (l["frames"]?.arrayValue ?? []).compactMap { f -> Frame? in
            guard let a = f.arrayValue, a.count == 5 else { return nil }
            return Frame(time: a[0].double, received: a[1].stringValue == "rx", unit: Int(a[2].intValue ?? 0), function: Int(a[3].intValue ?? 0))
        }
        return (requests, frames)
    }

    public func resetLog() throws { try send(["cmd": "reset"]) }

    public func stop() {
        for pid in pids.reversed() {
            kill(pid, SIGTERM)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
        pids = []
        try? FileManager.default.removeItem(atPath: dir)
    }

    deinit { stop() }
}

extension JSONValue {
    var double: Double {
        switch self {
        case .int(let i): Double(i)
        case .double(let d): d
        default: .nan
        }
    }
}
