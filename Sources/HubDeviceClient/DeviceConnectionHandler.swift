import FieldgateCore
import IoTHub
import ProtonAMQP
import Synchronization

/// The reactor-thread side of `DeviceConnection`.
// @unchecked Sendable: every mutable field is touched on the reactor thread only (events and `call` jobs);
// `openedSignal` and the event stream are thread-safe by themselves.
final class DeviceConnectionHandler: AMQPConnectionHandler, @unchecked Sendable {
    let openedSignal = OneShot()
    /// What the hub's Open and attach replies said (for tests of the hub's wire values).
    let observed = Mutex<ObservedPeer>(ObservedPeer())
    let mailbox = EventMailbox()

    private var session: AMQPSession?
    private var links: [String: AMQPLink] = [:]
    private var specs: [String: LinkSpec] = [:]
    private var pendingAttach: [String: (Result<Void, any Error>) -> Void] = [:]
    private var refusedPending: Set<String> = []
    private var waitingForCredit: [String: [(bytes: [UInt8], resume: (Result<AMQPOutcome, any Error>) -> Void)]] = [:]
    private var inFlight: [AMQPObjectID: (link: String, resume: (Result<AMQPOutcome, any Error>) -> Void)] = [:]
    private var cbsReady = false
    private var cbsWaiters: [(Result<Void, any Error>) -> Void] = []
    private var cbsPending: [UInt64: (Result<(status: Int, description: String), any Error>) -> Void] = [:]
    private var nextCBSMessageID: UInt64 = 0
    private var twinPending: [String: (Result<TwinResponse, any Error>) -> Void] = [:]
    private var c2dDeliveries: [Int: (delivery: AMQPDelivery, link: String)] = [:]
    private var nextC2DToken = 0
    private var closedError: AMQPError?

    /// `DeviceConnection.stream`: pre-encoded messages on many telemetry links, as fast as credit allows.
    /// A class: its tables are updated in place for every message.
    private final class Stream {
        let bytes: [UInt8]
        let links: [AMQPObjectID: AMQPLink]
        var inFlight: [AMQPObjectID: Int]
        let limitPerLink: Int
        var unsent: Int
        var unsettled: [AMQPObjectID: AMQPObjectID] = [:]
        var accepted = 0
        let total: Int
        var nextTag: UInt64 = 0
        let resume: (Result<Int, any Error>) -> Void

        init(bytes: [UInt8], links: [AMQPObjectID: AMQPLink], limitPerLink: Int, total: Int, resume: @escaping (Result<Int, any Error>) -> Void) {
            self.bytes = bytes
            self.links = links
            self.inFlight = links.mapValues { _ in 0 }
            self.limitPerLink = limitPerLink
            self.unsent = total
            self.total = total
            self.resume = resume
        }
    }
    private var stream: Stream?

    init() {}

    func startStream(_ bytes: [UInt8], linkNames: [String], total: Int, limitPerLink: Int, resume: @escaping (Result<Int, any Error>) -> Void) {
        var chosen: [AMQPObjectID: AMQPLink] = [:]
        for name in linkNames {
            guard let link = links[name] else { return resume(.failure(AMQPError(.closed, "no link \(name)"))) }
            chosen[link.id] = link
        }
        stream = Stream(bytes: bytes, links: chosen, limitPerLink: limitPerLink, total: total, resume: resume)
        for link in chosen.values { streamFill(link) }
    }

    private func streamFill(_ link: AMQPLink) {
        guard let s = stream, s.links[link.id] != nil else { return }
        var credit = link.credit
        var inFlight = s.inFlight[link.id] ?? 0
        while credit > 0, s.unsent > 0, inFlight < s.limitPerLink {
            s.nextTag &+= 1
            let d = link.send(s.bytes, tag: withUnsafeBytes(of: s.nextTag) { Array($0) })
            s.unsettled[d.id] = link.id
            s.unsent -= 1
            inFlight += 1
            credit -= 1
        }
        s.inFlight[link.id] = inFlight
    }

    /// True when `delivery` was the stream's.
    private func streamUpdated(_ delivery: AMQPDelivery) -> Bool {
        guard let s = stream, let linkID = s.unsettled[delivery.id] else { return false }
        guard delivery.remoteOutcome != nil || delivery.isRemotelySettled else { return true }
        let accepted = delivery.remoteOutcome.map { $0 == .accepted } ?? true
        delivery.settle()
        s.unsettled[delivery.id] = nil
        s.inFlight[linkID, default: 1] -= 1
        guard accepted else {
            stream = nil
            s.resume(.failure(AMQPError(.remoteClosed, "the hub did not accept a streamed message")))
            return true
        }
        s.accepted += 1
        if s.accepted == s.total {
            stream = nil
            s.resume(.success(s.total))
            return true
        }
        if let link = s.links[linkID] { streamFill(link) }
        return true
    }

    /// Runs `body` on the reactor thread and waits for it to call `resume`.
    func call<T: Sendable>(
        _ ref: AMQPConnectionRef,
        _ body: @escaping @Sendable (DeviceConnectionHandler, AMQPConnection, @escaping (Result<T, any Error>) -> Void) -> Void
    ) async throws -> T {
        try await withCheckedThrowingContinuation { (cont: CheckedContinuation<T, any Error>) in
            let queued = ref.execute { [self] connection in
                if let closedError { return cont.resume(throwing: closedError) }
                let once = ResumeOnce(cont)
                body(self, connection, { once.resume($0) })
            }
            if !queued { cont.resume(throwing: AMQPError(.closed, "the connection is closed")) }
        }
    }

    // MARK: events

    func handle(_ event: AMQPEvent, on connection: AMQPConnection) {
        switch event {
        case .connectionOpened:
            observed.withLock {
                $0.containerID = connection.remoteContainer
                $0.idleTimeoutMilliseconds = connection.remoteIdleTimeoutMilliseconds
            }
            session = connection.openSession()
            openedSignal.succeed()
        case .connectionClosed(let condition):
            if let condition { closedError = AMQPError(.remoteClosed, condition.description, condition: condition.name) }
        case .transportClosed(let error):
            let e = closedError ?? error ?? AMQPError(.closed, "the connection closed")
            closedError = e
            openedSignal.fail(e)
            failEverything(e)
            mailbox.post(.connectionClosed(error))
            mailbox.finish()
        case .linkOpened(let link):
            let name = link.name
            guard let resume = pendingAttach[name] else { return }
            let remoteTerminus = link.isSender ? link.remoteTargetAddress : link.remoteSourceAddress
            if remoteTerminus == nil {
                refusedPending.insert(name)  // the hub refuses: its detach follows with the reason
            } else {
                observed.withLock { $0.maxMessageSize[name] = link.remoteMaxMessageSize }
                pendingAttach[name] = nil
                if let spec = specs[name], !link.isSender, spec.shape.credit > 0 { link.flow(spec.shape.credit) }
                resume(.success(()))
            }
        case .linkClosed(let link, let condition):
            linkGone(link.name, condition: condition)
        case .linkFlow(let link):
            if stream != nil { streamFill(link) }
            flush(link)
        case .message(let delivery, let bytes):
            received(bytes, delivery: delivery)
        case .deliveryUpdated(let delivery):
            if stream != nil, streamUpdated(delivery) { return }
            guard let resume = inFlight[delivery.id]?.resume else { return }
            if let outcome = delivery.remoteOutcome {
                inFlight[delivery.id] = nil
                delivery.settle()
                resume(.success(outcome))
            } else if delivery.isRemotelySettled {
                inFlight[delivery.id] = nil
                delivery.settle()
                resume(.success(.accepted))
            }
        case .linkFinal, .sessionOpened, .sessionClosed:
            break
        }
    }

    private func linkGone(_ name: String, condition: AMQPCondition?) {
        let error = AMQPError(.remoteClosed, condition?.description ?? "link \(name) detached", condition: condition?.name)
        refusedPending.remove(name)
        if let resume = pendingAttach.removeValue(forKey: name) {
            resume(.failure(error))
            links[name] = nil
            return
        }
        guard links.removeValue(forKey: name) != nil else { return }
        for waiting in waitingForCredit.removeValue(forKey: name) ?? [] { waiting.resume(.failure(error)) }
        for (id, entry) in inFlight where entry.link == name {
            inFlight[id] = nil
            entry.resume(.failure(error))
        }
        if name.hasPrefix("twin-rx") { for (_, r) in twinPending { r(.failure(error)) }; twinPending = [:] }
        mailbox.post(.linkDetached(name: name, condition: condition))
    }

    private func failEverything(_ e: AMQPError) {
        for r in pendingAttach.values { r(.failure(e)) }
        pendingAttach = [:]
        for list in waitingForCredit.values { for w in list { w.resume(.failure(e)) } }
        waitingForCredit = [:]
        for entry in inFlight.values { entry.resume(.failure(e)) }
        inFlight = [:]
        for r in cbsWaiters { r(.failure(e)) }
        cbsWaiters = []
        for r in cbsPending.values { r(.failure(e)) }
        cbsPending = [:]
        for r in twinPending.values { r(.failure(e)) }
        twinPending = [:]
    }

    // MARK: operations (reactor thread)

    func attach(_ spec: LinkSpec, on connection: AMQPConnection, resume: @escaping (Result<Void, any Error>) -> Void) {
        guard let session else { return resume(.failure(AMQPError(.closed, "no session"))) }
        let shape = spec.shape
        let link = shape.sender ? session.sender(name: spec.name) : session.receiver(name: spec.name)
        if shape.sender {
            link.setTarget(shape.address)
            link.setSource(spec.deviceId ?? spec.name)
        } else {
            link.setSource(shape.address)
            link.setTarget(spec.deviceId ?? spec.name)
            link.setReceiverSettleMode(.first)
        }
        link.setProperties(shape.properties)
        links[spec.name] = link
        specs[spec.name] = spec
        pendingAttach[spec.name] = resume
        link.open()
    }

    func ensureCBS(on connection: AMQPConnection, resume: @escaping (Result<Void, any Error>) -> Void) {
        if cbsReady { return resume(.success(())) }
        cbsWaiters.append(resume)
        guard cbsWaiters.count == 1 else { return }
        let both = Countdown(2) { [self] result in
            cbsReady = (try? result.get()) != nil
            let waiters = cbsWaiters
            cbsWaiters = []
            for w in waiters { w(result) }
        }
        attach(.custom(name: "$cbs-sender", sender: true, address: IoTHubAMQP.cbsAddress, properties: [:], credit: 0), on: connection) { both.tick($0) }
        attach(.custom(name: "$cbs-receiver", sender: false, address: IoTHubAMQP.cbsAddress, properties: [:], credit: 100), on: connection) { both.tick($0) }
    }

    func putToken(_ token: String, audience: String, type: String, on connection: AMQPConnection,
                  resume: @escaping (Result<(status: Int, description: String), any Error>) -> Void) {
        var m = AMQPMessage()
        let id = nextCBSMessageID
        nextCBSMessageID += 1
        m.messageID = .ulong(id)  // as the C SDK does
        m.applicationProperties = ["operation": "put-token", "type": .string(type), "name": .string(audience)]
        m.body = .value(.string(token))
        cbsPending[id] = resume
        send(AMQPMessageCodec.encode(m), linkName: "$cbs-sender") { [self] result in
            if case .failure(let e) = result, let r = cbsPending.removeValue(forKey: id) { r(.failure(e)) }
        }
    }

    /// Sends now if the link has credit and nothing queued ahead, else queues until the next flow.
    func send(_ bytes: [UInt8], linkName: String, resume: @escaping (Result<AMQPOutcome, any Error>) -> Void) {
        guard let link = links[linkName] else {
            return resume(.failure(AMQPError(.closed, "link \(linkName) is not attached")))
        }
        if link.credit > 0 && (waitingForCredit[linkName]?.isEmpty ?? true) {
            let d = link.send(bytes, tag: tag())
            inFlight[d.id] = (linkName, resume)
        } else {
            waitingForCredit[linkName, default: []].append((bytes, resume))
        }
    }

    private var tagCounter: UInt64 = 0
    private func tag() -> [UInt8] {
        tagCounter += 1
        return withUnsafeBytes(of: tagCounter.bigEndian) { Array($0) }
    }

    private func flush(_ link: AMQPLink) {
        let name = link.name
        guard let queue = waitingForCredit[name], !queue.isEmpty else { return }
        var taken = 0
        while link.credit > 0, taken < queue.count {
            let next = queue[taken]
            taken += 1
            let d = link.send(next.bytes, tag: tag())
            inFlight[d.id] = (name, next.resume)
        }
        waitingForCredit[name] = taken == queue.count ? [] : Array(queue[taken...])  // one copy, not one per send
    }

    func twinRequest(_ bytes: [UInt8], correlation: String, linkName: String, resume: @escaping (Result<TwinResponse, any Error>) -> Void) {
        twinPending[correlation] = resume
        send(bytes, linkName: linkName) { [self] result in
            if case .failure(let e) = result, let r = twinPending.removeValue(forKey: correlation) { r(.failure(e)) }
        }
    }

    func settle(_ token: Int, _ outcome: AMQPOutcome) {
        guard let entry = c2dDeliveries.removeValue(forKey: token) else { return }
        entry.delivery.dispose(outcome)
        if let link = links[entry.link], link.credit < 5, case .cloudToDevice(_, let credit)? = specs[entry.link] {
            link.flow(credit - link.credit)
        }
    }

    // MARK: inbound

    private func received(_ bytes: [UInt8], delivery: AMQPDelivery) {
        let link = delivery.link
        let name = link.name
        guard let message = try? AMQPMessageCodec.decode(bytes) else {
            delivery.dispose(.rejected(AMQPCondition(name: IoTHubAMQP.decodeError, description: "undecodable")))
            return
        }
        switch specs[name] {
        case .custom(let n, _, _, _, _)? where n == "$cbs-receiver":
            delivery.dispose(.accepted)
            topUp(link, to: 100)
            guard case .ulong(let id)? = message.correlationID, let resume = cbsPending.removeValue(forKey: id) else { return }
            let status = message.applicationProperties["status-code"]?.integerValue ?? -1
            resume(.success((Int(status), message.applicationProperties["status-description"]?.stringValue ?? "")))
        case .cloudToDevice(let d, _)?:
            let token = nextC2DToken
            nextC2DToken += 1
            c2dDeliveries[token] = (delivery, name)
            mailbox.post(.cloudToDevice(ReceivedCloudToDevice(deviceId: d, message: message, lockToken: delivery.tag, token: token)))
        case .methodRequests(let d, _, _)?:
            delivery.dispose(.accepted)
            topUp(link, to: 10)
            guard case .uuid(let id)? = message.correlationID,
                  let methodName = message.applicationProperties[IoTHubAMQP.methodNameProperty]?.stringValue else { return }
            let body = message.body.bytes
            mailbox.post(.methodRequest(MethodRequest(deviceId: d, requestID: id, name: methodName, payload: JSONValue.parse(body) ?? .null)))
        case .twinResponses(let d, _, _)?:
            delivery.dispose(.accepted)
            topUp(link, to: 10)
            let body = message.body.bytes
            let version = message.messageAnnotations[.symbol("version")]?.integerValue
            if case .string(let correlation)? = message.correlationID, let resume = twinPending.removeValue(forKey: correlation) {
                let status = message.messageAnnotations[.symbol("status")]?.integerValue ?? -1
                resume(.success(TwinResponse(status: Int(status), version: version, body: body.isEmpty ? nil : JSONValue.parse(body))))
            } else if message.correlationID == nil {
                mailbox.post(.desiredUpdate(deviceId: d, patch: JSONValue.parse(body) ?? .null, version: version))
            }
        default:
            delivery.dispose(.accepted)
        }
    }

    private func topUp(_ link: AMQPLink, to credit: Int) {
        if link.credit < credit / 2 { link.flow(credit - link.credit) }
    }
}

/// Buffers device events for any number of waiters, each taking the first event it matches. (An AsyncStream
/// would end for everyone when one waiting iterator is cancelled.)
final class EventMailbox: Sendable {
    private struct Waiter {
        let id: UInt64
        let match: @Sendable (DeviceEvent) -> Bool
        let cont: CheckedContinuation<DeviceEvent?, Never>
    }
    private struct State {
        var buffered: [DeviceEvent] = []
        var waiters: [Waiter] = []
        var finished = false
        var nextID: UInt64 = 0
    }
    private let state = Mutex<State>(State())

    func post(_ event: DeviceEvent) {
        let waiter = state.withLock { s -> Waiter? in
            if let i = s.waiters.firstIndex(where: { $0.match(event) }) { return s.waiters.remove(at: i) }
            s.buffered.append(event)
            return nil
        }
        waiter?.cont.resume(returning: event)
    }

    func finish() {
        let waiters = state.withLock { s -> [Waiter] in
            s.finished = true
            defer { s.waiters = [] }
            return s.waiters
        }
        for w in waiters { w.cont.resume(returning: nil) }
    }

    /// The first buffered or future event matching `match`; nil when the connection ended or on cancellation.
    func next(where match: @escaping @Sendable (DeviceEvent) -> Bool) async -> DeviceEvent? {
        let id = state.withLock { s -> UInt64 in
            s.nextID += 1
            return s.nextID
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (cont: CheckedContinuation<DeviceEvent?, Never>) in
                let ready = state.withLock { s -> DeviceEvent?? in
                    if let i = s.buffered.firstIndex(where: match) { return .some(s.buffered.remove(at: i)) }
                    if s.finished || Task.isCancelled { return .some(nil) }
                    s.waiters.append(Waiter(id: id, match: match, cont: cont))
                    return nil
                }
                if let ready { cont.resume(returning: ready) }
            }
        } onCancel: {
            let w = state.withLock { s -> Waiter? in
                guard let i = s.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return s.waiters.remove(at: i)
            }
            w?.cont.resume(returning: nil)
        }
    }
}

/// Values the hub sent in its Open and attach frames.
public struct ObservedPeer: Sendable {
    public var containerID: String?
    public var idleTimeoutMilliseconds: UInt32 = 0
    public var maxMessageSize: [String: UInt64] = [:]
}

/// Resumes a continuation at most once.
final class ResumeOnce<T: Sendable>: @unchecked Sendable {
    // @unchecked: called on the reactor thread only.
    private var cont: CheckedContinuation<T, any Error>?
    init(_ cont: CheckedContinuation<T, any Error>) { self.cont = cont }
    func resume(_ result: Result<T, any Error>) {
        cont?.resume(with: result)
        cont = nil
    }
}

/// Calls `done` once after `n` successes, or at the first failure.
final class Countdown: @unchecked Sendable {
    // @unchecked: called on the reactor thread only.
    private var remaining: Int
    private var done: ((Result<Void, any Error>) -> Void)?
    init(_ n: Int, done: @escaping (Result<Void, any Error>) -> Void) {
        remaining = n
        self.done = done
    }
    func tick(_ r: Result<Void, any Error>) {
        guard let d = done else { return }
        if case .failure = r { done = nil; return d(r) }
        remaining -= 1
        if remaining == 0 { done = nil; d(.success(())) }
    }
}

/// A one-time signal: success or failure, awaited once.
final class OneShot: Sendable {
    private let state = Mutex<(result: Result<Void, AMQPError>?, waiter: CheckedContinuation<Void, any Error>?)>((nil, nil))

    func succeed() { complete(.success(())) }
    func fail(_ e: AMQPError) { complete(.failure(e)) }

    private func complete(_ r: Result<Void, AMQPError>) {
        let waiter = state.withLock { s -> CheckedContinuation<Void, any Error>? in
            guard s.result == nil else { return nil }
            s.result = r
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume(with: r.mapError { $0 as any Error })
    }

    func wait() async throws {
        try await withCheckedThrowingContinuation { (cont: CheckedContinuation<Void, any Error>) in
            let ready = state.withLock { s -> Result<Void, AMQPError>? in
                if let r = s.result { return r }
                s.waiter = cont
                return nil
            }
            if let ready { cont.resume(with: ready.mapError { $0 as any Error }) }
        }
    }
}
