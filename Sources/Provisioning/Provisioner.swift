import FieldgateCore
import HubTunnel
import IoTHub
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// How fieldgated provisions its identities through the Device Provisioning Service. Owned by this module; the
/// configuration's `[provisioning]` maps onto it.
public struct ProvisioningConfiguration: Sendable, Equatable {
    /// DPS's global endpoint, `host` or `host:port`. Default: global.azure-devices-provisioning.net.
    public var endpoint = "global.azure-devices-provisioning.net"
    public var idScope: String
    /// Where assignments are kept (under the state directory).
    public var storePath: String
    /// New registrations per second across all identities. Default: 10.
    public var registrationsPerSecond: Double = 10
    /// Registrations in progress at once (each mostly waits for DPS's Retry-After). Default: 32.
    public var maxConcurrent = 32
    /// TLS, proxy and timeout of the HTTPS requests.
    public var https = HTTPSSettings()
    /// Sent with every registration (DPS hands it to custom allocation and returns it with the assignment); nil: none.
    public var payload: JSONValue?
    /// Register every identity again at each start instead of reusing stored assignments. Default: false.
    public var reprovisionOnStart = false
    /// An identity DPS refused (unknown enrollment, bad key) is tried again after this back-off. Default: 1 min → 1 h.
    public var refusedBackoff = Backoff(initialMilliseconds: 60_000, maximumMilliseconds: 3_600_000)
    /// An attempt that failed for now (no answer, 429, 5xx) is tried again after this back-off. Default: 5 s → 5 min.
    public var failureBackoff = Backoff(initialMilliseconds: 5_000, maximumMilliseconds: 300_000)
    /// A hub refusing an assigned identity (unknown device, bad key) registers it again, at most this often.
    /// Default: 5 min.
    public var reprovisionIntervalMilliseconds: Int64 = 300_000
    public var userAgent = "fieldgate/0.1"

    public init(idScope: String, storePath: String) {
        self.idScope = idScope
        self.storePath = storePath
    }
}

/// An identity that registers with DPS: its registration id (its device id) and how it proves itself.
public struct ProvisioningIdentity: Sendable, Equatable {
    public enum Attestation: Sendable, Equatable {
        /// Its symmetric key (for a group enrollment, the key derived for this id): a SAS token on each request.
        case symmetricKey(String)
        /// Its X.509 certificate at TLS; the registration id is the certificate's subject CN.
        case x509(certificateFile: String, keyFile: String)
    }
    public let registrationID: String
    public let attestation: Attestation
    /// What the stored assignment remembers of the credential: a new key, or a certificate renewed in place (read
    /// when the identity is made: at start and at each reload), registers again.
    let fingerprint: String

    public init(registrationID: String, key: String) {
        self.init(registrationID: registrationID, attestation: .symmetricKey(key))
    }

    public init(registrationID: String, attestation: Attestation) {
        self.registrationID = registrationID
        self.attestation = attestation
        switch attestation {
        case .symmetricKey(let key):
            fingerprint = AssignmentStore.fingerprint(ofKey: key)
        case .x509(let certificate, _):
            let pem = StateFile.read(certificate, limit: 1 << 20).map { String(decoding: $0, as: UTF8.self) } ?? certificate
            fingerprint = "x509:" + AssignmentStore.fingerprint(ofKey: pem)
        }
    }
}

/// Where one identity stands with DPS, for `fieldgatectl status` and the log.
public struct ProvisioningStatus: Sendable, Equatable {
    public enum Phase: String, Sendable { case assigned, registering, waiting, refused }
    public var phase: Phase
    public var hub: String?
    public var lastError: String?
}

/// Registers identities with DPS in the background (paced, several at once) and hands each assignment to
/// `onAssigned`, which moves the identity onto a connection to its hub. Identities with a stored assignment are not
/// registered again unless the hub refuses them (`reprovision`) or the settings or key changed. Blocking HTTPS calls
/// run on dispatch threads, never the cooperative pool.
public final class Provisioner: Sendable {
    public let configuration: ProvisioningConfiguration
    private let logger: Logger
    private let onAssigned: @Sendable ([String: Assignment]) async -> Void
    private let state: Mutex<State>
    private let loop = Mutex<Task<Void, Never>?>(nil)
    /// Cuts the HTTPS requests in progress when the provisioner stops.
    private let cancellation = HTTPSCancellation()

    private struct Pending {
        var identity: ProvisioningIdentity
        var notBeforeMs: Int64 = 0
        var attempts = 0
        var lastError: String?
        var refused = false
    }

    private struct State {
        var store: AssignmentStore
        var identities: [String: ProvisioningIdentity] = [:]
        var pending: [String: Pending] = [:]
        var running: [String: Task<Void, Never>] = [:]
        /// Assignments made since `onAssigned` was last called.
        var fresh: [String: Assignment] = [:]
        var storeDirty = false
        var lastReprovisionMs: [String: Int64] = [:]
        /// `set(identities:)` ran once.
        var configured = false
        var stopped = false
    }

    public init(configuration: ProvisioningConfiguration, logger: Logger,
                onAssigned: @escaping @Sendable ([String: Assignment]) async -> Void) {
        self.configuration = configuration
        self.logger = logger
        self.onAssigned = onAssigned
        let store = AssignmentStore(path: configuration.storePath)
        if let problem = store.loadProblem { logger.warning("provisioning: \(problem)") }
        state = Mutex(State(store: store))
    }

    /// The identities to provision (the gateway and its leaves): the stored assignments that hold for them come back
    /// at once; the others (all of them with `reprovisionOnStart`) are queued for registration when `start` runs.
    @discardableResult
    public func set(identities: [ProvisioningIdentity]) -> [String: Assignment] {
        let c = configuration
        return state.withLock { s in
            s.identities = Dictionary(identities.map { ($0.registrationID, $0) }, uniquingKeysWith: { a, _ in a })
            var assigned: [String: Assignment] = [:]
            for id in s.pending.keys where s.identities[id] == nil { s.pending[id] = nil }
            // `reprovisionOnStart` applies to the first call only: later ones (reloads) reuse what this start stored.
            let reuse = !c.reprovisionOnStart || s.configured
            s.configured = true
            for identity in identities {
                let id = identity.registrationID
                if reuse, let a = s.store.assignment(for: id, idScope: c.idScope, endpoint: c.endpoint, keyFingerprint: identity.fingerprint) {
                    assigned[id] = a
                } else if var p = s.pending[id] {
                    // Waiting (or registering) with what may be an old key: the next attempt uses this one, at once
                    // when the credential changed (a fixed key should not wait out the old one's refusal).
                    if p.identity != identity { p.notBeforeMs = 0; p.attempts = 0 }
                    p.identity = identity
                    s.pending[id] = p
                } else {
                    if !reuse { s.store.forget(id); s.storeDirty = true }
                    s.pending[id] = Pending(identity: identity)
                }
            }
            return assigned
        }
    }

    /// Every assignment that holds now, by registration id.
    public var assignments: [String: Assignment] {
        let c = configuration
        return state.withLock { s in
            var out: [String: Assignment] = [:]
            for (id, identity) in s.identities where s.pending[id] == nil && s.running[id] == nil {
                if let a = s.store.assignment(for: id, idScope: c.idScope, endpoint: c.endpoint, keyFingerprint: identity.fingerprint) { out[id] = a }
            }
            return out
        }
    }

    public var status: [String: ProvisioningStatus] {
        let all = assignments
        return state.withLock { s in
            var out: [String: ProvisioningStatus] = [:]
            for id in s.identities.keys {
                if let a = all[id] { out[id] = ProvisioningStatus(phase: .assigned, hub: a.hub) }
                else if s.running[id] != nil { out[id] = ProvisioningStatus(phase: .registering, lastError: s.pending[id]?.lastError) }
                else if let p = s.pending[id] { out[id] = ProvisioningStatus(phase: p.refused ? .refused : .waiting, lastError: p.lastError) }
            }
            return out
        }
    }

    /// The hub refused these assigned identities as unknown or unauthorized (a device deleted from its hub, moved to
    /// another hub, or given new keys): they register again, each at most once per `reprovisionIntervalMilliseconds`.
    /// Returns those queued.
    @discardableResult
    public func reprovision(_ ids: [String], reason: String, nowMs: Int64 = WallClock.nowMilliseconds()) -> [String] {
        let queued: [String] = state.withLock { s in
            var queued: [String] = []
            for id in ids {
                guard let identity = s.identities[id], s.pending[id] == nil, s.running[id] == nil else { continue }
                if let last = s.lastReprovisionMs[id], nowMs - last < configuration.reprovisionIntervalMilliseconds { continue }
                s.lastReprovisionMs[id] = nowMs
                s.store.forget(id)
                s.storeDirty = true
                s.pending[id] = Pending(identity: identity)
                queued.append(id)
            }
            return queued
        }
        if !queued.isEmpty { logger.notice("provisioning: registering \(queued.count) identities again (\(reason)): \(queued.prefix(5).joined(separator: ", "))\(queued.count > 5 ? ", …" : "")") }
        return queued
    }

    // MARK: running

    public func start() {
        loop.withLock { task in
            guard task == nil else { return }
            task = Task { [self] in await run() }
        }
    }

    public func stop() async {
        let task = loop.withLock { $0 }
        let running = state.withLock { s in
            s.stopped = true
            return Array(s.running.values)
        }
        task?.cancel()
        for r in running { r.cancel() }
        cancellation.cancel()
        await task?.value
        for r in running { await r.value }
        flushStore()
    }

    private func run() async {
        let interval = max(1, Int64(1000 / max(configuration.registrationsPerSecond, 0.01)))
        var nextStartMs: Int64 = 0
        while !Task.isCancelled {
            let now = MonotonicClock.milliseconds()
            if now >= nextStartMs, startDue(nowMs: WallClock.nowMilliseconds()) {
                nextStartMs = now + interval
                continue
            }
            await deliverFresh()
            try? await Task.sleep(for: .milliseconds(min(max(nextStartMs - now, 20), 200)))
        }
        await deliverFresh()
    }

    /// Starts the registration of the next identity whose time has come, unless as many as allowed are running.
    /// The task is recorded under the same lock, so its end (which removes it) cannot come first, and `stop` sees it.
    private func startDue(nowMs: Int64) -> Bool {
        state.withLock { s in
            guard !s.stopped, s.running.count < configuration.maxConcurrent else { return false }
            let due = s.pending.values.filter { $0.notBeforeMs <= nowMs && s.running[$0.identity.registrationID] == nil }
            guard let identity = due.min(by: { ($0.notBeforeMs, $0.identity.registrationID) < ($1.notBeforeMs, $1.identity.registrationID) })?.identity
            else { return false }
            s.running[identity.registrationID] = Task { [self] in await register(identity) }
            return true
        }
    }

    /// Saves the store and hands the new assignments over, from the loop only (so they arrive in order).
    private func deliverFresh() async {
        let fresh = state.withLock { s in defer { s.fresh = [:] }; return s.fresh }
        guard !fresh.isEmpty else { return }
        flushStore()
        await onAssigned(fresh)
    }

    private func flushStore() {
        let store = state.withLock { s -> AssignmentStore? in
            guard s.storeDirty else { return nil }
            s.storeDirty = false
            return s.store
        }
        guard let store else { return }
        if let e = store.save() {
            state.withLock { $0.storeDirty = true }
            logger.error("provisioning: cannot save \(store.path): \(String(cString: strerror(e))); assignments are kept in memory and registered again after a restart")
        }
    }

    private func register(_ identity: ProvisioningIdentity) async {
        let c = configuration
        var settings = RegistrationFlow.Settings(endpoint: c.endpoint, idScope: c.idScope)
        settings.userAgent = c.userAgent
        var https = c.https
        let key: String?
        switch identity.attestation {
        case .symmetricKey(let k): key = k
        case .x509(let certificate, let privateKey):
            key = nil
            https.clientCertificateFile = certificate
            https.clientKeyFile = privateKey
        }
        var flow = RegistrationFlow(settings: settings, registrationID: identity.registrationID, key: key, payload: c.payload)
        var action = flow.start(nowSeconds: WallClock.nowMilliseconds() / 1000)
        let outcome: Result<Assignment, ProvisioningFailure>
        while true {
            switch action {
            case .assigned(let a):
                outcome = .success(a)
            case .failed(let f):
                outcome = .failure(f)
            case .send(let request, let after):
                if after > 0 { try? await Task.sleep(for: .milliseconds(after)) }
                if Task.isCancelled {
                    state.withLock { _ = $0.running.removeValue(forKey: identity.registrationID) }
                    return
                }
                let result = await offCooperativePool { [https, cancellation] in
                    HTTPSClient.perform(request.method, request.url, headers: request.headers.sorted { $0.key < $1.key }, body: request.body,
                                        settings: https, cancellation: cancellation)
                }
                let now = WallClock.nowMilliseconds() / 1000
                switch result {
                case .success(let r): action = flow.received(status: r.status, body: r.json, retryAfterSeconds: r.retryAfterSeconds, nowSeconds: now)
                case .failure(let e): action = flow.received(status: 0, body: nil, retryAfterSeconds: nil, error: e.message, nowSeconds: now)
                }
                continue
            }
            break
        }
        finish(identity, outcome)
    }

    private func finish(_ identity: ProvisioningIdentity, _ outcome: Result<Assignment, ProvisioningFailure>) {
        let c = configuration
        let id = identity.registrationID
        let nowMs = WallClock.nowMilliseconds()
        switch outcome {
        case .success(let a) where a.deviceID != id:
            // Readings, twins and keys are kept by device id: an enrollment that renames the device cannot be served.
            let failure = ProvisioningFailure(refused: true, "\(id): the enrollment assigns the device id \(a.deviceID); fieldgate needs it equal to the registration id (leave the enrollment's device id empty or set it to \(id))")
            finish(identity, .failure(failure))
        case .success(let a):
            let current = state.withLock { s -> Bool in
                s.running[id] = nil
                guard s.identities[id] == identity else {
                    // Reconfigured meanwhile (a new key or certificate): its pending entry registers it again at once.
                    if s.identities[id] == nil { s.pending[id] = nil } else { s.pending[id]?.notBeforeMs = 0 }
                    return false
                }
                s.pending[id] = nil
                s.store.record(a, for: id, idScope: c.idScope, endpoint: c.endpoint, keyFingerprint: identity.fingerprint, nowMilliseconds: nowMs)
                s.storeDirty = true
                s.fresh[id] = a
                return true
            }
            if current { logger.info("provisioning: \(id) assigned to \(a.hub)") }
        case .failure(let f):
            let delay: Int64? = state.withLock { s in
                s.running[id] = nil
                guard var p = s.pending[id] else { return nil }  // no longer configured
                // Reconfigured meanwhile: the new credential is tried at once, not after this one's back-off.
                guard p.identity == identity else { p.notBeforeMs = 0; s.pending[id] = p; return nil }
                p.attempts += 1
                p.lastError = f.message
                p.refused = f.refused
                let backoff = f.refused ? c.refusedBackoff : c.failureBackoff
                let delay = backoff.delay(attempt: p.attempts, random: Double.random(in: 0..<1))
                p.notBeforeMs = nowMs + delay
                s.pending[id] = p
                return delay
            }
            if let delay { logger.log(level: f.refused ? .error : .warning, "provisioning: \(f.message); trying again in \(delay / 1000) s") }
        }
    }
}
