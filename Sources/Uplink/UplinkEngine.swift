import FieldgateCore
import IoTHub
import Logging
import ProtonAMQP
import Spool

/// The reactor-thread heart of the uplink: the shards, the attach pacer, the D2C rate limit, and the spool pump
/// that feeds ready leaves fairly. Every method runs on the reactor thread.
// @unchecked Sendable: it is captured by jobs that run on the reactor thread, the only thread that touches it.
final class UplinkEngine: @unchecked Sendable {
    let configuration: UplinkConfiguration
    let reactor: AMQPReactor
    let logger: Logger
    let nowMs: @Sendable () -> Int64
    let random: @Sendable () -> Double
    let pump: SpoolPump
    private let router: (any LeafRouter)?
    private(set) var shards: [Shard] = []
    private var leafShard: [String: Int] = [:]

    private var pacer: TokenBucket?
    private var sendLimiter: TokenBucket?
    /// Priority messages (heartbeats) go ahead of a backlog, but within half the rate: telemetry keeps the rest.
    private var priorityLimiter: TokenBucket?
    private var sendLimitedAtMs: Int64?
    private var ticker: AMQPTimer?
    private let tickMilliseconds = 50
    /// The reactor thread's proof of life: it ticks whether or not the hub is reachable.
    let heartbeat = Heartbeat("uplink")

    private var pumpBusy = false
    /// The running fetch's leaves, with their release generation when it started (`LeafRuntime.releaseGeneration`);
    /// the runtime's identity too, since a reload may replace a leaf's runtime (whose count starts again).
    private var fetchGenerations: [String: (leaf: ObjectIdentifier, generation: Int)] = [:]
    private var settlements = SpoolPump.Job()
    /// The last fetch found nothing: do not ask again before the next tick or wake-up.
    private var spoolLooksEmpty = false
    /// A wake-up came while a job ran: its empty fetch must not mark the spool empty.
    private var wokenWhileBusy = false
    private(set) var stopping = false

    private var clockWarned = false
    private var clockGaveUp = false

    /// The hub's daily message quota: when it is spent, telemetry pauses for every leaf.
    private(set) var quota: DailyQuotaPause

    init(configuration: UplinkConfiguration, leaves: [LeafConfiguration], spool: Spool, router: (any LeafRouter)?,
         reactor: AMQPReactor, logger: Logger, nowMs: @escaping @Sendable () -> Int64, random: @escaping @Sendable () -> Double) {
        self.configuration = configuration
        self.reactor = reactor
        self.logger = logger
        self.nowMs = nowMs
        self.random = random
        self.router = router
        self.pump = SpoolPump(spool: spool, coalesceTargetBytes: configuration.coalesceTargetBytes, logger: logger)
        // A small burst: any one-second window then sees at most 1.2 × the rate (the hub counts per second).
        self.pacer = configuration.attachesPerSecond.map { TokenBucket(ratePerSecond: $0, burst: $0 / 5) }
        self.sendLimiter = configuration.messagesPerSecond.map { TokenBucket(ratePerSecond: $0) }
        self.priorityLimiter = configuration.messagesPerSecond.map { TokenBucket(ratePerSecond: $0 / 2) }
        self.quota = DailyQuotaPause(probeIntervalMilliseconds: configuration.quotaProbeIntervalMilliseconds)
        for chunk in Self.partition(leaves, maxTokens: configuration.identitiesPerConnection, configuredHost: configuration.hostName) {
            addShard(chunk.map(makeRuntime), hubHost: chunk.first?.hubHost)
        }
    }

    private func makeRuntime(_ leaf: LeafConfiguration) -> LeafRuntime {
        let c = configuration
        let timing = LeafMachine.Timing(
            tokenTTLMilliseconds: c.tokenTTLSeconds * 1000, renewFraction: c.tokenRenewFraction, renewJitter: c.tokenRenewJitter,
            leafBackoff: c.leafBackoff, throttleBackoff: c.throttleBackoff, refusedBackoff: c.refusedBackoff,
            operationTimeoutMilliseconds: c.operationTimeoutMilliseconds)
        return LeafRuntime(configuration: leaf, machine: LeafMachine(hasSecondaryKey: leaf.credential.hasSecondaryKey,
                                                                     authenticatesAtTLS: leaf.credential.isCertificate, timing: timing),
                           dedupeCapacity: c.cloudToDeviceDedupeCapacity, capabilities: router == nil ? [] : leaf.capabilities,
                           reportedIntervalMilliseconds: c.reportedIntervalMilliseconds, cloudToDevicePolicy: c.cloudToDevice,
                           heartbeatIntervalMilliseconds: leaf.heartbeatIntervalMilliseconds ?? c.heartbeatIntervalMilliseconds)
    }

    @discardableResult
    private func addShard(_ runtimes: [LeafRuntime], hubHost: String?) -> Shard {
        let index = shards.count
        for leaf in runtimes { leafShard[leaf.deviceID] = index }
        // A certificate identity's connection presents its certificate at TLS on either route (AMQPS or WebSockets).
        let routes = configuration.routes(for: hubHost)
        let shard = Shard(engine: self, index: index, hubHost: hubHost, leaves: runtimes,
                          connectionMachine: ConnectionMachine(backoff: configuration.reconnectBackoff,
                                                               connectTimeoutMilliseconds: configuration.operationTimeoutMilliseconds,
                                                               routes: routes.isEmpty ? [HubRoute(host: hubHost ?? configuration.hostName, kind: .amqps)] : routes,
                                                               failuresBeforeNextRoute: configuration.failuresBeforeNextRoute))
        shards.append(shard)
        return shard
    }

    /// Applies a new leaf list without touching the connections (reload): removed leaves detach, changed ones
    /// (credential, capabilities) detach and attach again, new ones join a connection with room for their token
    /// (a new connection beyond that).
    func reconfigure(_ leaves: [LeafConfiguration]) -> LeafChanges {
        var current: [String: LeafConfiguration] = [:]
        for shard in shards { for (id, leaf) in shard.leaves { current[id] = leaf.configuration } }
        let wanted = Dictionary(leaves.map { ($0.deviceID, $0) }, uniquingKeysWith: { a, _ in a })
        var changes = LeafChanges()
        for (id, old) in current.sorted(by: { $0.key < $1.key }) {
            guard wanted[id] != old else { continue }
            // A changed leaf comes back at once (below): its counts go on. A removed one's are forgotten.
            let changed = wanted[id] != nil
            if let s = leafShard.removeValue(forKey: id) { shards[s].withConnection { $0.removeLeaf(id, keepingCounters: changed) } }
            desiredWaiting[id] = nil  // for the leaf that left; a changed one gets its twin again when it attaches
            if wanted[id] == nil { changes.removed.append(id) } else { changes.changed.append(id) }
        }
        for leaf in leaves where current[leaf.deviceID] != leaf {
            if current[leaf.deviceID] == nil { changes.added.append(leaf.deviceID) }
            let cost = leaf.hubScopePolicy.map { p in shards.contains { $0.leaves.values.contains { $0.configuration.hubScopePolicy == p } } ? 0 : 1 } ?? 1
            let host = Self.hubKey(leaf.hubHost, configured: configuration.hostName)
            if !leaf.credential.isCertificate, let shard = shards.first(where: {
                Self.hubKey($0.hubHost, configured: configuration.hostName) == host && $0.certificateCredential == nil
                    && $0.tokenCount + cost <= configuration.identitiesPerConnection && $0.leafOrder.count < Self.maxLeavesPerConnection
            }) {
                leafShard[leaf.deviceID] = shard.index
                shard.withConnection { [self] in $0.addLeaf(makeRuntime(leaf)) }
            } else {
                addShard([makeRuntime(leaf)], hubHost: leaf.hubHost)  // connects at the next tick
            }
        }
        if !changes.isEmpty {
            logger.notice("uplink: leaves reconfigured: \(changes)")
            kickPump()
        }
        return changes
    }

    /// Sessions one connection may carry besides CBS: a leaf takes one (the hub's channel-max is 8191).
    static let maxLeavesPerConnection = 4000

    /// Splits leaves over connections: each connection holds at most `maxTokens` tokens (a leaf with its own key
    /// needs one; leaves behind a hub-scope policy share one per policy) and `maxLeavesPerConnection` leaves.
    static func partition(_ leaves: [LeafConfiguration], maxTokens: Int, configuredHost: String = "") -> [[LeafConfiguration]] {
        // Identities of different hubs never share a connection: each hub's are split on their own, in first-seen order.
        var hubs: [String] = []
        var byHub: [String: [LeafConfiguration]] = [:]
        for leaf in leaves {
            let key = hubKey(leaf.hubHost, configured: configuredHost)
            if byHub[key] == nil { hubs.append(key) }
            byHub[key, default: []].append(leaf)
        }
        return hubs.flatMap { partitionOneHub(byHub[$0] ?? [], maxTokens: maxTokens) }
    }

    /// The hub a leaf or connection belongs to, the configured one spelled one way.
    static func hubKey(_ hubHost: String?, configured: String) -> String { hubHost ?? configured }

    private static func partitionOneHub(_ all: [LeafConfiguration], maxTokens: Int) -> [[LeafConfiguration]] {
        // A certificate identity has a connection of its own: TLS presents one client certificate.
        var chunks: [[LeafConfiguration]] = all.filter(\.credential.isCertificate).map { [$0] }
        let leaves = all.filter { !$0.credential.isCertificate }
        var current: [LeafConfiguration] = []
        var tokens = 0
        var policies: Set<String> = []
        for leaf in leaves {
            let cost = leaf.hubScopePolicy.map { policies.contains($0) ? 0 : 1 } ?? 1
            if !current.isEmpty && (tokens + cost > max(1, maxTokens) || current.count >= maxLeavesPerConnection) {
                chunks.append(current)
                current = []
                tokens = 0
                policies = []
            }
            tokens += leaf.hubScopePolicy.map { policies.contains($0) ? 0 : 1 } ?? 1
            if let p = leaf.hubScopePolicy { policies.insert(p) }
            current.append(leaf)
        }
        if !current.isEmpty { chunks.append(current) }
        return chunks
    }

    // MARK: lifecycle

    func start() {
        tick()
    }

    private func tick() {
        guard !stopping else { return }
        heartbeat.beat()
        let now = nowMs()
        if quota.tick(nowMs: now) {
            logger.notice("uplink: the daily-quota pause is over; one message probes the hub before the others follow")
            flushAll()
        }
        for shard in shards {
            shard.tickConnection(nowMs: now)
            shard.withConnection { [self] shard in
                shard.tickLeaves(nowMs: now)
                shard.flushReported(nowMs: now)
                admit(shard, nowMs: now)
            }
        }
        spoolLooksEmpty = false
        kickPump()
        ticker = reactor.schedule(after: .milliseconds(tickMilliseconds)) { [self] in tick() }
    }

    /// Stops connecting, closes every connection and returns what the spool must still hear (acknowledgements,
    /// rejections, and every record still held, released).
    func beginStop() {
        stopping = true
        ticker?.cancel()
        for shard in shards {
            for leaf in shard.leaves.values { settlements.released += leaf.takePending() }
            shard.close()
        }
    }

    var isPumpBusy: Bool { pumpBusy }
    /// True once every connection is gone (after `beginStop`).
    var isQuiet: Bool { !pumpBusy && shards.allSatisfy { !$0.hasConnection } }

    /// What is left for the spool after the connections are gone.
    func takeFinalSettlements() -> SpoolPump.Job {
        defer { settlements = SpoolPump.Job() }
        return settlements
    }

    // MARK: pacing

    /// The shard's leaves entered the queue (its connection opened): admit them now if the pacer allows. Runs in
    /// that connection's event.
    func leavesQueued(_ shard: Shard) { admit(shard, nowMs: nowMs()) }

    /// Lets queued leaves of `shard` authenticate, as far as the pacer (shared by all connections) allows.
    private func admit(_ shard: Shard, nowMs now: Int64) {
        guard shard.isOpen, clockIsPlausible(now) else { return }
        var allowance = shard.attachRoom()
        guard allowance > 0 else { return }
        if var p = pacer {
            allowance = p.take(allowance, nowMs: now)
            pacer = p
        }
        shard.admitQueued(nowMs: now, allowance: &allowance)
        if allowance > 0 {
            pacer?.refund(allowance)  // taken for leaves that were no longer queued
        }
    }

    /// Tokens minted with an unsynchronized clock (1970 after a cold boot without RTC) would be rejected as
    /// expired: wait for the clock, a bounded time, saying why.
    private func clockIsPlausible(_ now: Int64) -> Bool {
        if now >= configuration.earliestPlausibleTimeMilliseconds || clockGaveUp { return true }
        if !clockWarned {
            clockWarned = true
            logger.error("uplink: the system clock reads \(WallClock.iso8601(milliseconds: now)), before \(WallClock.iso8601(milliseconds: configuration.earliestPlausibleTimeMilliseconds)); waiting up to \(configuration.clockWaitMilliseconds / 1000) s for time synchronization before minting SAS tokens")
        }
        if ContinuousClock.now - createdAt >= .milliseconds(configuration.clockWaitMilliseconds) {
            clockGaveUp = true
            logger.error("uplink: the clock is still not synchronized; minting tokens anyway (the hub may refuse them as expired)")
            return true
        }
        return false
    }

    private let createdAt = ContinuousClock.now

    // MARK: telemetry

    /// One permit per D2C message: none while the daily quota is spent (one while it is probed), and one per
    /// token when a tier rate is configured. A `priority` message (a heartbeat) borrows from the rate when no token is
    /// left, so it goes ahead of a backlog that uses the whole rate.
    func takeSendPermit(priority: Bool = false) -> Bool {
        switch quota.sendLimit {
        case 0?: return false
        case 1?:
            // The probe: only while no telemetry is unsettled anywhere (whatever its fate, the probe is then over).
            if shards.contains(where: { !$0.unsettled.isEmpty }) { return false }
        default: break
        }
        guard var limiter = sendLimiter else { return true }
        defer { sendLimiter = limiter }
        guard priority else { return limiter.take(nowMs: nowMs()) }
        guard var share = priorityLimiter, share.take(nowMs: nowMs()) else { return false }
        priorityLimiter = share
        return limiter.borrow(nowMs: nowMs())
    }

    /// The hub refused a message for its daily quota: every leaf pauses (the message goes back to the spool).
    func quotaExceeded(description: String, sentIn: Int) {
        let began = quota.exceeded(description: description, sentIn: sentIn, nowMs: nowMs(), random: random())
        if case .paused(_, let until) = quota.state, began {
            logger.error("uplink: the hub's daily message quota is spent (\(description)); telemetry pauses for every leaf until \(WallClock.iso8601(milliseconds: until)) while readings keep spooling",
                         metadata: ["hub_error": "\(IoTHubAMQP.resourceLimitExceeded)"])
        }
    }

    /// The hub accepted a message: after a quota pause, every leaf sends again.
    func telemetryAccepted(sentIn: Int) {
        guard quota.accepted(sentIn: sentIn) else { return }  // open already: the common case, per accepted message
        logger.notice("uplink: the hub accepts telemetry again after the daily-quota pause; every leaf resumes")
        flushAll()
    }

    /// Sends what every leaf holds, as far as credit and permits allow.
    private func flushAll() {
        for shard in shards {
            shard.withConnection { s in
                for leaf in s.leaves.values where leaf.pendingCount > 0 { s.flush(leaf) }
            }
        }
    }

    /// A leaf of `shard` is ready: its telemetry may flow, and a queued leaf may take its place among the attaching.
    func leafBecameReady(on shard: Shard) {
        spoolLooksEmpty = false
        kickPump()
        admit(shard, nowMs: nowMs())
    }

    func wake() {
        spoolLooksEmpty = false
        if pumpBusy { wokenWhileBusy = true }
        kickPump()
    }

    func acknowledge(_ sequences: [UInt64]) { settlements.acknowledged += sequences }
    func deadLetter(_ sequences: [UInt64]) { settlements.rejected += sequences }
    func release(_ sequences: [UInt64]) {
        guard !sequences.isEmpty else { return }
        settlements.released += sequences
        spoolLooksEmpty = false
    }

    /// The most records one coalescing fetch takes (about 7 MB of 200 B readings): enough for 1000 leaves × 32.
    static let maxRecordsPerFetch = 32_768
    /// The most readings one coalesced message has carried (how many fit the target at this site's reading size).
    private var readingsPerFullMessage: Int?

    /// Starts a pump job if none runs: settle, then fetch for the leaves that can send.
    func kickPump() {
        guard !pumpBusy else { return }
        var job = settlements
        settlements = SpoolPump.Job()
        if !stopping && !spoolLooksEmpty && quota.sendLimit != 0 {
            // Coalescing gathers per fetch: ask for as many records as a message can carry (200 B readings: ~20 in
            // 4000 bytes), within a bound on what one fetch holds in memory.
            let perMessage = configuration.coalesceTargetBytes.map { min(64, max(1, $0 / 128)) } ?? 1
            var outstanding = 0
            var budgets: [String: Int] = [:]
            var generations: [String: (leaf: ObjectIdentifier, generation: Int)] = [:]
            let now = nowMs()
            for shard in shards where shard.isOpen {
                for leaf in shard.leaves.values {
                    outstanding += leaf.outstanding
                    guard leaf.machine.canSend(nowMs: now), leaf.canTakeTelemetry else { continue }
                    let room = leaf.machine.inFlightLimit(configuration.maxInFlightPerLeaf) - leaf.outstanding
                    if room > 0 {
                        budgets[leaf.deviceID] = room * perMessage
                        generations[leaf.deviceID] = (ObjectIdentifier(leaf), leaf.releaseGeneration)
                    }
                }
            }
            // Probing the quota: one message's worth in all (from whichever leaf has records), and only when
            // nothing is held already.
            let probing = quota.sendLimit == 1
            if probing && outstanding > 0 { budgets = [:] }
            let capacity = configuration.maxInFlightTotal - outstanding
            if capacity > 0 && !budgets.isEmpty {
                job.budgets = budgets
                fetchGenerations = generations
                job.maxRecords = probing ? perMessage : perMessage == 1 ? capacity : min(capacity * perMessage, Self.maxRecordsPerFetch)
                // A leaf's turn takes several whole messages' worth, sized by the fullest message seen so far: a
                // turn that ends inside a message leaves a short one behind.
                job.quantum = min(512, (readingsPerFullMessage ?? perMessage) * 8)
            }
        }
        guard job.hasSettlements || job.maxRecords > 0 else { return }
        pumpBusy = true
        let fetched = job.maxRecords > 0
        pump.run(job) { [self] result in
            _ = reactor.execute { [self] in pumped(result, fetched: fetched) }
        }
    }

    private func pumped(_ result: SpoolPump.Result, fetched: Bool) {
        pumpBusy = false
        if configuration.coalesceTargetBytes != nil {
            // A plain loop: `lazy.map(\.sequences.count)` went through a key path, ~2,000 instructions a message.
            var fullest = 0
            for m in result.messages { fullest = max(fullest, m.sequences.count) }
            if fullest > 1 { readingsPerFullMessage = max(readingsPerFullMessage ?? 0, fullest) }
        }
        // Nothing came back (or the spool failed): ask again at the next tick or wake-up, not in a loop.
        if fetched && result.messages.isEmpty { spoolLooksEmpty = true }
        if wokenWhileBusy {
            // New records arrived during the job: the spool is not empty after all.
            wokenWhileBusy = false
            spoolLooksEmpty = false
        }
        // Queue on the leaves now (so the next budget counts them); send inside each connection's context.
        var touched: [Int: [ObjectIdentifier: LeafRuntime]] = [:]
        // A leaf's messages come one after another (the encoder writes a leaf's at once): its look-ups are made once
        // for the run, not hashed again for each message (three names hashed a message; ~90 instructions a reading fewer in the coalescing benchmark).
        var run: (name: String, leaf: LeafRuntime?)?
        for m in result.messages {
            if run?.name != m.leaf {
                // The leaf may have lost its links since the fetch, or given records back (a refusal, a lost link):
                // these records go back too, so that the spool hands everything out again in order.
                if !stopping, let s = leafShard[m.leaf], let leaf = shards[s].leaves[m.leaf], leaf.canTakeTelemetry,
                   let fetchedFor = fetchGenerations[m.leaf], fetchedFor.leaf == ObjectIdentifier(leaf),
                   fetchedFor.generation == leaf.releaseGeneration {
                    run = (m.leaf, leaf)
                    touched[s, default: [:]][ObjectIdentifier(leaf)] = leaf
                } else {
                    run = (m.leaf, nil)
                }
            }
            // Nothing in this loop changes a leaf's links or generation: what held for the run's first message holds
            // for the rest.
            guard let leaf = run?.leaf else {
                settlements.released += m.sequences
                continue
            }
            leaf.pending.append(m)
        }
        // Only this result needed it (~64 kB with a thousand leaves, kept for as long as the gateway idled). Cleared
        // before the flushes below: they may start the next fetch, whose table must stay.
        fetchGenerations = [:]
        for (s, leaves) in touched {
            let ids = leaves.values.map(\.deviceID)
            shards[s].withConnection { shard in
                for id in ids { if let leaf = shard.leaves[id] { shard.flush(leaf) } }
            }
        }
        if !result.messages.isEmpty || settlements.hasSettlements || !spoolLooksEmpty { kickPump() }
    }

    // MARK: cloud to device

    /// Runs a C2D message on the router; abandons it at `deadlineMs` (the end of its hold budget) if the adapter
    /// has not answered, so the hub's lock never lapses here.
    func route(_ message: C2DMessage, shard: Int, token: Int, deadlineMs: Int64) {
        guard let router else { return }
        let timeout = max(0, deadlineMs - nowMs())
        let timer = reactor.schedule(after: .milliseconds(timeout)) { [self] in
            shards[shard].withConnection {
                $0.cloudToDeviceFinished(token: token, leafID: message.deviceID, messageID: message.messageID,
                                         outcome: .abandon("no outcome within \(timeout) ms"))
            }
        }
        Task { [self] in
            let outcome = await router.cloudToDevice(message)
            _ = reactor.execute { [self] in
                timer.cancel()
                shards[shard].withConnection {
                    $0.cloudToDeviceFinished(token: token, leafID: message.deviceID, messageID: message.messageID, outcome: outcome)
                }
            }
        }
    }

    /// An adapter can reach `deviceID` again: its held C2D message is retried now.
    /// Refused or backing-off leaves among `ids` try again now (their identities were provisioned again).
    func retrySoon(_ ids: [String]) {
        let now = nowMs()
        for id in ids {
            guard let s = leafShard[id] else { continue }
            shards[s].leaves[id]?.machine.retrySoon(nowMs: now)
        }
    }

    func leafReachable(_ deviceID: String) {
        guard let s = leafShard[deviceID] else { return }
        shards[s].withConnection { $0.cloudToDeviceReachable(deviceID) }
    }

    // MARK: methods and twins

    private var methodAnswered: Set<AMQPUUID> = []

    /// Runs a method on the router; answers 404 when it has none, 504 at the call's deadline, whichever is first.
    func invoke(_ call: MethodCall, shard: Int, requestID: AMQPUUID) {
        guard let router else {
            return shards[shard].respond(to: requestID, leafID: call.deviceID, with: .error(404, "\(call.deviceID) has no methods"))
        }
        let answer: @Sendable (MethodResponse) -> Void = { [self] result in
            shards[shard].withConnection { [self] shard in
                guard methodAnswered.insert(requestID).inserted else { return }  // the deadline or the router was first
                shard.respond(to: requestID, leafID: call.deviceID, with: result)
            }
        }
        let timeout = max(0, call.deadlineMilliseconds - nowMs())
        let timer = reactor.schedule(after: .milliseconds(timeout)) {
            answer(.error(504, "\(call.deviceID) did not answer \(call.name) within \(timeout) ms"))
        }
        Task { [self] in
            let result = await router.invoke(call) ?? .error(404, "\(call.deviceID) has no method \(call.name)")
            _ = reactor.execute { timer.cancel() }
            answer(result)
        }
        if methodAnswered.count > 10_000 { methodAnswered.removeAll() }  // ids are random; old ones never recur
    }

    /// Leaves whose router call for a desired document is running (by run number), and the newest document each
    /// has waiting.
    private var desiredRunning: [String: Int] = [:]
    private var desiredWaiting: [String: (desired: JSONValue, version: Int64)] = [:]
    private var desiredRuns = 0

    /// Hands a desired document to the router; what it returns is reported. One call per leaf at a time, in the
    /// order the hub's versions came: a task per document let a leaf apply an older one after a newer one (seen:
    /// 1, 3, 4, then 2, leaving a device on a stale setpoint). A document waiting behind a running call is replaced
    /// by a newer one: each is the whole desired state, so the newest is all the leaf needs. Leaves do not wait for
    /// each other, and a call that does not return within `desiredApplyTimeoutMilliseconds` stops holding its leaf up.
    func applyDesired(_ desired: JSONValue, version: Int64, deviceID: String) {
        guard router != nil else { return }
        if desiredRunning[deviceID] != nil {
            desiredWaiting[deviceID] = (desired, version)
            return
        }
        runDesired(desired, version: version, deviceID: deviceID)
    }

    private func runDesired(_ desired: JSONValue, version: Int64, deviceID: String) {
        guard let router else { return }
        desiredRuns += 1
        let run = desiredRuns
        desiredRunning[deviceID] = run
        if let s = leafShard[deviceID] { shards[s].leaves[deviceID]?.counters.desiredApplied += 1 }
        let limit = configuration.desiredApplyTimeoutMilliseconds
        let deadline = reactor.schedule(after: .milliseconds(limit)) { [self] in
            guard desiredRunning[deviceID] == run else { return }
            logger.warning("uplink: \(deviceID): the adapter has not applied desired version \(version) within \(limit) ms; what it returns will not be reported")
            desiredFinished(deviceID)
        }
        Task { [self] in
            let reported = await router.desiredProperties(desired, version: version, deviceID: deviceID)
            _ = reactor.execute { [self] in
                deadline.cancel()
                guard desiredRunning[deviceID] == run else { return }  // given up at its deadline
                if let reported {
                    do throws(UplinkError) { try report(reported, for: deviceID, id: nil) } catch {
                        logger.error("uplink: \(deviceID): the reported patch for desired version \(version) is refused locally: \(error)")
                    }
                }
                desiredFinished(deviceID)
            }
        }
    }

    /// The leaf's call ended (or was given up): its waiting document, if any, goes next.
    private func desiredFinished(_ deviceID: String) {
        if let next = desiredWaiting.removeValue(forKey: deviceID) {
            runDesired(next.desired, version: next.version, deviceID: deviceID)
        } else {
            desiredRunning[deviceID] = nil
        }
    }

    private var nextReportID = 0
    private var reportWaiters: [Int: @Sendable (String?) -> Void] = [:]

    /// Validates and queues a reported patch; `done` hears nil once the hub took it, or why not.
    func report(_ patch: JSONValue, for deviceID: String, id done: (@Sendable (String?) -> Void)?) throws(UplinkError) {
        guard let s = leafShard[deviceID], let leaf = shards[s].leaves[deviceID] else {
            throw UplinkError(.invalidInput, "no leaf \(deviceID)")
        }
        guard leaf.configuredLinks.contains(.twinRequests) else { throw UplinkError(.invalidInput, "\(deviceID) has no twin (no router, or not in its capabilities)") }
        guard !shards[s].tierLimits.refused.contains(.twin) else {
            throw UplinkError(.invalidInput, "\(deviceID): the hub refuses device twins as not in its tier (IoT Hub Basic): reported properties cannot be sent")
        }
        do throws(IoTHubError) {
            try TwinRules.validatePatch(patch)
            try TwinRules.validatePatch(leaf.twin.pendingAfter(patch))
        } catch {
            throw UplinkError(.invalidInput, "\(deviceID): reported patch refused locally (never sent): \(error.message)")
        }
        nextReportID += 1
        if let done { reportWaiters[nextReportID] = done }
        let id = nextReportID
        shards[s].withConnection { $0.report(patch, id: id, leafID: deviceID) }
    }

    func reportsFinished(_ ids: [Int], error: String?) {
        for id in ids { reportWaiters.removeValue(forKey: id)?(error) }
    }

    /// The configuration of a leaf this uplink carries (file uploads sign with its credential).
    func leafConfiguration(_ deviceID: String) -> LeafConfiguration? {
        leafShard[deviceID].flatMap { shards[$0].leaves[deviceID]?.configuration }
    }

    // MARK: status

    func snapshot() -> UplinkStatus {
        var status = UplinkStatus()
        status.telemetryPause = quota.telemetryPause
        for shard in shards where !shard.retired {
            status.connections.append(UplinkStatus.Connection(
                index: shard.index, state: shard.machine.phase.rawValue, opens: shard.machine.opens,
                lastError: shard.machine.lastError, lastDisconnect: shard.machine.lastDisconnect, leaves: shard.leafOrder.count,
                host: shard.machine.route.host, transport: shard.machine.route.kind.rawValue,
                refusedByTier: shard.tierLimits.refused.map(\.rawValue).sorted(), mostAttachingAtOnce: shard.mostAttachingAtOnce))
            for id in shard.leafOrder {
                guard let leaf = shard.leaves[id] else { continue }
                status.leaves[id] = UplinkStatus.Leaf(
                    phase: leaf.machine.phase, lastError: leaf.machine.lastError, counters: leaf.counters,
                    outstanding: leaf.outstanding, tierLimitation: leaf.tierLimitation)
            }
        }
        return status
    }
}

