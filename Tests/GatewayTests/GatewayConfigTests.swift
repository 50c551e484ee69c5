import FrameCodecs
import GatewayConfig
import Testing
import SerialAdapter
import Spool
import UDPAdapter
import Uplink

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

@Suite("fieldgated configuration")
struct GatewayConfigTests {
    private func load(_ text: String) -> Result<GatewaySettings, ConfigError> {
        let path = FileManager.default.temporaryDirectory.path + "/fieldgate-config-\(UInt64.random(in: 1...UInt64.max)).toml"
        FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
        defer { try? FileManager.default.removeItem(atPath: path) }
        do { return .success(try GatewaySettings.load(path: path)) } catch { return .failure(error) }
    }

    private let valid = """
        [hub]
        host = "hub.example.net"
        ca_file = "/etc/fieldgate/ca.pem"
        [gateway]
        device_id = "gw"
        key = "a2V5"
        [spool]
        sync = "interval-100"
        cap_mb = 32
        [udp]
        port = 47000
        [[leaf]]
        device_id = "m1"
        key = "a2V5"
        adapter = "udp"
        allowed_sources = ["10.0.0.5"]
        """

    @Test func validFileMapsOntoEachModule() throws {
        let s = try load(valid).get()
        #expect(s.uplink.hostName == "hub.example.net" && s.uplink.port == 5671)
        #expect(s.spool.sync == .interval(milliseconds: 100) && s.spool.capBytes == 32 << 20)
        #expect(s.leaves.map(\.deviceID) == ["m1"] && s.gatewayLeaf.deviceID == "gw")
        #expect(s.udp?.port == 47000 && s.udp?.leaves.first?.allowedSources == ["10.0.0.5"])
    }

    @Test func serialPorts() throws {
        let text = valid + """

            [[leaf]]
            device_id = "scale"
            key = "a2V5"
            adapter = "serial"
            [[serial_port]]
            path = "/dev/ttyUSB0"
            baud = 19200
            parity = "even"
            framing = "markers:02,03,10"
            format = "regex:W:(?<weight>[0-9.]+)"
            leaf = "scale"
            reply_pattern = "OK.*"
            """
        let s = try load(text).get()
        let port = try #require(s.serialPorts.first)
        #expect(port.baud == 19200 && port.parity == .even && port.framing == .markers(start: 2, end: 3, escape: 0x10) && port.leaf == "scale")
        guard case .failure(let e) = load(text.replacing("leaf = \"scale\"", with: "leaves = [\"scale\"]")) else { Issue.record("accepted"); return }
        #expect(e.description.contains("set id_field"))
        guard case .failure(let e2) = load(text.replacing("framing = \"markers:02,03,10\"", with: "framing = \"markers:zz\"")) else { Issue.record("accepted"); return }
        #expect(e2.description.contains("markers:<start>,<end>"))
    }

    @Test func errorsNameTheFileLineAndFix() {
        let cases: [(String, String)] = [
            ("[hub\nhost = 1\n", ":1:"),
            ("[hub]\nhost = \"h\"\n[gateway]\n", "gateway.device_id: required, add it"),
            (valid.replacing("interval-100", with: "sometimes"), "spool.sync sometimes: use always or interval-<milliseconds>"),
            (valid.replacing("adapter = \"udp\"", with: "adapter = \"canbus\""), "adapter canbus is not available"),
            (valid.replacing("device_id = \"m1\"", with: "device_id = \"gw\""), "device_id is used twice"),
        ]
        for (text, expected) in cases {
            guard case .failure(let e) = load(text) else { Issue.record("accepted: \(expected)"); continue }
            #expect(e.description.contains(expected), "\(e.description)")
            #expect(e.description.hasPrefix(FileManager.default.temporaryDirectory.path), "starts with the file")
        }
    }
}
