import FieldgateCore

/// The lifecycle of one AMQP connection to the hub: connect, open, lose it, back off, reconnect. Pure; the shard
/// performs the actions. A connection that dies soon after opening keeps growing the back-off, so a hub that
/// closes every connection is not hammered.
struct ConnectionMachine {
    enum Phase: String, Sendable { case waiting, connecting, open }

    let backoff: Backoff
    let connectTimeoutMilliseconds: Int64
    /// The ways to the hub, in order; the machine stays on one while it works.
    let routes: [HubRoute]
    let failuresBeforeNextRoute: Int
    private(set) var routeIndex = 0
    /// Failed connects (or connections that died young) on the current route.
    private(set) var routeFailures = 0
    /// A connection that lived this long counts as healthy: the next failure starts the back-off over.
    static let healthyAfterMilliseconds: Int64 = 10_000

    private(set) var phase: Phase = .waiting
    private(set) var retryAtMs: Int64 = 0
    private(set) var attempts = 0
    private(set) var openedAtMs: Int64 = 0
    private(set) var lastError: String?
    /// Why the last open connection ended (kept after a reconnect, for `status`).
    private(set) var lastDisconnect: String?
    /// Connections opened so far (1 = never reconnected).
    private(set) var opens = 0

    init(backoff: Backoff, connectTimeoutMilliseconds: Int64, routes: [HubRoute], failuresBeforeNextRoute: Int = 3) {
        precondition(!routes.isEmpty, "at least one route to the hub")
        self.backoff = backoff
        self.connectTimeoutMilliseconds = connectTimeoutMilliseconds
        self.routes = routes
        self.failuresBeforeNextRoute = max(1, failuresBeforeNextRoute)
    }

    /// The route the next (or current) connection uses.
    var route: HubRoute { routes[routeIndex] }

    /// True when the shard should start a connection attempt now.
    mutating func shouldConnect(nowMs: Int64) -> Bool {
        guard phase == .waiting, nowMs >= retryAtMs else { return false }
        phase = .connecting
        retryAtMs = nowMs + connectTimeoutMilliseconds  // the attempt's deadline
        return true
    }

    /// True when a connection attempt has taken too long and must be aborted.
    func attemptTimedOut(nowMs: Int64) -> Bool { phase == .connecting && nowMs >= retryAtMs }

    mutating func opened(nowMs: Int64) {
        phase = .open
        openedAtMs = nowMs
        opens += 1
        lastError = nil
    }

    /// A connection ended or an attempt failed. Returns the route it moves to when this was the route's last
    /// allowed failure, nil when it stays.
    @discardableResult
    mutating func closed(error: String?, nowMs: Int64, random: Double) -> HubRoute? {
        let healthy = phase == .open && nowMs - openedAtMs >= Self.healthyAfterMilliseconds
        if healthy { attempts = 0 }
        var moved: HubRoute?
        if healthy {
            routeFailures = 0  // a route that worked gets its full count again
        } else {
            routeFailures += 1
            if routeFailures >= failuresBeforeNextRoute && routes.count > 1 {
                routeIndex = (routeIndex + 1) % routes.count
                routeFailures = 0
                moved = routes[routeIndex]
            }
        }
        if phase == .open { lastDisconnect = error }
        attempts += 1
        lastError = error ?? lastError
        phase = .waiting
        retryAtMs = nowMs + backoff.delay(attempt: attempts, random: random)
        return moved
    }
}
