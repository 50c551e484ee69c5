import FrameCodecs
import GatewayConfig
import Testing
import SerialAdapter
import Spool
import UDPAdapter
import Uplink

#if canImport(Glibc)
import Glibc
#endif

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A configuration directory in /tmp: fieldgate.toml, secrets.toml (0600) and devices.d/.
struct ConfigDirectory {
    let path = FileManager.default.temporaryDirectory.path + "/fieldgate-config-\(UInt64.random(in: 1...UInt64.max))"
    var main: String { path + "/fieldgate.toml" }

    init(main text: String, secrets: String = ConfigDirectory.secrets, devices: [String: String] = [:]) {
        try? FileManager.default.createDirectory(atPath: path + "/devices.d", withIntermediateDirectories: true)
        write("fieldgate.toml", text)
        write("secrets.toml", secrets, mode: 0o600)
        for (name, text) in devices { write("devices.d/" + name, text) }
    }

    func write(_ name: String, _ text: String, mode: Int = 0o644) {
        FileManager.default.createFile(atPath: path + "/" + name, contents: Data(text.utf8), attributes: [.posixPermissions: mode])
    }

    func load() -> Result<GatewaySettings, ConfigError> {
        defer { try? FileManager.default.removeItem(atPath: path) }
        do { return .success(try GatewaySettings.load(path: main, credentialsDirectory: nil)) } catch { return .failure(error) }
    }

    static let secrets = """
        [keys]
        gw = "a2V5"
        m1 = "a2V5"
        m2 = { primary = "cHJp", secondary = "c2Vj" }
        scale = "a2V5"
        [policies]
        device = "cG9s"
        [hmac]
        m1 = "shared"
        """
}

@Suite("fieldgated configuration")
struct GatewayConfigTests {
    private func load(_ text: String, devices: [String: String] = [:]) -> Result<GatewaySettings, ConfigError> {
        ConfigDirectory(main: text, devices: devices).load()
    }

    private let valid = """
        [hub]
        host = "hub.example.net"
        ca_file = "/etc/fieldgate/ca.pem"
        [gateway]
        device_id = "gw"
        [spool]
        sync = "interval-100"
        cap_mb = 32
        [udp]
        port = 47000
        [[leaf]]
        device_id = "m1"
        adapter = "udp"
        allowed_sources = ["10.0.0.5"]
        hmac = true
        """

    @Test func validFileMapsOntoEachModule() throws {
        let s = try load(valid, devices: ["line-a.toml": """
            [[leaf]]
            device_id = "m2"
            adapter = "udp"
            [[leaf]]
            device_id = "m3"
            adapter = "udp"
            credential = "policy:device:hub"
            """]).get()
        #expect(s.uplink.hostName == "hub.example.net" && s.uplink.port == 5671)
        #expect(s.spool.sync == .interval(milliseconds: 100) && s.spool.capBytes == 32 << 20)
        #expect(s.leaves.map(\.deviceID) == ["m1", "m2", "m3"] && s.gatewayLeaf.deviceID == "gw")
        #expect(s.gatewayLeaf.credential == .symmetricKey(primary: "a2V5", secondary: nil))
        #expect(s.leaves[1].credential == .symmetricKey(primary: "cHJp", secondary: "c2Vj"))
        #expect(s.leaves[2].credential == .sharedAccessPolicy(name: "device", key: "cG9s", scope: .hub))
        #expect(s.udp?.port == 47000 && s.udp?.leaves.first?.allowedSources == ["10.0.0.5"])
        #expect(s.udp?.leaves.first?.hmacKey == Array("shared".utf8))
        #expect(s.files.count == 2 && s.files[1].hasSuffix("devices.d/line-a.toml"))
        let mapped = try load(valid, devices: ["m.toml": "[[leaf]]\ndevice_id = \"m2\"\nadapter = \"udp\"\nmapped_source = \"10.0.0.7\"\nformat = \"kv\"\nfield_map = { T = \"temperature\" }\n"]).get()
        #expect(mapped.udp?.leaves.last?.format == .keyValue(fieldMap: ["T": "temperature"], onlyMapped: true, idField: nil))
    }

    @Test func serialPorts() throws {
        let text = valid + """

            [[leaf]]
            device_id = "scale"
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

    /// Each error class: the message names the file, the line and the fix.
    @Test func errorsNameTheFileLineAndFix() {
        let cases: [(String, [String: String], String)] = [
            ("[hub\nhost = 1\n", [:], "fieldgate.toml:1: "),
            ("[hub]\nhost = \"h\"\n[gateway]\n", [:], "fieldgate.toml:3: [gateway] needs device_id (a string); add it"),
            (valid.replacing("cap_mb = 32", with: "cap_mb = \"32\""), [:], "fieldgate.toml:8: spool.cap_mb must be an integer"),
            (valid.replacing("cap_mb = 32", with: "cap_mbytes = 32"), [:], "fieldgate.toml:8: unknown key cap_mbytes in [spool]. Known keys here: cap_mb,"),
            (valid.replacing("[gateway]\n", with: "[gateway]\nkey = \"secret\"\n"), [:], "fieldgate.toml:5: unknown key key in [gateway]. Keys never go in the configuration"),
            (valid.replacing("interval-100", with: "sometimes"), [:], "fieldgate.toml:7: spool.sync sometimes: use always or interval-<milliseconds>"),
            (valid.replacing("adapter = \"udp\"", with: "adapter = \"canbus\""), [:], "fieldgate.toml:13: leaf m1: adapter canbus is not available"),
            (valid, ["b.toml": "[[leaf]]\ndevice_id = \"m2\"\nadapter = \"udp\"\n\n[[leaf]]\ndevice_id = \"m1\"\nadapter = \"udp\"\n"], "devices.d/b.toml:6: device_id m1 is used twice (first at "),
            (valid, ["b.toml": "[[leaf]]\ndevice_id = \"bad id\"\nadapter = \"udp\"\n"], "devices.d/b.toml:2: device_id \"bad id\" is not a valid IoT Hub device id"),
            (valid, ["b.toml": "[[leaf]]\ndevice_id = \"nokey\"\nadapter = \"udp\"\n"], "devices.d/b.toml:2: leaf nokey: "),
            (valid, ["b.toml": "[[leaf]]\ndevice_id = \"m2\"\nadapter = \"udp\"\ncredential = \"policy:service\"\n"], "devices.d/b.toml:4: leaf m2: "),
            (valid, ["b.toml": "[leaf]\ndevice_id = \"m2\"\n"], "devices.d/b.toml:1: leaf must be an array of tables"),
            (valid, ["b.toml": "[[leaf]]\ndevice_id = \"m2\"\nadapter = \"udp\"\nformat = \"csv:a,b\"\n"], "devices.d/b.toml:4: leaf m2: format applies to datagrams from a mapped_source"),
        ]
        for (text, devices, expected) in cases {
            guard case .failure(let e) = load(text, devices: devices) else { Issue.record("accepted: \(expected)"); continue }
            #expect(e.description.contains(expected), "\(e.description)")
            #expect(e.problems.allSatisfy { $0.file.hasPrefix(FileManager.default.temporaryDirectory.path) }, "names the file")
        }
    }

    @Test func everyProblemIsReportedAtOnce() {
        let text = valid.replacing("cap_mb = 32", with: "cap_mb = true").replacing("port = 47000", with: "port = 47000\nbacklog = 3")
        guard case .failure(let e) = load(text) else { Issue.record("accepted"); return }
        #expect(e.problems.count == 2, "\(e.description)")
    }

    @Test func secretsMustBePrivate() {
        let dir = ConfigDirectory(main: valid)
        chmod(dir.path + "/secrets.toml", 0o644)
        guard case .failure(let e) = dir.load() else { Issue.record("a world-readable secrets file was accepted"); return }
        #expect(e.description.contains("readable by others: run chmod 600"), "\(e.description)")
    }

    @Test func systemdCredentialsWin() throws {
        let dir = ConfigDirectory(main: valid, secrets: "[keys]\n")
        let credentials = dir.path + "/credentials"
        try FileManager.default.createDirectory(atPath: credentials, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: credentials + "/secrets.toml", contents: Data(ConfigDirectory.secrets.utf8))
        defer { try? FileManager.default.removeItem(atPath: dir.path) }
        let s = try GatewaySettings.load(path: dir.main, credentialsDirectory: credentials)
        #expect(s.gatewayLeaf.credential == .symmetricKey(primary: "a2V5", secondary: nil))
    }
}

@Suite("the shipped configuration reference")
struct ShippedConfigurationTests {
    /// etc/fieldgate in this repository.
    static let reference: String = {
        var parts = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)  // Tests/GatewayTests/GatewayConfigTests.swift
        return parts.joined(separator: "/") + "/etc/fieldgate"
    }()

    @Test("etc/fieldgate/fieldgate.toml, the example devices and the example secrets validate together")
    func referenceValidates() throws {
        let read = { (name: String) in try String(contentsOfFile: Self.reference + "/" + name, encoding: .utf8) }
        let dir = ConfigDirectory(main: try read("fieldgate.toml"), secrets: try read("secrets.toml.example"),
                                  devices: ["example-udp.toml": try read("devices.d/example-udp.toml.example")])
        // The reference leaves UDP commented out; the example leaves need it.
        dir.write("fieldgate.toml", try read("fieldgate.toml") + "\n[udp]\nport = 47000\n")
        let s = try dir.load().get()
        #expect(s.leaves.map(\.deviceID) == ["meter-1", "meter-2"])
        #expect(s.leaves[0].credential == .symmetricKey(primary: "base64-primary-key", secondary: "base64-secondary-key"))
        #expect(s.leaves[1].credential == .sharedAccessPolicy(name: "device", key: "base64-policy-key", scope: .hub))
        #expect(s.controlSocket == "/run/fieldgate/control.sock" && s.spool.directory == "/var/lib/fieldgate/spool")
    }
}
