import HubTestSupport
import FieldgateCore
import HubDeviceClient
import HubEmulator
import IoTHub
import ProtonAMQP
import Synchronization
import Testing

/// Checks, from a client's frame trace, that every reply of a request/response link pair arrives after the
/// disposition of its request, as uAMQP's management client (Azure C SDK, Python uamqp) requires: reply k on the
/// hub's sender link for address A answers request k on our sender link for A, and request k's delivery must have
/// been settled by a disposition frame that came in before reply k.
struct ReplyOrderChecker {
    private var ourSenders: [Int: String] = [:]     // our handle → address, for links we send requests on
    private var hubSenders: [Int: String] = [:]     // hub's handle → address, for links it sends replies on
    private var requests: [String: [Int]] = [:]     // address → delivery ids of our requests, in order
    private var repliesSeen: [String: Int] = [:]
    private var settled = Set<Int>()
    private(set) var violations: [String] = []
    private(set) var repliesChecked = 0

    mutating func feed(_ line: String) {
        let outgoing: Bool
        if line.contains("-> @") { outgoing = true } else if line.contains("<- @") { outgoing = false } else { return }
        if line.contains("@attach(18)") {
            guard let handle = number("handle", line), let role = field("role", line) else { return }
            // A sender's address is its target's, a receiver's its source's.
            if outgoing, role == "false", let a = address(in: line, terminus: "@target(41)") { ourSenders[handle] = a }
            if !outgoing, role == "false", let a = address(in: line, terminus: "@source(40)") { hubSenders[handle] = a }
        } else if line.contains("@transfer(20)") {
            guard let handle = number("handle", line) else { return }
            if outgoing, let a = ourSenders[handle], let id = number("delivery-id", line) {
                requests[a, default: []].append(id)
            } else if !outgoing, let a = hubSenders[handle], requests[a] != nil {
                let k = repliesSeen[a, default: 0]
                repliesSeen[a] = k + 1
                repliesChecked += 1
                guard let request = requests[a]?.dropFirst(k).first else {
                    violations.append("reply \(k) on \(a) without a request")
                    return
                }
                if !settled.contains(request) { violations.append("reply \(k) on \(a) before the disposition of delivery \(request)") }
            }
        } else if line.contains("@disposition(21)"), !outgoing, field("role", line) == "true" {
            guard let first = number("first", line) else { return }
            let last = number("last", line) ?? first
            settled.formUnion(first...last)
        }
    }

    private func field(_ name: String, _ line: String) -> String? {
        guard let r = line.firstRange(of: "\(name)=") else { return nil }
        return String(line[r.upperBound...].prefix { $0 != "," && $0 != "]" && $0 != " " })
    }

    /// Proton traces numbers in hex (`handle=0x1a`).
    private func number(_ name: String, _ line: String) -> Int? {
        guard let text = field(name, line) else { return nil }
        return text.hasPrefix("0x") ? Int(text.dropFirst(2), radix: 16) : Int(text)
    }

    private func address(in line: String, terminus: String) -> String? {
        guard let t = line.firstRange(of: terminus), let a = line[t.upperBound...].firstRange(of: "address=\"") else { return nil }
        return String(line[a.upperBound...].prefix { $0 != "\"" })
    }
}

@Suite("request/response order on the wire", .serialized, .timeLimit(.minutes(3)))
struct ReplyOrderTests {
    @Test("the checker catches a reply that overtakes its disposition")
    func checkerCatchesReversal() {
        var checker = ReplyOrderChecker()
        for line in [
            #"[0x1]:0 -> @attach(18) [name="cbs-s", handle=0, role=false, snd-settle-mode=0, source=@source(40) [address="$cbs"], target=@target(41) [address="$cbs"]]"#,
            #"[0x1]:0 <- @attach(18) [name="cbs-r", handle=1, role=false, source=@source(40) [address="$cbs"], target=@target(41) [address="$cbs"]]"#,
            #"[0x1]:0 -> @transfer(20) [handle=0x0, delivery-id=0x0, delivery-tag=b"\x00", message-format=0] (10) "x""#,
            #"[0x1]:0 <- @transfer(20) [handle=0x1, delivery-id=0x0, delivery-tag=b"\x00", message-format=0] (10) "y""#,
            #"[0x1]:0 <- @disposition(21) [role=true, first=0, settled=true, state=@accepted(36) []]"#,
        ] { checker.feed(line) }
        #expect(checker.repliesChecked == 1)
        #expect(checker.violations.count == 1)
    }

    @Test("100 identities put tokens at once over one TLS connection (SASL MSSBCBS): every reply follows its disposition; so do twin replies")
    func hundredIdentities() async throws {
        try await withHub { hub in
            var records: [DeviceRecord] = []
            for i in 0..<100 { records.append(try await hub.createDevice("order-\(i)")) }
            let trace = Mutex<[String]>([])
            let c = try await DeviceConnection.connect(
                reactor: hub.reactor, host: "127.0.0.1", port: hub.running.amqpsPort!, hostName: hub.hostName,
                tls: AMQPClientTLS(trustedCAFile: hub.certificates.caCertificate, peerHostname: "localhost"),
                sasl: .mssbcbs, frameTrace: { line in trace.withLock { $0.append(line) } })
            let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
                for r in records {
                    group.addTask { try await c.authenticate(deviceId: r.deviceId, key: r.authentication.symmetricKey.primaryKey).status }
                }
                return try await group.reduce(into: [Int]()) { $0.append($1) }
            }
            #expect(statuses.count == 100 && statuses.allSatisfy { $0 == 200 })
            for r in records.prefix(5) {
                try await c.attachTwin(deviceId: r.deviceId)
                #expect(try await c.getTwin(deviceId: r.deviceId).status == 200)
                #expect(try await c.patchReported(deviceId: r.deviceId, ["x": 1]).status == 204)
            }
            c.close()
            var checker = ReplyOrderChecker()
            let lines = trace.withLock { $0 }
            for line in lines { checker.feed(line) }
            #expect(checker.repliesChecked == 110, "replies seen in the frame trace of \(lines.count) lines: \(lines.prefix(12))")
            #expect(checker.violations.isEmpty, "\(checker.violations.prefix(5))")
        }
    }
}
