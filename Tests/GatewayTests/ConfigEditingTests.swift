import GatewayConfig
import Testing

@Suite("fieldgatectl's file edits and connection strings")
struct ConfigEditingTests {
    @Test func deviceAndPolicyConnectionStrings() throws {
        let device = try HubConnectionString.parse("HostName=plant-7.azure-devices.net;DeviceId=gw-1;SharedAccessKey=qCO582E+xpIZGc9EiUkKgZkWHKgpQPxqVop8kw0Irkc=")
        #expect(device == HubConnectionString(hostName: "plant-7.azure-devices.net", deviceID: "gw-1", key: "qCO582E+xpIZGc9EiUkKgZkWHKgpQPxqVop8kw0Irkc="))
        // Keys in any case, quotes and spaces around it as a shell paste leaves them, a trailing ';'.
        let policy = try HubConnectionString.parse(" \"hostname=h.azure-devices.net;sharedaccesskeyname=device;SharedAccessKey=cG9saWN5LWtleS0xMjM0NTY3OA==;\" ")
        #expect(policy.keyName == "device" && policy.deviceID == nil && policy.key == "cG9saWN5LWtleS0xMjM0NTY3OA==")
        let edge = try HubConnectionString.parse("HostName=h;DeviceId=leaf;SharedAccessKey=cG9saWN5LWtleS0xMjM0NTY3OA==;GatewayHostName=edge.local")
        #expect(edge.gatewayHostName == "edge.local")
    }

    @Test func connectionStringsRefusedWithTheReason() {
        let cases: [(String, String)] = [
            ("DeviceId=gw;SharedAccessKey=cG9saWN5LWtleS0xMjM0NTY3OA==", "no HostName"),
            ("HostName=h;DeviceId=gw", "no SharedAccessKey"),
            ("HostName=h;SharedAccessKey=cG9saWN5LWtleS0xMjM0NTY3OA==", "no DeviceId or SharedAccessKeyName"),
            ("HostName=h;DeviceId=gw;x509=true", "X.509"),
            ("HostName=h;DeviceId=gw;ModuleId=m;SharedAccessKey=cG9saWN5LWtleS0xMjM0NTY3OA==", "module"),
            ("HostName=h;DeviceId=gw;SharedAccessKey=not base64!", "not base64"),
            ("HostName=h;DeviceId", "without '='"),
        ]
        for (text, reason) in cases {
            #expect(throws: HubConnectionString.Problem.self, "\(text)") { try HubConnectionString.parse(text) }
            do { _ = try HubConnectionString.parse(text) } catch { #expect(error.description.contains(reason), "\(text): \(error)") }
        }
    }

    /// The operator's comments, order and other tables survive; a commented default gets the value right under it.
    @Test func editsKeepTheRestOfTheFile() throws {
        var e = TOMLTextEditor("""
            # the operator's notes
            [hub]
            # AMQPS port. Default: 5671.
            # port = 5671
            host = "old.example.net"   

            [gateway]
            device_id = "gw"
            key_ref = "x"

            [[leaf]]
            device_id = "a"
            adapter = "udp"
            """)
        e.set("hub", "host", TOMLTextEditor.string("new.azure-devices.net"))
        e.set("hub", "port", "25671")
        e.set("gateway", "credential", TOMLTextEditor.string("policy:device"))
        let removed = e.remove("gateway", "key_ref"), removedAgain = e.remove("gateway", "key_ref")
        #expect(removed && !removedAgain)
        e.set("keys", "odd id:1", TOMLTextEditor.string("k\"\\"))
        #expect(e.text == """
            # the operator's notes
            [hub]
            # AMQPS port. Default: 5671.
            # port = 5671
            port = 25671
            host = "new.azure-devices.net"

            [gateway]
            device_id = "gw"
            credential = "policy:device"

            [[leaf]]
            device_id = "a"
            adapter = "udp"

            [keys]
            "odd id:1" = "k\\"\\\\"

            """)
    }

    /// Device ids may hold `=`, quotes and `:`; keys written for them are found again (set replaces, remove removes).
    @Test func quotedKeysAreFoundAgain() {
        var e = TOMLTextEditor("[keys]\nplain = \"k1\"\n")
        for id in ["a=b", "it's", "x:1", "say \"hi\""] {
            e.set("keys", id, TOMLTextEditor.string("v1"))
            e.set("keys", id, TOMLTextEditor.string("v2"))
        }
        #expect(e.text.split(separator: "\n").count == 6, "one line per key: \(e.text)")
        #expect(e.text.contains("\"a=b\" = \"v2\"") && !e.text.contains("v1"), "\(e.text)")
        for id in ["a=b", "it's", "x:1", "say \"hi\""] {
            let removed = e.remove("keys", id)
            #expect(removed, "\(id) in \(e.text)")
        }
        #expect(e.text == "[keys]\nplain = \"k1\"\n")
        #expect(TOMLTextEditor.keyOf("'lit\\eral' = 1") == "lit\\eral")
        #expect(TOMLTextEditor.keyOf("# a = 1") == nil && TOMLTextEditor.keyOf("[a]") == nil && TOMLTextEditor.keyOf("\"open = 1") == nil)
    }

    /// `[udp]` however the operator spaced or commented its header.
    @Test func tablesAreFoundHoweverWritten() {
        #expect(TOMLTextEditor("[hub]\n[ udp ]  # listener\nport = 1\n").hasTable("udp"))
        #expect(TOMLTextEditor("[[leaf]]\n").hasTable("leaf"))
        #expect(!TOMLTextEditor("# [udp]\n[udp.x]\n").hasTable("udp"))
    }
}
