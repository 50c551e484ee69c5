import FieldgateCore
import FrameCodecs
import GatewayConfig
import HubTunnel
import ModbusAdapter
import ModbusIO
import Provisioning
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

    init(main text: String, secrets: String = ConfigDirectory.secrets, devices: [String: String] = [:], profiles: [String: String] = [:]) {
        try? FileManager.default.createDirectory(atPath: path + "/devices.d", withIntermediateDirectories: true)
        try? FileManager.default.createDirectory(atPath: path + "/profiles.d", withIntermediateDirectories: true)
        write("fieldgate.toml", text)
        write("secrets.toml", secrets, mode: 0o600)
        for (name, text) in devices { write("devices.d/" + name, text) }
        for (name, text) in profiles { write("profiles.d/" + name, text) }
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
            cloud = []
            [[leaf]]
            device_id = "m4"
            adapter = "udp"
            credential = "policy:device:hub"
            cloud = ["methods", "c2d"]
            """]).get()
        #expect(s.uplink.hostName == "hub.example.net" && s.uplink.port == 5671)
        #expect(s.spool.sync == .interval(milliseconds: 100) && s.spool.capBytes == 32 << 20)
        #expect(s.leaves.map(\.deviceID) == ["m1", "m2", "m3", "m4"] && s.gatewayLeaf.deviceID == "gw")
        #expect(s.leaves.map(\.capabilities) == [.all, .all, [], [.methods, .cloudToDevice]], "cloud: telemetry only, or a choice")
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
            (valid.replacing("[gateway]\n", with: "method_deadline_seconds = 45\n[gateway]\n"), [:], "fieldgate.toml:4: hub.method_deadline_seconds must be 1 to 29"),
            (valid.replacing("adapter = \"udp\"", with: "adapter = \"canbus\""), [:], "fieldgate.toml:13: leaf m1: adapter canbus is not available"),
            (valid, ["b.toml": "[[leaf]]\ndevice_id = \"m2\"\nadapter = \"udp\"\n\n[[leaf]]\ndevice_id = \"m1\"\nadapter = \"udp\"\n"], "devices.d/b.toml:6: device_id m1 is used twice (first at "),
            (valid, ["b.toml": "[[leaf]]\ndevice_id = \"bad id\"\nadapter = \"udp\"\n"], "devices.d/b.toml:2: device_id \"bad id\" is not a valid IoT Hub device id"),
            (valid, ["b.toml": "[[leaf]]\ndevice_id = \"nokey\"\nadapter = \"udp\"\n"], "devices.d/b.toml:2: leaf nokey: "),
            (valid, ["b.toml": "[[leaf]]\ndevice_id = \"m2\"\nadapter = \"udp\"\ncredential = \"policy:service\"\n"], "devices.d/b.toml:4: leaf m2: "),
            (valid, ["b.toml": "[leaf]\ndevice_id = \"m2\"\n"], "devices.d/b.toml:1: leaf must be an array of tables"),
            (valid, ["b.toml": "[[leaf]]\ndevice_id = \"m2\"\nadapter = \"udp\"\ncloud = [\"twins\"]\n"], "devices.d/b.toml:4: leaf m2: cloud lists \"twins\"; use any of"),
            (valid, ["b.toml": "[[leaf]]\ndevice_id = \"m2\"\nadapter = \"udp\"\nformat = \"csv:a,b\"\n"], "devices.d/b.toml:4: leaf m2: format applies to datagrams from a mapped_source"),
        ]
        for (text, devices, expected) in cases {
            guard case .failure(let e) = load(text, devices: devices) else { Issue.record("accepted: \(expected)"); continue }
            #expect(e.description.contains(expected), "\(e.description)")
            #expect(e.problems.allSatisfy { $0.file.hasPrefix(FileManager.default.temporaryDirectory.path) }, "names the file")
        }
    }

    /// A number key takes `20` as well as `20.0` (the reference documents `attaches_per_second = 20`).
    /// Issue 20: transport, fallback hosts, the WebSocket endpoint and the proxy, its password from the secrets.
    @Test func reachOptions() throws {
        let main = """
            [hub]
            host = "a.azure-devices.net"
            transport = "amqps-websocket"
            fallback_hosts = ["b.azure-devices.net"]
            fallback_after_failures = 4
            proxy = "http://gw01@proxy.site:3128"
            websocket_port = 8443
            websocket_path = "/ws"
            websocket_ping_seconds = 0
            [gateway]
            device_id = "gw"
            """
        let dir = ConfigDirectory(main: main, secrets: ConfigDirectory.secrets + "\n[proxy]\npassword = \"pw\"\n")
        let u = try dir.load().get().uplink
        #expect(u.route == .webSocket && u.fallbackHosts == ["b.azure-devices.net"] && u.failuresBeforeNextRoute == 4)
        #expect(u.webSocket.port == 8443 && u.webSocket.path == "/ws" && u.webSocket.pingIntervalMilliseconds == nil)
        #expect(u.webSocket.proxy == .url("http://proxy.site:3128", user: "gw01", password: "pw"))
        // Defaults: auto, the environment's proxy, 443.
        let plain = try load("[hub]\nhost = \"h\"\n[gateway]\ndevice_id = \"gw\"\n").get().uplink
        #expect(plain.route == .auto && plain.webSocket.proxy == .environment && plain.webSocket.port == 443)
        #expect(try load("[hub]\nhost = \"h\"\nproxy = \"none\"\n[gateway]\ndevice_id = \"gw\"\n").get().uplink.webSocket.proxy == .direct)
    }

    @Test func reachMistakesAreExplained() {
        func problems(_ hub: String) -> String {
            guard case .failure(let e) = load("[hub]\nhost = \"h\"\n\(hub)\n[gateway]\ndevice_id = \"gw\"\n") else { return "" }
            return "\(e)"
        }
        #expect(problems(#"transport = "websocket""#).contains("amqps-websocket"))
        #expect(problems(#"proxy = "http://u:secret@p:3128""#).contains("must not hold the password"))
        #expect(!problems(#"proxy = "http://u:secret@p:3128""#).contains("secret@"), "the password is not echoed")
        #expect(problems(#"proxy = "socks5://p:1080""#).contains("hub.proxy must be"))
        #expect(problems(#"proxy = "http://u@p:3128""#).contains("[proxy] password"))
        #expect(problems(#"fallback_hosts = ["https://b:443"]"#).contains("host name"))
        #expect(problems("insecure_plain_amqp = true\ntransport = \"auto\"").contains("transport = \"amqps\""))
        #expect(problems("insecure_plain_amqp = true") == "", "plain AMQP alone means AMQPS's port, without TLS")
        #expect(problems(#"websocket_path = "ws""#).contains("start with /"))
    }

    /// Issue 24: `[provisioning]` replaces `[hub] host`; identities register by key, group key or certificate.
    @Test func provisioningSection() throws {
        let dps = "[provisioning]\nid_scope = \"0ne0012AB34\"\ncredential = \"group:fleet\"\n"
        let secrets = "[groups]\nfleet = \"Z3JvdXA=\"\n[keys]\ngw = \"a2V5\"\n"
        let settings = try ConfigDirectory(main: "[hub]\naddresses = { \"hub-b.example\" = \"127.0.0.1:15671\" }\n[gateway]\ndevice_id = \"gw-1\"\n" + dps
                                           + "[udp]\nport = 47000\n[[leaf]]\ndevice_id = \"leaf-1\"\nadapter = \"udp\"\n", secrets: secrets).load().get()
        let p = try #require(settings.provisioning)
        #expect(p.idScope == "0ne0012AB34" && p.endpoint == "global.azure-devices-provisioning.net")
        #expect(p.payload == nil)
        let withPayload = try ConfigDirectory(main: "[gateway]\ndevice_id = \"gw-1\"\n" + dps + "payload = { site = \"north\" }\n", secrets: secrets).load().get()
        #expect(withPayload.provisioning?.payload == ["site": "north"])
        #expect(p.storePath.hasSuffix("/provisioning.json") && !p.storePath.contains("/spool/"))
        #expect(settings.gatewayLeaf.credential == .groupKey("Z3JvdXA="), "the provisioning credential is the default")
        #expect(settings.uplink.hostAddresses == ["hub-b.example": "127.0.0.1:15671"])
        #expect(GatewaySettings.provisioningIdentity(settings.leaves[0])?.registrationID == "leaf-1")

        func problems(_ main: String, secrets: String = secrets) -> String {
            guard case .failure(let e) = ConfigDirectory(main: main, secrets: secrets).load() else { return "" }
            return "\(e)"
        }
        #expect(problems("[gateway]\ndevice_id = \"gw\"\n").contains("[hub] needs host"), "no hub and no DPS")
        #expect(problems("[gateway]\ndevice_id = \"GW_Upper\"\n" + dps).contains("cannot register with DPS"))
        #expect(problems("[gateway]\ndevice_id = \"gw\"\ncredential = \"policy:device\"\n" + dps, secrets: secrets + "[policies]\ndevice = \"cG9s\"\n")
            .contains("hub policy, which DPS cannot provision"))
        #expect(problems("[gateway]\ndevice_id = \"gw\"\n[provisioning]\nid_scope = \"not a scope\"\n").contains("provisioning.id_scope"))
        #expect(problems("[gateway]\ndevice_id = \"gw\"\n" + dps + "global_endpoint = \"https://dps\"\n").contains("provisioning.global_endpoint must be"))
        #expect(problems("[hub]\nhost = \"h\"\naddresses = { \"h:1\" = \"x\" }\n[gateway]\ndevice_id = \"gw\"\n").contains("hub.addresses"))
    }

    /// Issue 24: an X.509 identity names its certificate and a private key only its owner (and group) can read.
    @Test func x509Credential() throws {
        let dir = FileManager.default.temporaryDirectory.path + "/fieldgate-x509-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        FileManager.default.createFile(atPath: dir + "/gw.pem", contents: Data("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".utf8))
        FileManager.default.createFile(atPath: dir + "/gw.key", contents: Data("-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n".utf8),
                                       attributes: [.posixPermissions: 0o600])
        let gateway = "[hub]\nhost = \"h\"\n[gateway]\ndevice_id = \"gw\"\ncredential = \"x509\"\ncertificate_file = \"\(dir)/gw.pem\"\n"
        let settings = try load(gateway + "key_file = \"\(dir)/gw.key\"\n").get()
        #expect(settings.gatewayLeaf.credential == .x509(certificateFile: dir + "/gw.pem", keyFile: dir + "/gw.key"))
        func problems(_ text: String) -> String {
            guard case .failure(let e) = load(text) else { return "" }
            return "\(e)"
        }
        #expect(problems(gateway).contains("needs certificate_file"))
        #expect(problems(gateway + "key_file = \"gw.key\"\n").contains("CREDENTIALS_DIRECTORY"), "a credential name without systemd's directory")
        chmod(dir + "/gw.key", 0o644)
        #expect(problems(gateway + "key_file = \"\(dir)/gw.key\"\n").contains("readable by everyone"))
        #expect(problems(gateway.replacing("gw.pem", with: "missing.pem") + "key_file = \"\(dir)/gw.key\"\n").contains("not a readable PEM certificate"))
        #expect(problems("[hub]\nhost = \"h\"\n[gateway]\ndevice_id = \"gw\"\ncertificate_file = \"/x.pem\"\n").contains("go with credential = \"x509\""))
        chmod(dir + "/gw.key", 0o600)
        let viaCredentials = try GatewaySettings.load(path: {
            let c = ConfigDirectory(main: gateway + "key_file = \"gw.key\"\n")
            return c.main
        }(), credentialsDirectory: dir)
        #expect(viaCredentials.gatewayLeaf.credential == .x509(certificateFile: dir + "/gw.pem", keyFile: dir + "/gw.key"))
    }

    @Test func coalescingIsConfigurable() throws {
        let base = "[hub]\nhost = \"h\"\n[gateway]\ndevice_id = \"gw\"\n"
        #expect(try load(base).get().uplink.coalesceTargetBytes == nil, "off by default")
        #expect(try load(base + "[uplink]\ncoalesce_bytes = 4000\n").get().uplink.coalesceTargetBytes == 4000)
        #expect(try load(base + "[uplink]\nmax_in_flight = 500\n").get().uplink.maxInFlightTotal == 500)
        #expect(try load(base).get().uplink.maxInFlightTotal == 800)
        #expect(try load(base + "[uplink]\nmax_in_flight = 16\n").get().uplink.maxInFlightTotal == 16)
        #expect(try load(base + "[uplink]\nmax_in_flight = 20000\n").get().uplink.maxInFlightTotal == 20000)
        for bad in [0, 15, 20001] {
            if case .failure(let e) = load(base + "[uplink]\nmax_in_flight = \(bad)\n") {
                #expect("\(e)".contains(":6:") && "\(e)".contains("uplink.max_in_flight must be 16 to 20000"), "\(e)")
            } else { Issue.record("max_in_flight = \(bad) accepted") }
        }
        #expect(try load(base + "[uplink]\ncoalesce_bytes = 0\n").get().uplink.coalesceTargetBytes == nil)
        guard case .failure(let e) = load(base + "[uplink]\ncoalesce_bytes = 300000\n") else { Issue.record("accepted"); return }
        #expect("\(e)".contains(":6:") && "\(e)".contains("uplink.coalesce_bytes must be 0 (off) or 512 to 261120"), "\(e)")
    }

    /// Issue 23.4: heartbeats off by default, on for every identity from [uplink], per leaf overridable (0: none).
    @Test func heartbeatsAreConfigurable() throws {
        let base = "[hub]\nhost = \"h\"\n[gateway]\ndevice_id = \"gw\"\n"
        let leaves = "[[leaf]]\ndevice_id = \"m1\"\nadapter = \"udp\"\nheartbeat_seconds = 0\n[[leaf]]\ndevice_id = \"scale\"\nadapter = \"udp\"\nheartbeat_seconds = 60\n"
            + "[[leaf]]\ndevice_id = \"m2\"\nadapter = \"udp\"\n"
        let off = try load(base + "[udp]\nport = 47000\n" + leaves).get()
        #expect(off.uplink.heartbeatIntervalMilliseconds == nil, "off by default")
        let on = try load(base + "[uplink]\nheartbeat_seconds = 3600\n[udp]\nport = 47000\n" + leaves).get()
        #expect(on.uplink.heartbeatIntervalMilliseconds == 3_600_000)
        let byLeaf = Dictionary(uniqueKeysWithValues: on.leaves.map { ($0.deviceID, $0.heartbeatIntervalMilliseconds) })
        #expect(byLeaf["m1"] == .some(0) && byLeaf["scale"] == .some(60_000) && byLeaf["m2"] == .some(nil))
        guard case .failure(let e) = load(base + "[uplink]\nheartbeat_seconds = 5\n") else { Issue.record("accepted"); return }
        #expect("\(e)".contains(":6:") && "\(e)".contains("uplink.heartbeat_seconds must be 0 (off) or 10 to 86400"), "\(e)")
        guard case .failure(let l) = load(base + "[udp]\nport = 47000\n[[leaf]]\ndevice_id = \"m1\"\nadapter = \"udp\"\nheartbeat_seconds = -1\n") else {
            Issue.record("accepted"); return
        }
        #expect("\(l)".contains(":10:") && "\(l)".contains("leaf m1: heartbeat_seconds must be 0"), "\(l)")
    }

    /// Issue 23.2 and 23.3: [upload] turns the logs method and the backlog offload on; both are off by default.
    @Test func uploadSection() throws {
        let base = "[hub]\nhost = \"h\"\n[gateway]\ndevice_id = \"gw\"\n[spool]\ndirectory = \"/var/lib/fieldgate/spool\"\n"
        let off = try load(base).get()
        #expect(off.logUploadMaxBytes == nil && off.uplink.offload == nil)
        let on = try load(base + "[upload]\nlogs = true\noffload_records = 50000\noffload_after_hours = 12\n").get()
        #expect(on.logUploadMaxBytes == 4 << 20)
        #expect(on.uplink.offload == BacklogOffloadPolicy(minRecords: 50_000, olderThanMilliseconds: 12 * 3_600_000, stagingDirectory: "/var/lib/fieldgate/offload"))
        guard case .failure(let e) = load(base + "[upload]\nlogs = true\nlogs_max_mb = 100\noffload_records = 10\n") else { Issue.record("accepted"); return }
        #expect("\(e)".contains("upload.logs_max_mb must be 1 to 64") && "\(e)".contains("upload.offload_records must be 0 (off) or 1000"), "\(e)")
    }

    @Test func integerWhereANumberIsExpected() throws {
        let s = try load(valid.replacing("[gateway]\n", with: "attaches_per_second = 20\n[gateway]\n")).get()
        #expect(s.uplink.attachesPerSecond == 20)
        let f = try load(valid.replacing("[gateway]\n", with: "attaches_per_second = 2.5\n[gateway]\n")).get()
        #expect(f.uplink.attachesPerSecond == 2.5)
    }

    @Test func attachesAtOnce() throws {
        #expect(try load(valid).get().uplink.attachingPerConnection == 32)
        #expect(try load(valid.replacing("[gateway]\n", with: "attaches_at_once = 8\n[gateway]\n")).get().uplink.attachingPerConnection == 8)
        guard case .failure(let e) = load(valid.replacing("[gateway]\n", with: "attaches_at_once = 0\n[gateway]\n")) else { Issue.record("accepted"); return }
        #expect("\(e)".contains("hub.attaches_at_once must be 1 to 1000"), "\(e)")
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
        #expect(e.description.contains("mode 644 (group root): readable by its group and others;"), "\(e.description)")
        #expect(e.description.contains("or chmod 600 for its owner alone"), "\(e.description)")
        // Issue 18.11: a file readable by a group other than the service's is refused with a message that says so.
        let groupDir = ConfigDirectory(main: valid)
        chmod(groupDir.path + "/secrets.toml", 0o640)
        guard case .failure(let g) = groupDir.load() else { Issue.record("a group-readable secrets file was accepted"); return }
        #expect(g.description.contains("mode 640 (group root): readable by its group;"), "\(g.description)")
        #expect(g.description.contains("chgrp fieldgate"), "\(g.description)")
        #expect(!g.description.contains("others"), "\(g.description)")
    }

    /// Issue 19.4: the packaged unit reads secrets.toml as root:fieldgate 0640, so a key added later reaches a reload.
    /// (`daemon` stands in for the service's group here.) Group-writable stays refused.
    @Test func secretsReadableByTheServiceGroup() throws {
        let dir = ConfigDirectory(main: valid)
        defer { try? FileManager.default.removeItem(atPath: dir.path) }
        chmod(dir.path + "/secrets.toml", 0o640)
        try #require(chown(dir.path + "/secrets.toml", 0, 1) == 0, "the test runs as root")
        let s = try GatewaySettings.load(path: dir.main, credentialsDirectory: nil, secretsGroup: "daemon")
        #expect(s.gatewayLeaf.credential == .symmetricKey(primary: "a2V5", secondary: nil))
        chmod(dir.path + "/secrets.toml", 0o660)
        do {
            _ = try GatewaySettings.load(path: dir.main, credentialsDirectory: nil, secretsGroup: "daemon")
            Issue.record("a group-writable secrets file was accepted")
        } catch {
            #expect(error.description.contains("mode 660 (group daemon): readable and writable by its group"), "\(error.description)")
        }
    }

    /// Issue 19.5: every problem of every file in one run: a main file with problems does not hide the devices.d
    /// files', a broken entry does not hide its neighbours', and problems in the secrets file come along.
    @Test func everyProblemOfEveryFileInOneRun() {
        let main = valid.replacing("cap_mb = 32", with: "cap_mb = true").replacing("device_id = \"gw\"\n", with: "")
        let devices = """
            [[leaf]]
            device_id = "a1"
            adapter = "udp"
            cloud = ["twins"]
            [[leaf]]
            device_id = "a2"
            [[leaf]]
            device_id = "a3"
            adapter = "carrier-pigeon"
            [[leaf]]
            device_id = "a4"
            adapter = "udp"
            colour = "red"
            [[leaf]]
            device_id = "bad id"
            adapter = "udp"
            """
        let broken = "[[leaf]\ndevice_id = 1\n"
        let secrets = ConfigDirectory.secrets.replacing("[keys]\n", with: "[keys]\na1 = \"a2V5\"\na3 = \"a2V5\"\na4 = \"a2V5\"\n")
        guard case .failure(let e) = ConfigDirectory(main: main, secrets: secrets, devices: ["a.toml": devices, "b.toml": broken]).load() else {
            Issue.record("accepted"); return
        }
        let text = e.description
        for expected in ["fieldgate.toml:7: spool.cap_mb must be an integer", "fieldgate.toml:4: [gateway] needs device_id",
                         "a.toml:4: leaf a1: cloud lists \"twins\"", "a.toml:5: [leaf[1]] needs adapter",
                         "a.toml:9: leaf a3: adapter carrier-pigeon is not available", "a.toml:13: unknown key colour",
                         "a.toml:15: device_id \"bad id\" is not a valid IoT Hub device id", "b.toml:1:"] {
            #expect(text.contains(expected), "missing \(expected) in:\n\(text)")
        }
        #expect(e.problems.count == 8, "\(text)")
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
        // The example secrets with keys for the example Modbus leaves.
        let secrets = try read("secrets.toml.example").replacing("[keys]\n", with: "[keys]\nboiler-1 = \"a2V5\"\nboiler-2 = \"a2V5\"\n")
        let dir = ConfigDirectory(main: try read("fieldgate.toml"), secrets: secrets,
                                  devices: ["example-udp.toml": try read("devices.d/example-udp.toml.example"),
                                            "example-modbus.toml": try read("devices.d/example-modbus.toml.example")],
                                  profiles: ["example-boiler.toml": try read("profiles.d/example-boiler.toml.example")])
        // The reference leaves UDP commented out; the example leaves need it.
        dir.write("fieldgate.toml", try read("fieldgate.toml") + "\n[udp]\nport = 47000\n")
        let s = try dir.load().get()
        #expect(s.leaves.map(\.deviceID) == ["boiler-1", "boiler-2", "meter-1", "meter-2"])
        #expect(s.modbusBuses.map(\.name) == ["plc", "rs485"])
        let boiler = try #require(s.modbusBuses.first?.devices.first)
        #expect(boiler.leaf == "boiler-1" && boiler.unit == 1 && boiler.profile.points.count == 6)
        #expect(boiler.profile.points[1].table == .holdingRegisters && boiler.profile.points[1].address == 1 && boiler.profile.points[1].type == .f32)
        #expect(boiler.profile.points[4].order == RegisterOrder("CDAB"))
        #expect(s.modbusBuses[1].devices.first?.pollMilliseconds == 5000)
        #expect(s.modbusBuses[1].devices.first?.responseTimeoutMilliseconds == 1500 && s.modbusBuses[1].devices.first?.retries == 2)
        #expect(s.files.contains { $0.hasSuffix("profiles.d/example-boiler.toml") })
        #expect(s.leaves[2].credential == .symmetricKey(primary: "base64-primary-key", secondary: "base64-secondary-key"))
        #expect(s.leaves[3].credential == .sharedAccessPolicy(name: "device", key: "base64-policy-key", scope: .hub))
        #expect(s.controlSocket == "/run/fieldgate/control.sock" && s.spool.directory == "/var/lib/fieldgate/spool")
    }
}

@Suite("Modbus configuration: buses, leaves and profiles.d")
struct ModbusConfigTests {
    static let main = """
        [hub]
        host = "hub.example.net"
        [gateway]
        device_id = "gw"
        """
    static let devices = """
        [[modbus_bus]]
        name = "line"
        device = "/dev/ttyUSB0"
        baud = 9600
        parity = "none"
        stop_bits = 2

        [[leaf]]
        device_id = "m1"
        adapter = "modbus"
        bus = "line"
        unit_id = 3
        profile = "meter"
        """
    static let profile = """
        poll_ms = 2000

        [[point]]
        name = "power"
        address = "30001"
        type = "f32"
        order = "CDAB"

        [[point]]
        name = "relay"
        table = "coil"
        address = 4
        writable = true
        """

    func load(devices: String = Self.devices, profile: String = Self.profile) -> Result<GatewaySettings, ConfigError> {
        ConfigDirectory(main: Self.main, devices: ["m.toml": devices], profiles: ["meter.toml": profile]).load()
    }

    @Test func mapsOntoTheBus() throws {
        let s = try load().get()
        let bus = try #require(s.modbusBuses.first)
        guard case .rtu(let line) = bus.endpoint else { Issue.record("\(bus.endpoint)"); return }
        #expect(line.baud == 9600 && line.parity == .none && line.stopBits == 2)
        // 3.5 characters of 11 bits at 9600 baud = 4.01 ms.
        #expect(bus.turnaroundMilliseconds > 4 && bus.turnaroundMilliseconds < 4.2)
        #expect(bus.devices.first?.unit == 3 && bus.devices.first?.pollMilliseconds == 2000)
        #expect(bus.devices.first?.profile.points.map(\.table) == [.inputRegisters, .coils])
        #expect(s.leaves.map(\.deviceID) == ["m1"])
    }

    /// Each error class: file, line and the fix.
    @Test func errorsNameTheFileLineAndFix() {
        let overlap = Self.profile + "\n[[point]]\nname = \"low\"\naddress = \"30002\"\n"
        let cases: [(devices: String, profile: String, expected: String)] = [
            (Self.devices, overlap, "profiles.d/meter.toml:16: profile meter: point low (input_registers 1) overlaps power (0..1)"),
            (Self.devices, Self.profile + "\n[[point]]\nname = \"power\"\naddress = 100\ntable = \"input\"\n", "profiles.d/meter.toml:15: profile meter: point power is defined twice"),
            (Self.devices, Self.profile.replacing("order = \"CDAB\"", with: "order = \"ACBD\""), "profiles.d/meter.toml:7: profile meter: point power: order ACBD does not apply to f32"),
            (Self.devices, Self.profile.replacing("order = \"CDAB\"", with: "order = \"GHEFCDAB\""), "profiles.d/meter.toml:7: profile meter: point power: order GHEFCDAB does not apply to f32"),
            (Self.devices, Self.profile.replacing("writable = true", with: "type = \"f32\""), "profiles.d/meter.toml:13: profile meter: point relay: coils hold single bits"),
            (Self.devices, Self.profile.replacing("type = \"f32\"", with: "type = \"float128\""), "profiles.d/meter.toml:6: profile meter: point power: type float128: use u16"),
            (Self.devices, Self.profile.replacing("\"30001\"", with: "\"50001\""), "profiles.d/meter.toml:5: profile meter: point power: address \"50001\" is not Modicon notation"),
            (Self.devices, Self.profile.replacing("address = 4", with: "address = 70000"), "profiles.d/meter.toml:12: profile meter: point relay: address 70000 must be 0 to 65535"),
            (Self.devices, Self.profile.replacing("name = \"power\"", with: "name = \"power\"\nscal = 2"), "profiles.d/meter.toml:5: unknown key scal in [point[0]]"),
            (Self.devices.replacing("unit_id = 3", with: "unit_id = 248"), Self.profile, "devices.d/m.toml:12: leaf m1: unit_id 248 is out of range (1 to 247 on this bus)"),
            (Self.devices.replacing("bus = \"line\"", with: "bus = \"lime\""), Self.profile, "devices.d/m.toml:11: leaf m1: no [[modbus_bus]] named lime (defined: line)"),
            (Self.devices.replacing("profile = \"meter\"", with: "profile = \"metre\""), Self.profile, "devices.d/m.toml:13: leaf m1: no profile metre in profiles.d (known: meter)"),
            (Self.devices + "\n[[modbus_bus]]\nname = \"again\"\ndevice = \"/dev/ttyUSB0\"\n", Self.profile, "devices.d/m.toml:14: modbus_bus again uses rtu:/dev/ttyUSB0, like bus line: one connection or port has exactly one owner"),
            (Self.devices + "\n[[leaf]]\ndevice_id = \"m2\"\nadapter = \"modbus\"\nbus = \"line\"\nunit_id = 3\nprofile = \"meter\"\n", Self.profile, "devices.d/m.toml:18: leaf m2: unit_id 3 on bus line is already leaf m1"),
            (Self.devices.replacing("parity = \"none\"", with: "parity = \"mark\""), Self.profile, "devices.d/m.toml:5: modbus_bus line: parity mark: use none, even or odd"),
            (Self.devices.replacing("device = \"/dev/ttyUSB0\"", with: "tcp = \"plc\""), Self.profile, "devices.d/m.toml:3: modbus_bus line: tcp = \"plc\": use host:port"),
        ]
        for (devices, profile, expected) in cases {
            guard case .failure(let e) = load(devices: devices, profile: profile) else { Issue.record("accepted: \(expected)"); continue }
            #expect(e.description.contains(expected), "\(expected)\n  got: \(e.description)")
        }
    }
}
