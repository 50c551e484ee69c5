import ArgumentParser
import FieldgateCore

#if canImport(Glibc)
import Glibc
#endif

/// A development aid: a UDP leaf that sends readings to the gateway and answers its commands (C2D, methods,
/// desired properties), printing what it gets. The demo uses it.
struct SimulateUDPLeaf: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "simulate-udp-leaf", abstract: "Simulate a UDP leaf device (development aid).")

    @Option(help: "The leaf's device id.") var device: String
    @Option(help: "The gateway's UDP port.") var port: Int
    @Option(help: "The gateway's address.") var host = "127.0.0.1"
    @Option(help: "Seconds between readings.") var interval = 1.0
    @Option(help: "Stop after this many seconds (0 = run until killed).") var duration = 0.0

    func run() async throws {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var to = sockaddr_in()
        to.sin_family = sa_family_t(AF_INET)
        to.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, host, &to.sin_addr)
        func send(_ v: JSONValue) {
            let bytes = v.bytes
            _ = withUnsafePointer(to: &to) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, bytes, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
        let start = ContinuousClock.now
        var nextReading = ContinuousClock.now
        var buffer = [UInt8](repeating: 0, count: 65536)
        var setpoint = 21.0
        while duration == 0 || ContinuousClock.now - start < .milliseconds(Int(duration * 1000)) {
            if ContinuousClock.now >= nextReading {
                let t = ((20 + Double.random(in: 0..<15)) * 10).rounded() / 10
                send(["device": .string(device), "ts": .int(WallClock.nowMilliseconds()),
                      "values": ["temperature": .double(t), "setpoint": .double(setpoint)], "props": ["temperatureAlert": .string(t > 30 ? "true" : "false")]])
                say("\(device): sent temperature \(t)")
                nextReading = nextReading + .milliseconds(Int(interval * 1000))
            }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 100) > 0 else { continue }
            let n = recv(fd, &buffer, buffer.count, 0)
            guard n > 0, let command = JSONValue.parse(Array(buffer[0..<n])), let id = command["id"] else { continue }
            var payload: JSONValue = .null
            switch command["type"]?.stringValue {
            case "c2d":
                // The id (the message-id), body, properties and the service's system properties, as they came.
                var shown = command.objectValue ?? [:]
                shown["type"] = nil
                say("\(device): C2D \(JSONValue.object(shown).serialized)")
            case "method":
                let name = command["name"]?.stringValue ?? ""
                say("\(device): method \(name) \(command["payload"]?.serialized ?? "null")")
                if name == "write", case .double(let v)? = command["payload"]?["setpoint"] { setpoint = v }
                if name == "write", case .int(let v)? = command["payload"]?["setpoint"] { setpoint = Double(v) }
                payload = ["setpoint": .double(setpoint)]
            case "desired": say("\(device): desired v\(command["version"]?.intValue ?? 0) \(command["desired"]?.serialized ?? "")")
            default: continue
            }
            send(["device": .string(device), "type": "reply", "id": id, "status": 200, "payload": payload])
        }
        close(fd)
    }

    private func say(_ s: String) {
        print(s)
        fflush(nil)  // all streams: the demo reads this through a pipe
    }
}
