import FieldgateCore
import HubTunnel
import IoTHub

/// How the uplink reaches the hub, paces itself and drains the spool. Owned by the Uplink module; the daemon's
/// config file maps onto it. Defaults follow the client profile (docs/iothub-protocol.md §14).
public struct UplinkConfiguration: Sendable, Equatable {
    /// The hub's host name: tokens name it, TLS verifies it (SNI too). Required.
    public var hostName: String
    /// Where to connect; default: `hostName`. Re-resolved on every reconnect.
    public var address: String?
    /// Further hubs (`[hub] hosts`) to move to, in turn, when the one in use cannot be reached; each must know the
    /// leaves. Tokens, TLS and the Open name whichever host is in use. Default: none.
    public var fallbackHosts: [String] = []
    /// AMQPS port. Default: 5671.
    public var port = 5671
    public var transport: Transport = .tls(TLS())
    /// AMQPS, AMQP over WebSockets (443), or AMQPS falling back to WebSockets. Default: `.auto`.
    public var route: RoutePolicy = .auto
    /// Where the WebSocket endpoint is and which proxy leads there.
    public var webSocket = WebSocketSettings()
    /// Failed connects on one route (host and transport) before the next is tried: the WebSocket fallback, then
    /// the next host. Default: 3.
    public var failuresBeforeNextRoute = 3
    /// Idle timeout we advertise; the hub must send something this often. Proton sends heartbeats at half of
    /// the hub's advertised idle timeout. Default: 240 s.
    public var idleTimeoutMilliseconds: UInt32 = 240_000
    /// Reconnect back-off after a connection failure. Default: 100 ms → 10 s.
    public var reconnectBackoff = Backoff(initialMilliseconds: 100, maximumMilliseconds: 10_000)
    /// A leaf's retry after a transient link or put-token failure. Default: 100 ms → 10 s.
    public var leafBackoff = Backoff(initialMilliseconds: 100, maximumMilliseconds: 10_000)
    /// A throttled leaf's pause. Default: 10 s → 60 s.
    public var throttleBackoff = Backoff(initialMilliseconds: 10_000, maximumMilliseconds: 60_000)
    /// A leaf the hub refuses (unknown, disabled, bad key): slow retry. Default: 30 s → 10 min.
    public var refusedBackoff = Backoff(initialMilliseconds: 30_000, maximumMilliseconds: 600_000)
    /// SAS token lifetime. Default: 1 h.
    public var tokenTTLSeconds: Int64 = 3600
    /// Tokens are renewed at this fraction of their lifetime, ± `tokenRenewJitter`. Default: 0.8 ± 0.05.
    public var tokenRenewFraction = 0.8
    public var tokenRenewJitter = 0.05
    /// No token is minted while the wall clock reads earlier than this (an unsynchronized clock after boot);
    /// after `clockWaitMilliseconds` the uplink goes ahead anyway, with an error in the log. Default: 2025-01-01.
    public var earliestPlausibleTimeMilliseconds: Int64 = 1_735_689_600_000
    public var clockWaitMilliseconds: Int64 = 120_000
    /// New leaf authentications (put-token + attaches) per second across all connections; nil = unpaced.
    /// Default: 20/s, well under the hub's device-connection throttle (S1: 100/s).
    public var attachesPerSecond: Double? = 20
    /// Leaves authenticating or attaching at once on one connection, whatever the pace allows. Proton keeps every
    /// delivery a connection ever had in flight at once, in a pool it frees only with the connection, and each attach
    /// has its put-token and answer, then its twin requests and answers, in flight: a thousand leaves admitted in
    /// bursts of 200 kept ~1 MB of pooled deliveries for good (`fieldgate-bench daemon-memory`: 33.4 → 32.4–32.7 MB
    /// with six links per leaf, the same from 8 to 64 at once). 32 still admit ~150 leaves a second at a 200 ms round
    /// trip, more than the hub's device-connection throttle (S1: 100/s a unit).
    public var attachingPerConnection = 32
    /// What `[hub] attaches_at_once` may say.
    public static let attachingPerConnectionRange = 1...1000
    /// Identities per AMQP connection; beyond it another connection opens. Default: 995 (hub limit ~999).
    public var maxIdentitiesPerConnection = 995
    /// The same cap for connections that may run over WebSockets (`route` `.webSocket` or `.auto`): the Azure SDKs
    /// multiplex at most 500 devices there, a limit their maintainers attribute to the service. Default: 500.
    public var maxIdentitiesPerWebSocketConnection = 500

    /// The cap that applies to this configuration's connections.
    var identitiesPerConnection: Int {
        route == .amqps ? maxIdentitiesPerConnection : min(maxIdentitiesPerConnection, maxIdentitiesPerWebSocketConnection)
    }
    /// Unsettled telemetry deliveries per leaf and in total. Default: 64 and 800. Proton keeps every delivery it
    /// ever had in flight at once pooled until the connection closes (~2–3.5 kB each with its buffers), so the total
    /// bounds memory as well as throughput: 800 carry 8,000 messages/s at a 100 ms round trip (IoT Hub's S3 unit
    /// throttles D2C at 6,000/s), and on loopback it delivers as fast as 1000 with ~0.8 MB less memory while
    /// draining; docs/performance.md has the figures at 500, 800, 1000 and 2000.
    public var maxInFlightPerLeaf = 64
    public var maxInFlightTotal = 800
    /// What `maxInFlightTotal` may be set to.
    public static let inFlightRange = 16...20_000
    /// Total D2C messages per second (the hub tier's quota); nil = unlimited.
    public var messagesPerSecond: Double?
    /// When the hub's daily message quota is spent, telemetry pauses until the hub resets it at 00:00 UTC; with
    /// this set, one message probes the hub this often before then (units may be added). nil = at the reset only.
    public var quotaProbeIntervalMilliseconds: Int64?
    /// How often one leaf asks again for the C2D, method or twin links the hub refused as not in its tier (Basic).
    /// Default: 6 h.
    public var tierRecheckMilliseconds: Int64 = 6 * 3_600_000
    /// Every identity (leaves and the gateway) sends an empty D2C message marked `heartbeat=true` this often;
    /// nil = off. Each costs a message of the daily quota: hourly, 24 per identity a day. Leaves may override it.
    public var heartbeatIntervalMilliseconds: Int64?
    /// Old backlogs go to the hub as files (file upload) instead of D2C messages; nil = off.
    public var offload: BacklogOffloadPolicy?
    /// Coalesce a leaf's queued JSON readings into one JSON-array message up to this size; nil = one message per
    /// reading. The hub bills D2C in 4 KB units, so 4000 is a good value; the hub's limit is 256 KB.
    public var coalesceTargetBytes: Int?
    /// What `coalesceTargetBytes` may be: one reading's worth up to the hub's limit less room for the properties.
    public static let coalesceRange = 512...(IoTHubAMQP.maxTelemetrySize - 1024)
    /// How C2D messages a leaf cannot take now are held, retried and left in the hub's queue (one message in
    /// flight per leaf, hub order; docs/cloud-to-device.md). Default: held up to 50 s (the hub's lock is 60 s).
    public var cloudToDevice = CloudToDevicePolicy()
    /// A method not answered by its handler within this time is answered 504 (the hub's default is 30 s).
    /// Default: 20 s.
    public var methodDeadlineMilliseconds: Int64 = 20_000
    /// At most one reported patch per leaf per this interval; patches in between are folded into one.
    /// Default: 1 s.
    public var reportedIntervalMilliseconds: Int64 = 1000
    /// An adapter that has not applied a desired document within this gets the next one anyway (what the late one
    /// returns is not reported). Default: 2 min.
    public var desiredApplyTimeoutMilliseconds: Int64 = 120_000
    /// Message ids remembered per leaf to drop C2D redeliveries. Default: 256.
    public var cloudToDeviceDedupeCapacity = 256
    /// Put-token and attach replies must arrive within this. Default: 30 s.
    public var operationTimeoutMilliseconds: Int64 = 30_000
    /// Link property `com.microsoft:client-version`.
    public var clientVersion = "fieldgate/0.1"

    public init(hostName: String) { self.hostName = hostName }

    public enum RoutePolicy: String, Sendable, Equatable {
        case amqps
        case webSocket = "amqps-websocket"
        /// AMQPS first; after `failuresBeforeNextRoute` failed connects, WebSockets, kept while they work.
        case auto
    }

    public struct WebSocketSettings: Sendable, Equatable {
        /// Default: 443.
        public var port = 443
        /// Default: `/$iothub/websocket`.
        public var path = "/$iothub/websocket"
        /// Default: the environment's `https_proxy` / `no_proxy`.
        public var proxy: ProxySetting = .environment
        /// A WebSocket ping after this much silence, for proxies that cut idle tunnels; nil: none. Default: 45 s.
        public var pingIntervalMilliseconds: Int? = 45_000
        public init() {}
    }

    /// The WebSocket tunnel to `host` (the configured host unless given) as these settings say.
    public func tunnelConfiguration(host: String? = nil) -> WebSocketTunnelConfiguration {
        let host = host ?? hostName
        var tunnel = WebSocketTunnelConfiguration(hostName: host)
        tunnel.port = webSocket.port
        tunnel.path = webSocket.path
        // `address` overrides where the configured (first) host is reached, `hostAddresses` where others are.
        tunnel.address = host == hostName ? address : hostAddresses[host].map { _ in endpoint(for: host).address }
        tunnel.proxy = webSocket.proxy
        tunnel.pingIntervalMilliseconds = webSocket.pingIntervalMilliseconds
        tunnel.connectTimeoutMilliseconds = Int(operationTimeoutMilliseconds)
        tunnel.userAgent = clientVersion
        if case .tls(let tls) = transport {
            tunnel.caFile = tls.caFile
            tunnel.verifyPeer = tls.verifyHostName
        }
        return tunnel
    }

    /// Where hubs other than the configured one are reached: host name → `address` or `address:port` (AMQPS). For
    /// split DNS and private endpoints; TLS still checks the host name. Default: none (resolved by name, `port`).
    public var hostAddresses: [String: String] = [:]

    /// Where a connection to `host` goes: the configured `address` for the configured host, `hostAddresses` for
    /// others, the host's own name otherwise; the AMQPS port unless the address names one.
    public func endpoint(for host: String) -> (address: String, port: Int) {
        if host == hostName, let address { return (address, port) }
        guard let mapped = hostAddresses[host] else { return (host, port) }
        // "[v6]:port" and "[v6]": the brackets go; a bare IPv6 address (several colons) has no port.
        if mapped.hasPrefix("["), let close = mapped.firstIndex(of: "]") {
            let address = String(mapped[mapped.index(after: mapped.startIndex)..<close])
            let rest = mapped[mapped.index(after: close)...]
            return (address, rest.hasPrefix(":") ? Int(rest.dropFirst()) ?? port : port)
        }
        if let colon = mapped.lastIndex(of: ":"), mapped.firstIndex(of: ":") == colon, let p = Int(mapped[mapped.index(after: colon)...]) {
            return (String(mapped[..<colon]), p)
        }
        return (mapped, port)
    }

    /// The routes of a connection to `host`: the configured routes (with fallback hosts) for the configured hub, the
    /// transports alone for a hub an identity was assigned to.
    public func routes(for host: String?) -> [HubRoute] {
        guard let host, host != hostName else { return routes }
        let kinds: [HubRoute.Kind] = switch route {
        case .amqps: [.amqps]
        case .webSocket: [.webSocket]
        case .auto: [.amqps, .webSocket]
        }
        return kinds.map { HubRoute(host: host, kind: $0) }
    }

    /// Every (host, transport) pair the uplink may use, in the order it tries them.
    public var routes: [HubRoute] {
        let kinds: [HubRoute.Kind] = switch route {
        case .amqps: [.amqps]
        case .webSocket: [.webSocket]
        case .auto: [.amqps, .webSocket]
        }
        var hosts = [hostName]
        for h in fallbackHosts where !hosts.contains(h) { hosts.append(h) }
        return hosts.flatMap { host in kinds.map { HubRoute(host: host, kind: $0) } }
    }

    public enum Transport: Sendable, Equatable {
        case tls(TLS)
        /// Plain AMQP (no TLS): only for tests against a local emulator. Never the default.
        case insecurePlainAMQP
    }

    public struct TLS: Sendable, Equatable {
        /// PEM bundle of trusted CAs; nil = the system's store.
        public var caFile: String?
        /// Verify the hub's certificate and host name. Turning it off is for tests only.
        public var verifyHostName = true
        public init(caFile: String? = nil, verifyHostName: Bool = true) {
            self.caFile = caFile
            self.verifyHostName = verifyHostName
        }
    }
}

/// One leaf identity the uplink carries.
public struct LeafConfiguration: Sendable, Equatable {
    public var deviceID: String
    public var credential: LeafCredential
    /// Which of C2D, methods and twin this leaf has (links are attached for them when the uplink has a router).
    /// Default: all.
    public var capabilities: LeafCapabilities = .all
    /// This leaf's heartbeat interval: nil = the uplink's, 0 = none for this leaf.
    public var heartbeatIntervalMilliseconds: Int64?
    /// The hub this identity belongs to (its provisioning assignment); nil = the configured hub. Identities of
    /// different hubs never share a connection.
    public var hubHost: String?

    public init(deviceID: String, credential: LeafCredential, capabilities: LeafCapabilities = .all, heartbeatIntervalMilliseconds: Int64? = nil) {
        self.deviceID = deviceID
        self.credential = credential
        self.capabilities = capabilities
        self.heartbeatIntervalMilliseconds = heartbeatIntervalMilliseconds
    }
}

public enum LeafCredential: Sendable, Equatable {
    /// The device's own keys; the secondary is tried when the hub refuses the primary.
    case symmetricKey(primary: String, secondary: String?)
    /// A hub policy with DeviceConnect (usually `device`), tokens carrying `skn`. `.device` scope: one token per
    /// leaf (`sr={host}/devices/{id}`); `.hub` scope: one token per connection (`sr={host}/devices`) covering every
    /// leaf that uses the policy, so a connection is not bound by the hub's ~999 tokens (docs/iothub-protocol.md §2.2).
    case sharedAccessPolicy(name: String, key: String, scope: PolicyScope = .device)
    /// A group (enrollment) key: the device key is HMAC-SHA256(group key, device id), as DPS derives it.
    case groupKey(String)
    /// An X.509 certificate (PEM, with its chain) and its private key: the identity authenticates at TLS, with no
    /// token, on an AMQP connection of its own (a TLS session presents one certificate, so it cannot be multiplexed).
    case x509(certificateFile: String, keyFile: String)

    /// The identity authenticates with a client certificate.
    public var isCertificate: Bool {
        if case .x509 = self { return true }
        return false
    }
}

public enum PolicyScope: Sendable, Equatable {
    case device, hub
}

/// One way to the hub: which host, over which transport.
public struct HubRoute: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable { case amqps, webSocket = "amqps-websocket" }
    public var host: String
    public var kind: Kind
    public var description: String { "\(host) over \(kind == .amqps ? "AMQPS" : "AMQP over WebSockets")" }
}
