import FieldgateCore
import ModbusIO
import Uplink

/// The cloud's side of a Modbus leaf (README "Modbus adapter", From the cloud):
/// - C2D with a JSON body `{"setpoint": 21.5, "pump": true}` (or `{"write": {…}, "readback": true}`) writes those
///   points: complete once written, reject for what can never work (unknown or read-only point, out of range, a
///   value of the wrong type, the device's illegal address/value exception), abandon for what may work later.
/// - Methods: `write` (the same payload; answers the values read back), `read` (`{"points": ["a", "b"]}` or
///   nothing for all; answers live values), `ping` (one small read; answers the round trip).
///   400 bad payload, 502 the device answered with an exception, 503 the bus is offline, 504 no answer in time.
/// - Desired properties: `poll_ms`, `full_report_seconds`, `points.<name>.enabled`, `points.<name>.deadband` or
///   `deadband_percent`; the applied settings are reported under `modbus`.
extension ModbusBus {
    struct BadRequest: Error { var message: String }

    /// A write request for `device`, every point checked and encoded before anything is sent.
    func writeRequest(_ payload: JSONValue, device: ModbusDeviceConfiguration) -> Result<(points: [(point: ModbusPoint, registers: [UInt16])], readback: Bool), BadRequest> {
        guard var object = payload.objectValue else { return .failure(BadRequest(message: "the payload must be a JSON object of point names and values")) }
        var readback = false
        if let r = object["readback"] {
            guard case .bool(let b) = r else { return .failure(BadRequest(message: "readback must be true or false")) }
            readback = b
            object["readback"] = nil
        }
        if let nested = object["points"] ?? object["write"] {
            guard let n = nested.objectValue, object.count == 1 else { return .failure(BadRequest(message: "use {\"points\": {name: value}} or {name: value}, not both")) }
            object = n
        }
        guard !object.isEmpty else { return .failure(BadRequest(message: "no points to write")) }
        var out: [(ModbusPoint, [UInt16])] = []
        for (name, value) in object.sorted(by: { $0.key < $1.key }) {
            guard let point = device.profile.points.first(where: { $0.name == name }) else {
                return .failure(BadRequest(message: "\(device.leaf) has no point \(name)"))
            }
            do throws(CodecError) { out.append((point, try point.registers(for: value))) } catch {
                return .failure(BadRequest(message: error.description))
            }
        }
        return .success((out, readback))
    }

    public func cloudToDevice(_ message: C2DMessage) async -> C2DOutcome {
        guard let (index, device) = device(message.deviceID) else { return .reject("\(message.deviceID) is not on bus \(configuration.name)") }
        guard let payload = JSONValue.parse(message.body) else { return .reject("the body is not JSON; send {\"point\": value}") }
        switch writeRequest(payload, device: device) {
        case .failure(let bad): return .reject(bad.message)
        case .success(let request):
            let deadline = min(message.expiryMilliseconds ?? .max, WallClock.nowMilliseconds() + 30_000)
            switch await submit(.write(device: index, request.points, readback: request.readback), deadline: deadline) {
            case .success: return .complete
            case .failure(let e):
                if case .exception(let code) = e.kind, code == 1 || code == 2 || code == 3 { return .reject(e.message) }
                return e.kind == .invalidRequest ? .reject(e.message) : .abandon(e.message)
            }
        }
    }

    public func invoke(_ call: MethodCall) async -> MethodResponse? {
        guard let (index, device) = device(call.deviceID) else { return nil }
        // Answer before the uplink's own deadline, so the 504 says what happened.
        let deadline = call.deadlineMilliseconds - 200
        switch call.name {
        case "write":
            switch writeRequest(call.payload, device: device) {
            case .failure(let bad): return .error(400, bad.message)
            case .success(let request):
                let result = await submit(.write(device: index, request.points, readback: request.readback), deadline: deadline)
                return response(result) { readBack in
                    var answer: [String: JSONValue] = ["written": .object(Dictionary(uniqueKeysWithValues: request.points.map { ($0.point.name, JSONValue.bool(true)) }))]
                    if request.readback { answer["readback"] = readBack }
                    return .object(answer)
                }
            }
        case "read":
            let names: [String]
            switch call.payload {
            case .null: names = device.profile.points.map(\.name)
            case .object(let o) where o["points"]?.arrayValue?.allSatisfy({ $0.stringValue != nil }) == true:
                names = o["points"]!.arrayValue!.map { $0.stringValue! }
            default: return .error(400, "read takes {\"points\": [\"name\", …]} or no payload (every point)")
            }
            var indices: [Int] = []
            for name in names {
                guard let i = device.profile.points.firstIndex(where: { $0.name == name }) else { return .error(400, "\(device.leaf) has no point \(name)") }
                indices.append(i)
            }
            return response(await submit(.read(device: index, points: indices), deadline: deadline)) { ["points": $0] }
        case "ping":
            guard let lowest = device.profile.points.indices.min(by: { device.profile.points[$0].address < device.profile.points[$1].address }) else {
                return .error(400, "\(device.leaf) has no points to read")
            }
            let started = MonotonicClock.milliseconds()
            let result = await submit(.read(device: index, points: [lowest]), deadline: deadline)
            let elapsed = MonotonicClock.milliseconds() - started
            return response(result) { _ in ["online": true, "unit": .int(Int64(device.unit)), "roundTripMs": .int(elapsed)] }
        default:
            return nil
        }
    }

    private func response(_ result: Result<JSONValue, ModbusError>, _ body: (JSONValue) -> JSONValue) -> MethodResponse {
        switch result {
        case .success(let v): return MethodResponse(status: 200, payload: body(v))
        case .failure(let e):
            switch e.kind {
            case .timeout: return .error(504, e.message)
            case .connection: return .error(503, e.message)
            case .invalidRequest: return .error(400, e.message)
            case .exception(let code):
                return MethodResponse(status: 502, payload: ["error": .string(e.message), "exception": .int(Int64(code)),
                                                             "exceptionName": .string(ModbusError.exceptionName(code))])
            case .badResponse: return .error(502, e.message)
            }
        }
    }

    public func desiredProperties(_ desired: JSONValue, version: Int64, deviceID: String) async -> JSONValue? {
        guard let (index, device) = device(deviceID) else { return nil }
        switch Self.overrides(from: desired, device: device) {
        case .success(let (o, asked)):
            var applied = asked
            // What is in effect, not only what was asked: settings the desired document dropped fall back to the
            // configuration, and points it no longer mentions are cleared from the reported twin (null).
            applied["poll_ms"] = .int(o.pollMilliseconds ?? device.pollMilliseconds)
            applied["full_report_seconds"] = .int((o.fullReportMilliseconds ?? device.fullReportMilliseconds) / 1000)
            var points = applied["points"]?.objectValue ?? [:]
            for name in setOverrides(o, device: index) where points[name] == nil { points[name] = .null }
            applied["points"] = points.isEmpty ? nil : .object(points)
            return ["modbus": ["desiredVersion": .int(version), "status": "applied", "applied": .object(applied)]]
        case .failure(let bad):
            return ["modbus": ["desiredVersion": .int(version), "status": .string("rejected: \(bad.message)")]]
        }
    }

    /// The desired document's Modbus settings, checked as a whole (one bad value rejects the version).
    static func overrides(from desired: JSONValue, device: ModbusDeviceConfiguration) -> Result<(DeviceOverrides, [String: JSONValue]), BadRequest> {
        var o = DeviceOverrides()
        var applied: [String: JSONValue] = [:]
        if let p = desired["poll_ms"] {
            guard let ms = p.intValue, (100...86_400_000).contains(ms) else { return .failure(BadRequest(message: "poll_ms must be 100 to 86400000")) }
            o.pollMilliseconds = ms
            applied["poll_ms"] = .int(ms)
        }
        if let f = desired["full_report_seconds"] {
            guard let s = f.intValue, (1...86_400).contains(s) else { return .failure(BadRequest(message: "full_report_seconds must be 1 to 86400")) }
            o.fullReportMilliseconds = s * 1000
            applied["full_report_seconds"] = .int(s)
        }
        if let points = desired["points"] {
            guard let table = points.objectValue else { return .failure(BadRequest(message: "points must be an object of point names")) }
            var appliedPoints: [String: JSONValue] = [:]
            for (name, settings) in table {
                guard device.profile.points.contains(where: { $0.name == name }) else { return .failure(BadRequest(message: "no point \(name)")) }
                guard case .object(let s) = settings else { return .failure(BadRequest(message: "points.\(name) must be an object")) }
                var a: [String: JSONValue] = [:]
                for (key, value) in s {
                    switch (key, value) {
                    case ("enabled", .bool(let on)):
                        if !on { o.disabledPoints.insert(name) }
                        a["enabled"] = .bool(on)
                    case ("deadband", _) where (value.number ?? -1) >= 0:
                        o.deadbands[name] = .absolute(value.number!)
                        a["deadband"] = value
                    case ("deadband_percent", _) where (value.number ?? -1) >= 0:
                        o.deadbands[name] = .percent(value.number!)
                        a["deadband_percent"] = value
                    default:
                        return .failure(BadRequest(message: "points.\(name).\(key): use enabled (bool), deadband or deadband_percent (number ≥ 0)"))
                    }
                }
                appliedPoints[name] = .object(a)
            }
            if !appliedPoints.isEmpty { applied["points"] = .object(appliedPoints) }
        }
        return .success((o, applied))
    }
}
