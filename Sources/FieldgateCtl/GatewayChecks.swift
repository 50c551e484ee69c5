import CTLSProbe
import FieldgateCore
import GatewayConfig
import HubDeviceClient
import HubTunnel
import ProtonAMQP
import Provisioning
import Synchronization
import Uplink

#if canImport(Glibc)
import Glibc
#endif

/// One line of `fieldgatectl check`.
struct CheckResult: Sendable {
    enum Verdict: String, Sendable { case pass, warn, fail, skip }
    var name: String
    var verdict: Verdict
    var detail: String
    var hint: String?

    var json: JSONValue {
        ["check": .string(name), "result": .string(verdict.rawValue), "detail": .string(detail), "hint": hint.map(JSONValue.string) ?? .null]
    }

    var line: String {
        let mark = switch verdict { case .pass: "✓"; case .warn: "!"; case .fail: "✗"; case .skip: "-" }
        return "\(mark) \(name + String(repeating: " ", count: Swift.max(0, 13 - name.count))) \(detail)" + (hint.map { "\n    → \($0)" } ?? "")
    }
}

/// What stands between a configuration and data flowing, checked in the order an operator would: the files, the
/// keys' files, the clock, DNS, TCP, TLS, and whether the hub takes each identity's credentials (a CBS put-token per
/// identity on one connection, no links attached, so a running fieldgated is not disturbed).
struct GatewayChecks {
    var configPath: String
    /// Put a token for every leaf, not only the first `sample`.
    var allLeaves = false
    var sample = 100
    /// The user the packaged unit runs as: the files it must be able to read.
    var serviceUser = "fieldgate"
    var timeoutSeconds: Int32 = 5

    func run() async -> [CheckResult] {
        var results: [CheckResult] = []
        var settings: GatewaySettings
        do { settings = try GatewaySettings.load(path: configPath) } catch {
            results.append(CheckResult(name: "configuration", verdict: .fail, detail: error.problems.map(\.description).joined(separator: "\n  "),
                                       hint: "fix each file:line above (fieldgatectl config check prints the same)"))
            results.append(fileAccess(files: [configPath, GatewaySettings.secretsPath(configPath: configPath)]))
            for name in ["dns", "tcp", "tls", "credentials"] {
                results.append(CheckResult(name: name, verdict: .skip, detail: "needs a valid configuration"))
            }
            return results
        }
        let hubText = settings.uplink.hostName.isEmpty ? "hubs assigned by DPS" : "hub \(settings.uplink.hostName)"
        results.append(CheckResult(name: "configuration", verdict: .pass,
                                   detail: "\(settings.files.count) files, \(hubText), gateway \(settings.gatewayLeaf.deviceID), \(settings.leaves.count) leaves"))
        results.append(fileAccess(files: settings.files + [GatewaySettings.secretsPath(configPath: configPath)]))
        results.append(clock())
        if let provisioning = settings.provisioning {
            results += await provisioningChecks(provisioning, settings: settings)
            // The hub checks below go to the gateway's hub: the configured one, else the one DPS assigned it.
            let store = AssignmentStore(path: provisioning.storePath)
            let assigned = store.entries[settings.gatewayLeaf.deviceID]?.hub
            if let assigned, settings.gatewayLeaf.hubHost == nil, GatewaySettings.provisioningIdentity(settings.gatewayLeaf) != nil {
                if assigned != settings.uplink.hostName {
                    // `address` and the fallback hosts belong to the configured hub, not to the one DPS chose.
                    // (`[hub] addresses` still say where the assigned hub is reached.)
                    settings.uplink.address = nil
                    settings.uplink.fallbackHosts = []
                }
                settings.uplink.hostName = assigned
                settings.leaves = settings.leaves.filter { store.entries[$0.deviceID]?.hub == assigned }
            } else if settings.uplink.hostName.isEmpty {
                for name in ["dns", "tcp", "tls", "credentials"] {
                    results.append(CheckResult(name: name, verdict: .skip, detail: "the gateway has no hub yet: DPS assigns one when fieldgated starts"))
                }
                return results
            }
        }
        let route = settings.uplink.route
        var amqps: [CheckResult] = []
        var amqpsOK = false
        if route != .webSocket {
            amqpsOK = directChecks(settings, into: &amqps)
        }
        var webSocket: CheckResult?
        if route != .amqps && !(route == .auto && amqpsOK) {
            webSocket = await webSocketCheck(settings)
        }
        let webSocketOK = webSocket?.verdict == .pass
        if route == .auto && webSocketOK {
            // 5671 closed is a normal site here: the gateway falls back to WebSockets.
            amqps = amqps.map { r in
                guard r.verdict == .fail else { return r }
                return CheckResult(name: r.name, verdict: .warn, detail: r.detail + " (transport = auto: the gateway falls back to WebSockets on \(settings.uplink.webSocket.port))",
                                   hint: "set transport = \"amqps-websocket\" to skip the attempts on 5671")
            }
        }
        results += amqps
        if let webSocket { results.append(webSocket) }
        if amqpsOK {
            results.append(await credentials(settings, overWebSocket: false))
        } else if webSocketOK {
            results.append(await credentials(settings, overWebSocket: true))
        } else {
            results.append(CheckResult(name: "credentials", verdict: .skip, detail: "needs a way to the hub"))
        }
        return results
    }

    /// The DPS endpoint (DNS, TCP, TLS as fieldgated checks it; through the proxy when one is set, as fieldgated
    /// reaches DPS) and what the stored assignments say.
    func provisioningChecks(_ p: ProvisioningConfiguration, settings: GatewaySettings) async -> [CheckResult] {
        var results: [CheckResult] = []
        results.append(p.https.proxy.mayUseProxy ? await dpsThroughProxy(p) : dpsDirect(p))
        let identities = ([settings.gatewayLeaf] + settings.leaves).compactMap { GatewaySettings.provisioningIdentity($0) }
        let store = AssignmentStore(path: p.storePath)
        let assigned = identities.filter { store.entries[$0.registrationID] != nil }
        let hubs = Set(assigned.compactMap { store.entries[$0.registrationID]?.hub }).sorted()
        if let problem = store.loadProblem {
            results.append(CheckResult(name: "assignments", verdict: .warn, detail: problem))
        } else if assigned.count == identities.count {
            results.append(CheckResult(name: "assignments", verdict: .pass, detail: "all \(identities.count) identities assigned (hubs: \(hubs.joined(separator: ", ")))"))
        } else {
            results.append(CheckResult(name: "assignments", verdict: .warn,
                                       detail: "\(assigned.count) of \(identities.count) identities assigned\(hubs.isEmpty ? "" : " (hubs: \(hubs.joined(separator: ", ")))")",
                                       hint: "fieldgated registers the others at start and retries; fieldgatectl devices shows why DPS refused one (provisioning-refused)"))
        }
        return results
    }

    /// DNS, TCP and TLS to DPS, with the TLS probe's certificate details.
    private func dpsDirect(_ p: ProvisioningConfiguration) -> CheckResult {
        let parts = p.endpoint.split(separator: ":", maxSplits: 1).map(String.init)
        let host = parts[0], port = parts.count == 2 ? Int(parts[1]) ?? 443 : 443
        let dns = resolve(host: host, port: port)
        guard let address = dns.addresses.first else {
            return CheckResult(name: "dps", verdict: .fail, detail: dns.result.detail, hint: "check provisioning.global_endpoint and DNS")
        }
        let tcp = connectTCP(address, label: "\(host):\(port)")
        guard tcp.fd >= 0 else {
            return CheckResult(name: "dps", verdict: .fail, detail: tcp.result.detail, hint: "DPS is reached over HTTPS (443); check the firewall or [hub] proxy")
        }
        let tls = probeTLS(fd: tcp.fd, hostName: host, caFile: p.https.caFile)
        return CheckResult(name: "dps", verdict: tls.verdict, detail: "\(p.endpoint) (id scope \(p.idScope)): \(tls.detail)", hint: tls.hint)
    }

    /// DPS over HTTPS through the proxy, with fieldgated's own settings (libcurl: the proxy's CONNECT and
    /// authentication, then TLS verified against the same trust). A site behind a proxy usually cannot resolve or
    /// reach DPS directly, so a direct probe would fail where fieldgated succeeds. Any HTTP answer means the way is
    /// open: the request carries no registration.
    private func dpsThroughProxy(_ p: ProvisioningConfiguration) async -> CheckResult {
        var https = p.https
        https.timeoutMilliseconds = Int(timeoutSeconds) * 3_000
        let url = "https://\(p.endpoint)/"
        let result = await offCooperativePool { [https] in HTTPSClient.perform("GET", url, settings: https) }
        let via = "proxy: \(https.proxy)"
        switch result {
        case .success(let response):
            let tls = https.verifyPeer ? "TLS verified against \(https.caFile ?? "the system's trust store")" : "TLS not verified (verification is off)"
            return CheckResult(name: "dps", verdict: https.verifyPeer ? .pass : .warn,
                               detail: "\(p.endpoint) (id scope \(p.idScope), \(via)): \(tls), HTTP \(response.status)")
        case .failure(let error):
            return CheckResult(name: "dps", verdict: .fail, detail: "\(p.endpoint) (\(via)): \(error)",
                               hint: "[hub] proxy, the proxy password in the secrets file ([proxy] password), or https_proxy (exported here as in the service's environment); DPS is reached over HTTPS (443)")
        }
    }

    /// DNS, TCP and TLS to the AMQPS port; true when all passed.
    private func directChecks(_ settings: GatewaySettings, into results: inout [CheckResult]) -> Bool {
        let (host, port) = settings.uplink.endpoint(for: settings.uplink.hostName)
        let dns = resolve(host: host, port: port)
        results.append(dns.result)
        guard let address = dns.addresses.first else {
            for name in ["tcp", "tls"] { results.append(CheckResult(name: name, verdict: .skip, detail: "needs DNS")) }
            return false
        }
        let tcp = connectTCP(address, label: "\(host):\(port)")
        results.append(tcp.result)
        guard tcp.fd >= 0 else {
            results.append(CheckResult(name: "tls", verdict: .skip, detail: "needs TCP"))
            return false
        }
        switch settings.uplink.transport {
        case .tls(let tls):
            let r = probeTLS(fd: tcp.fd, hostName: settings.uplink.hostName, caFile: tls.caFile)
            results.append(r)
            return r.verdict != .fail
        case .insecurePlainAMQP:
            close(tcp.fd)
            results.append(CheckResult(name: "tls", verdict: .warn, detail: "off: insecure_plain_amqp = true (keys travel in clear text)",
                                       hint: "for tests only; remove insecure_plain_amqp for a real hub"))
            return true
        }
    }

    /// AMQP over WebSockets as the gateway opens it: the proxy, TLS, the upgrade and the AMQP Open.
    func webSocketCheck(_ settings: GatewaySettings) async -> CheckResult {
        let reactor = AMQPReactor()
        let result = await webSocketCheck(settings, reactor: reactor)
        await reactor.shutdown()
        return result
    }

    private func webSocketCheck(_ settings: GatewaySettings, reactor: AMQPReactor) async -> CheckResult {
        let tunnel = settings.uplink.tunnelConfiguration()
        let target = "wss://\(tunnel.hostName):\(tunnel.port)\(tunnel.path)"
        do {
            let connection = try await firstOf(seconds: Int(timeoutSeconds) * 3) {
                try await DeviceConnection.connect(reactor: reactor, stream: WebSocketTunnel(configuration: tunnel), hostName: tunnel.hostName)
            }
            connection.close()
            return CheckResult(name: "websocket", verdict: .pass, detail: "\(target) (proxy: \(tunnel.proxy)): TLS verified, upgraded, AMQP open")
        } catch {
            return CheckResult(name: "websocket", verdict: .fail, detail: "\(target) (proxy: \(tunnel.proxy)): \(error)",
                               hint: "[hub] proxy, the proxy password in the secrets file ([proxy] password), or https_proxy in the service's environment")
        }
    }

    // MARK: the checks

    /// Every file must be readable by the service's user (the packaged unit runs as `fieldgate`), and the secrets by
    /// nobody else.
    func fileAccess(files: [String]) -> CheckResult {
        guard let user = getpwnam(serviceUser)?.pointee else {
            return CheckResult(name: "file access", verdict: .skip, detail: "no user \(serviceUser) on this machine (not installed from the package)")
        }
        var unreadable: [String] = []
        var described: [String] = []
        for file in files {
            var st = stat()
            guard stat(file, &st) == 0 else { continue }
            let mode = st.st_mode & 0o777
            let readable = st.st_uid == user.pw_uid ? mode & 0o400 != 0
                : (st.st_gid == user.pw_gid || Self.isMember(user, of: st.st_gid)) ? mode & 0o040 != 0 : mode & 0o004 != 0
            if !readable { unreadable.append(file) }
            if file.hasSuffix("secrets.toml") { described.append("\(file) \(String(mode, radix: 8)) \(Self.owner(st))") }
        }
        if !unreadable.isEmpty {
            return CheckResult(name: "file access", verdict: .fail, detail: "user \(serviceUser) cannot read " + unreadable.joined(separator: ", "),
                               hint: "chgrp \(serviceUser) <file> && chmod 640 <file> (fieldgatectl connect and leaf add write them so)")
        }
        return CheckResult(name: "file access", verdict: .pass, detail: "user \(serviceUser) reads all \(files.count) files" + (described.isEmpty ? "" : "; " + described.joined()))
    }

    func clock() -> CheckResult {
        let now = WallClock.nowMilliseconds()
        let text = WallClock.iso8601(milliseconds: now)
        // SAS tokens carry an expiry the hub compares with its own clock; a clock years off makes every token invalid.
        guard now > 1_704_067_200_000 else {  // 2024-01-01
            return CheckResult(name: "clock", verdict: .fail, detail: "\(text) is before 2024: SAS tokens would be expired on arrival",
                               hint: "set the time (timedatectl set-ntp true, or date -s)")
        }
        if let synced = Self.output(["timeout", "5", "timedatectl", "show", "-p", "NTPSynchronized", "--value"]), synced == "no" {
            return CheckResult(name: "clock", verdict: .warn, detail: "\(text), not synchronized with NTP",
                               hint: "timedatectl set-ntp true; a clock minutes off makes tokens look expired or not yet valid")
        }
        return CheckResult(name: "clock", verdict: .pass, detail: text)
    }

    func resolve(host: String, port: Int) -> (result: CheckResult, addresses: [sockaddr_storage]) {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let list else {
            return (CheckResult(name: "dns", verdict: .fail, detail: "\(host): \(String(cString: gai_strerror(rc)))",
                                hint: "check the host name in [hub] host and the resolver (/etc/resolv.conf); [hub] address skips DNS"), [])
        }
        defer { freeaddrinfo(list) }
        var addresses: [sockaddr_storage] = []
        var texts: [String] = []
        var p: UnsafeMutablePointer<addrinfo>? = list
        while let a = p {
            var storage = sockaddr_storage()
            memcpy(&storage, a.pointee.ai_addr, Int(a.pointee.ai_addrlen))
            addresses.append(storage)
            let t = Self.text(storage)
            if !texts.contains(t) { texts.append(t) }
            p = a.pointee.ai_next
        }
        let label = texts == [host] ? "\(host) ([hub] address: no lookup)" : "\(host) → " + texts.joined(separator: ", ")
        return (CheckResult(name: "dns", verdict: .pass, detail: label), addresses)
    }

    func connectTCP(_ address: sockaddr_storage, label: String) -> (result: CheckResult, fd: Int32) {
        var address = address
        let fd = socket(Int32(address.ss_family), Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return (CheckResult(name: "tcp", verdict: .fail, detail: "socket: \(String(cString: strerror(errno)))"), -1) }
        var timeout = timeval(tv_sec: Int(timeoutSeconds), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))  // bounds connect()
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let started = MonotonicClock.milliseconds()
        let length = socklen_t(address.ss_family == sa_family_t(AF_INET6) ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size)
        let rc = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, length) } }
        guard rc == 0 else {
            let why = String(cString: strerror(errno))
            close(fd)
            return (CheckResult(name: "tcp", verdict: .fail, detail: "\(label) (\(Self.text(address))): \(why)",
                                hint: "the hub's AMQPS port must be open outbound (5671/tcp): ask for it in the site's firewall"), -1)
        }
        return (CheckResult(name: "tcp", verdict: .pass, detail: "\(label) reached (\(Self.text(address))) in \(MonotonicClock.milliseconds() - started) ms"), fd)
    }

    /// Closes `fd`.
    func probeTLS(fd: Int32, hostName: String, caFile: String?) -> CheckResult {
        defer { close(fd) }
        var r = fg_tls_probe_result()
        let ok = fg_tls_probe(fd, hostName, caFile, &r) == 1
        let trust = caFile ?? "the system's trust store"
        guard ok else {
            return CheckResult(name: "tls", verdict: .fail, detail: "handshake failed: \(Self.string(&r.error_text))",
                               hint: caFile.map { _ in "check [hub] ca_file and that the port speaks TLS" } ?? "is this the hub's AMQPS port (5671)? A proxy or firewall may intercept TLS")
        }
        let now = WallClock.nowMilliseconds() / 1000
        let days = (r.not_after - now) / 86_400
        let subject = Self.string(&r.subject)
        guard r.verify_result == 0 else {
            let why = Self.string(&r.verify_text)
            let hint = r.not_before > now ? "the certificate is not valid yet: is the clock right?"
                : why.contains("hostname") ? "[hub] host must be the name in the hub's certificate (the connection string's HostName)"
                : "the certificate must chain to \(trust): set [hub] ca_file to the CA that issued it"
            return CheckResult(name: "tls", verdict: .fail, detail: "\(subject): \(why) (trusting \(trust))", hint: hint)
        }
        let detail = "\(Self.string(&r.protocol)), \(subject) verified for \(hostName) against \(trust), expires in \(days) days"
        if days < 14 {
            return CheckResult(name: "tls", verdict: .warn, detail: detail, hint: "the hub's certificate expires soon")
        }
        return CheckResult(name: "tls", verdict: .pass, detail: detail)
    }

    /// One AMQP connection, a put-token per identity; nothing attached.
    func credentials(_ settings: GatewaySettings, overWebSocket: Bool) async -> CheckResult {
        let reactor = AMQPReactor()
        let result = await credentials(settings, reactor: reactor, overWebSocket: overWebSocket)
        await reactor.shutdown()
        return result
    }

    private func credentials(_ settings: GatewaySettings, reactor: AMQPReactor, overWebSocket: Bool) async -> CheckResult {
        // X.509 identities authenticate at TLS on connections of their own: no token to put here.
        let identities = ([settings.gatewayLeaf] + (allLeaves ? settings.leaves : Array(settings.leaves.prefix(sample))))
            .filter { !$0.credential.isCertificate }
        guard !identities.isEmpty else {
            return CheckResult(name: "credentials", verdict: .skip, detail: "the gateway authenticates with its X.509 certificate (checked at its first connection)")
        }
        let tls: AMQPClientTLS?
        switch settings.uplink.transport {
        case .tls(let t): tls = AMQPClientTLS(trustedCAFile: t.caFile, peerHostname: settings.uplink.hostName, verifyPeer: t.verifyHostName)
        case .insecurePlainAMQP: tls = nil
        }
        var refused: [String] = []
        let expiry = WallClock.nowMilliseconds() / 1000 + 300
        // The hub takes about a thousand tokens per connection (the uplink splits leaves the same way).
        let chunks = stride(from: 0, to: identities.count, by: Self.tokensPerConnection).map { Array(identities[$0..<min($0 + Self.tokensPerConnection, identities.count)]) }
        for chunk in chunks {
            let connection: DeviceConnection
            do {
                connection = try await firstOf(seconds: Int(timeoutSeconds) * (overWebSocket ? 3 : 2)) {
                    if overWebSocket {
                        return try await DeviceConnection.connect(reactor: reactor, stream: WebSocketTunnel(configuration: settings.uplink.tunnelConfiguration()),
                                                                  hostName: settings.uplink.hostName)
                    }
                    let (host, port) = settings.uplink.endpoint(for: settings.uplink.hostName)
                    return try await DeviceConnection.connect(reactor: reactor, host: host, port: port, hostName: settings.uplink.hostName, tls: tls)
                }
            } catch {
                return CheckResult(name: "credentials", verdict: .fail, detail: "the AMQP connection failed: \(error)",
                                   hint: overWebSocket ? "see the websocket line above" : "is this the hub's AMQPS port? See the tls line above")
            }
            for leaf in chunk {
                let who = leaf.deviceID == settings.gatewayLeaf.deviceID ? "gateway \(leaf.deviceID)" : "leaf \(leaf.deviceID)"
                do {
                    let token = try settings.uplink.sasToken(for: leaf, expiry: expiry)
                    let audience = settings.uplink.cbsAudience(for: leaf)
                    let answer = try await firstOf(seconds: Int(timeoutSeconds)) { try await connection.putToken(token, audience: audience) }
                    if answer.status != 200 { refused.append("\(who): \(answer.status) \(answer.description)") }
                } catch {
                    refused.append("\(who): \(error)")
                }
            }
            connection.close()
        }
        let scope = allLeaves || settings.leaves.count <= sample ? "" : " (a sample: the gateway and the first \(sample) of \(settings.leaves.count) leaves; --all-leaves checks every one)"
        guard refused.isEmpty else {
            return CheckResult(name: "credentials", verdict: .fail, detail: "\(refused.count) of \(identities.count) refused\(scope):\n  " + refused.joined(separator: "\n  "),
                               hint: "401: the key is wrong, or the device is disabled; 404: the device does not exist in this hub. Copy its connection string again (az iot hub device-identity connection-string show) and run fieldgatectl leaf add or connect")
        }
        let accepted = identities.count == 1 ? "the gateway's credentials" : "the credentials of all \(identities.count) identities (the gateway and \(identities.count - 1) leaves)"
        return CheckResult(name: "credentials", verdict: .pass, detail: "the hub accepted \(accepted)\(scope)")
    }

    static let tokensPerConnection = 900

    // MARK: helpers

    private static func isMember(_ user: passwd, of gid: gid_t) -> Bool {
        guard let group = getgrgid(gid)?.pointee, var member = group.gr_mem else { return false }
        let name = String(cString: user.pw_name)
        while let m = member.pointee {
            if String(cString: m) == name { return true }
            member += 1
        }
        return false
    }

    private static func owner(_ st: stat) -> String {
        let user = getpwuid(st.st_uid).map { String(cString: $0.pointee.pw_name) } ?? String(st.st_uid)
        let group = getgrgid(st.st_gid).map { String(cString: $0.pointee.gr_name) } ?? String(st.st_gid)
        return "\(user):\(group)"
    }

    static func text(_ address: sockaddr_storage) -> String {
        var address = address
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        let length = socklen_t(address.ss_family == sa_family_t(AF_INET6) ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getnameinfo($0, length, &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST) }
        }
        return String(cString: host)
    }

    private static func string<T>(_ tuple: inout T) -> String {
        withUnsafeBytes(of: &tuple) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    /// A command's trimmed stdout, or nil when it cannot run.
    static func output(_ argv: [String]) -> String? {
        guard let r = HostCommand.capture(argv), r.status == 0 else { return nil }
        return r.output.trimmed()
    }
}

/// `body`'s result, or a timeout error after `seconds`, whichever comes first. Unlike a task group it does not wait
/// for `body` to give up: a peer that never answers (an AMQP Open, a put-token) leaves only a task behind, which
/// ends with the process.
func firstOf<T: Sendable>(seconds: Int, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        let once = ResumeOnce(continuation)
        Task {
            do { once.resume(with: .success(try await body())) } catch { once.resume(with: .failure(error)) }
        }
        Task {
            try? await Task.sleep(for: .seconds(seconds))
            once.resume(with: .failure(CheckTimeout(seconds: seconds)))
        }
    }
}

/// A continuation resumed by whichever of several racers comes first.
private final class ResumeOnce<T: Sendable>: Sendable {
    private let continuation: Mutex<CheckedContinuation<T, any Error>?>
    init(_ c: CheckedContinuation<T, any Error>) { continuation = Mutex(c) }
    func resume(with result: Result<T, any Error>) {
        continuation.withLock { c in defer { c = nil }; return c }?.resume(with: result)
    }
}

struct CheckTimeout: Error, CustomStringConvertible {
    var seconds: Int
    var description: String { "no answer within \(seconds) s" }
}
