import HubTestSupport
import FieldgateCore
import HubDeviceClient
import HubEmulator
import IoTHub
import ProtonAMQP
import Testing
import Dispatch

#if canImport(Glibc)
import Glibc
#endif

/// Runs the built `fieldgate-hub` binary (next to the test bundle) and returns (exit status, output). `system()`
/// blocks, so it runs on a dispatch thread: the hub it talks to needs the cooperative pool meanwhile.
func runCLI(_ arguments: String) async -> (Int32, String) {
    await withCheckedContinuation { cont in
        DispatchQueue(label: "fieldgate.tests.cli").async { cont.resume(returning: runCLIBlocking(arguments)) }
    }
}

private func runCLIBlocking(_ arguments: String) -> (Int32, String) {
    let bin = CommandLine.arguments[0].split(separator: "/").dropLast().joined(separator: "/")
    let dir = bin.hasPrefix("/") ? bin : "/" + bin
    let candidates = [dir + "/fieldgate-hub", dir.split(separator: "/").dropLast().joined(separator: "/") + "/fieldgate-hub"]
    let exe = candidates.map { $0.hasPrefix("/") ? $0 : "/" + $0 }.first { access($0, X_OK) == 0 } ?? "fieldgate-hub"
    let out = "/tmp/fieldgate-cli-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).out"
    let status = system("\(exe) \(arguments) > \(out) 2>&1")
    let text = ChildOutput.read(out)
    unlink(out)
    return (status >> 8, text)
}

enum ChildOutput {
    static func read(_ path: String) -> String {
        guard let f = fopen(path, "r") else { return "" }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&buf, 1, buf.count, f)
            if n <= 0 { break }
            bytes += buf[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

@Suite("fieldgate-hub CLI", .serialized, .timeLimit(.minutes(2)))
struct CLITests {
    @Test("--help works for every command")
    func help() async {
        for command in ["", "serve", "certs", "device", "device create", "device list", "device show", "device disable",
                        "device enable", "device delete", "c2d", "c2d send", "c2d purge", "feedback", "monitor-events",
                        "method", "method invoke", "twin", "twin show", "twin patch", "fault", "fault throttle",
                        "fault expire-tokens", "fault drop-connections", "fault refuse-connections", "simulate-device",
                        "dps", "dps group", "dps enrollment", "dps show", "dps delete", "ca", "ca add", "certs server", "certs device"] {
            let (status, out) = await runCLI("\(command) --help")
            #expect(status == 0, "\(command) --help")
            #expect(out.contains("USAGE"), "\(command) --help")
        }
    }

    @Test("errors are one line and a non-zero exit; seed 000 through the CLI: c2d send --ack full, then feedback")
    func errorsAndSeed000() async throws {
        try await withHub { hub in
            let url = "--url http://127.0.0.1:\(hub.running.httpPort)"
            let (missing, missingOut) = await runCLI("device show ghost \(url)")
            #expect(missing != 0)
            #expect(missingOut.split(separator: "\n").count == 1)
            #expect(missingOut.contains("404"))
            let (badProp, badPropOut) = await runCLI("c2d send dev1 x --property novalue \(url)")
            #expect(badProp != 0 && badPropOut.contains("key=value"))

            let (created, cs) = await runCLI("device create myFirstNodeDevice \(url)")
            #expect(created == 0)
            #expect(cs.hasPrefix("HostName=localhost;DeviceId=myFirstNodeDevice;SharedAccessKey="))
            let key = try ConnectionString(parsing: cs).sharedAccessKey
            // Issue 18.11: disable and enable say what changed and never print the device's keys.
            for verb in ["disable", "enable"] {
                let (status, out) = await runCLI("device \(verb) myFirstNodeDevice \(url)")
                #expect(status == 0)
                #expect(out.split(separator: "\n") == ["myFirstNodeDevice: \(verb)d"], "\(out)")
                #expect(!out.contains(key), "a key was printed")
            }
            let c = try await hub.connect()
            #expect(try await c.authenticate(deviceId: "myFirstNodeDevice", key: key).status == 200)
            try await c.attachCloudToDevice(deviceId: "myFirstNodeDevice")
            let (sent, _) = await runCLI("c2d send myFirstNodeDevice 'Cloud to device message.' --message-id 'My Message ID' --ack full \(url)")
            #expect(sent == 0)
            let m = try await c2dEvent(c)
            c.settle(m, .accepted)
            let (fb, fbOut) = await runCLI("feedback --wait 5 \(url)")
            #expect(fb == 0)
            let records = JSONValue.parse(fbOut)
            guard case .array(let list)? = records else { Issue.record("feedback is not a JSON array: \(fbOut)"); return }
            #expect(list.count == 1)
            #expect(list.first?["originalMessageId"] == "My Message ID")
            #expect(list.first?["statusCode"] == "Success")
            c.close()
        }
    }
}
