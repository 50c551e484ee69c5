import FieldgateCore
import IoTHub
import Logging
import ProtonAMQP

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// One device-facing AMQP connection: its CBS tokens, its links, and the rules of docs/iothub-protocol.md §12.
/// Lives on the reactor thread.
// @unchecked Sendable: confined to the reactor thread; other code reaches it only through `ref.execute` jobs,
// which run on that thread.
final class HubConnection: AMQPConnectionHandler, @unchecked Sendable {
    let core: HubCore
    var ref: AMQPConnectionRef?
    /// Live tokens by the path their audience names ("", "/devices" or "/devices/{d}"): coverage is then three
    /// dictionary lookups, not a scan of up to 999 tokens per message.
    var tokens: [String: CBSToken] = [:]
    /// A ServiceConnect token for the hub itself: it opens the service endpoints (devicebound, feedback).
    var serviceToken: CBSToken?
    /// The service feedback links on this connection: the queue's waiter each has registered while it has credit,
    /// and the batches it holds unsettled, oldest first.
    var feedbackLinks: [AMQPObjectID: FeedbackLinkState] = [:]
    /// The same for file-upload notification links.
    var fileNotificationLinks: [AMQPObjectID: FileNotificationLinkState] = [:]
    var links: [AMQPObjectID: LinkState] = [:]
    /// Links per device on this connection.
    var devices: [String: DeviceLinks] = [:]
    /// The link CBS replies go out on (the client's `$cbs` receiver), whatever the request's reply-to says.
    var cbsResponseLink: AMQPObjectID?
    /// Messages waiting for credit on a link (method requests, twin responses, desired pushes).
    var pendingSends: [AMQPObjectID: [AMQPMessage]] = [:]

    /// What the device presented at TLS (AMQPS); nil over plain AMQP, WebSockets or without a certificate.
    let clientCertificate: ClientCertificateChain?
    /// The device the client certificate was accepted for: one certificate, one device, as at IoT Hub.
    var certificateDevice: String?

    init(core: HubCore, clientCertificate: ClientCertificateChain? = nil) {
        self.core = core
        self.clientCertificate = clientCertificate
    }

    struct CBSToken {
        /// The decoded `sr` path below the host: "", "/devices" or "/devices/{d}".
        var scopePath: String
        var expiry: Int64
        var policy: String?

        func covers(_ identityPath: String) -> Bool { isSegmentPrefix(scopePath, of: identityPath) }
    }

    enum Role: Equatable {
        case cbsRequests, cbsResponses
        case telemetry(String)
        case cloudToDevice(String)
        case methodRequests(String, channel: String)   // hub sends requests
        case methodResponses(String, channel: String)  // hub receives responses
        case twinRequests(String, channel: String)     // hub receives requests
        case twinResponses(String, channel: String)    // hub sends responses and desired pushes
        case serviceCloudToDevice                      // hub receives C2D messages from a service client
        case serviceFeedback                           // hub sends feedback batches to a service client
        case serviceFileNotifications                  // hub sends file-upload notifications to a service client
        case refused

        var deviceId: String? {
            switch self {
            case .telemetry(let d), .cloudToDevice(let d), .methodRequests(let d, _), .methodResponses(let d, _),
                 .twinRequests(let d, _), .twinResponses(let d, _): return d
            default: return nil
            }
        }
    }

    struct LinkState {
        var role: Role
        var link: AMQPLink
    }

    struct DeviceLinks {
        var links: Set<AMQPObjectID> = []
        var cloudToDevice: AMQPObjectID?
        /// C2D deliveries in flight by lock token.
        var locks: [[UInt8]: AMQPDelivery] = [:]
        var methodRequests: (id: AMQPObjectID, channel: String)?
        var methodResponses: (id: AMQPObjectID, channel: String)?
        var twinRequests: (id: AMQPObjectID, channel: String)?
        var twinResponses: (id: AMQPObjectID, channel: String)?
        var desiredSubscribed = false

        var methodsPaired: Bool {
            guard let a = methodRequests, let b = methodResponses else { return false }
            return a.channel == b.channel
        }
        var twinPaired: Bool {
            guard let a = twinRequests, let b = twinResponses else { return false }
            return a.channel == b.channel
        }
    }

    // MARK: events

    func handle(_ event: AMQPEvent, on connection: AMQPConnection) {
        switch event {
        case .connectionOpened:
            ref = connection.ref
            core.register(self)
        case .linkOpened(let link):
            if !link.isLocallyOpen { attach(link) }
        case .linkFlow(let link):
            flushPending(link)
            if case .cloudToDevice(let d)? = links[link.id]?.role { pumpCloudToDevice(d) }
            if links[link.id]?.role == .serviceFeedback { offerFeedback(link) }
            if links[link.id]?.role == .serviceFileNotifications { offerFileNotifications(link) }
        case .message(let delivery, let bytes):
            received(bytes, on: delivery)
        case .deliveryUpdated(let delivery):
            deliveryUpdated(delivery)
        case .linkClosed(let link, _):
            detached(link)
        case .linkFinal(let link):
            detached(link)
        case .transportClosed, .connectionClosed:
            for id in Array(links.keys) { if let l = links[id] { detached(l.link) } }
            core.unregister(self)
            if case .transportClosed = event {
                // The context holds this handler; dropping our reference to it breaks the cycle.
                ref = nil
            }
        case .sessionOpened, .sessionClosed:
            break
        }
    }

    // MARK: attach

    private func attach(_ link: AMQPLink) {
        link.mirrorRemoteTermini()
        // Our receiver = the client's sender: the address is the target. Our sender: the source.
        let address = link.isSender ? link.remoteSourceAddress : link.remoteTargetAddress
        guard let address, !address.isEmpty else {
            return refuse(link, AMQPCondition(name: "amqp:invalid-field", description: "the link has no address"))
        }
        if address == IoTHubAMQP.cbsAddress {
            return accept(link, role: link.isSender ? .cbsResponses : .cbsRequests, credit: 100)
        }
        if let endpoint = ServiceEndpoint(address: address, hubName: core.configuration.hostName) {
            return attachService(link, endpoint)
        }
        guard let parsed = DeviceAddress(parsing: address) else {
            return refuse(link, AMQPCondition(name: IoTHubAMQP.notFound, description: "Matching template not found for address '\(address)'"))
        }
        guard parsed.moduleID == nil else {
            return refuse(link, AMQPCondition(name: IoTHubAMQP.notFound, description: "module identities are not supported by this hub"))
        }
        let d = parsed.deviceID
        let properties = link.remoteProperties
        func property(_ name: String) -> String? { properties[.symbol(name)]?.stringValue ?? properties[.string(name)]?.stringValue }

        // Authorization: a live token on this connection must cover /devices/{d} (§12 item 10), or the client
        // certificate must prove the X.509 device d.
        if liveToken(covering: "/devices/\(d)") == nil {
            if let refusal = certificateRefusal(for: d) { return refuse(link, refusal) }
        }
        guard let device = core.registry.devices[d] else {
            return refuse(link, AMQPCondition(name: IoTHubAMQP.notFound, description: hubErrorJSON(404001, "Device \(d) at IotHub \(core.configuration.hubName) not registered.")))
        }
        guard device.isEnabled else {
            return refuse(link, AMQPCondition(name: IoTHubAMQP.unauthorizedAccess, description: hubErrorJSON(401002, "Device \(d) is disabled.")))
        }

        if core.tier == .basic, let feature = parsed.endpoint.notInBasicTier {
            return refuse(link, AMQPCondition(name: IoTHubAMQP.unauthorizedAccess, description: HubError.notInTier(feature).amqpDescription))
        }

        let role: Role
        switch (parsed.endpoint, link.isSender) {
        case (.events, false): role = .telemetry(d)
        case (.deviceBound, true): role = .cloudToDevice(d)
        case (.methods, _), (.twin, _):
            guard let channel = property(IoTHubAMQP.channelCorrelationIDProperty), !channel.isEmpty else {
                return refuse(link, AMQPCondition(name: "amqp:invalid-field", description: "\(IoTHubAMQP.channelCorrelationIDProperty) is required on \(parsed.endpoint) links"))
            }
            guard property(IoTHubAMQP.apiVersionProperty) != nil else {
                return refuse(link, AMQPCondition(name: "amqp:invalid-field", description: "\(IoTHubAMQP.apiVersionProperty) is required on \(parsed.endpoint) links"))
            }
            switch (parsed.endpoint, link.isSender) {
            case (.methods, true): role = .methodRequests(d, channel: channel)
            case (.methods, false): role = .methodResponses(d, channel: channel)
            case (.twin, false): role = .twinRequests(d, channel: channel)
            default: role = .twinResponses(d, channel: channel)
            }
            if let existing = devices[d], conflicts(existing, role) {
                return refuse(link, AMQPCondition(name: IoTHubAMQP.linkCreationConflict, description: hubErrorJSON(409002, "a \(parsed.endpoint) link of this role with channel \(channel) is already attached")))
            }
        default:
            return refuse(link, AMQPCondition(name: IoTHubAMQP.notAllowed, description: "a client \(link.isSender ? "receiver" : "sender") is not allowed on \(parsed.endpoint)"))
        }

        core.claim(d, by: self)
        var entry = devices[d] ?? DeviceLinks()
        entry.links.insert(link.id)
        switch role {
        case .cloudToDevice: entry.cloudToDevice = link.id
        case .methodRequests(_, let c): entry.methodRequests = (link.id, c)
        case .methodResponses(_, let c): entry.methodResponses = (link.id, c)
        case .twinRequests(_, let c): entry.twinRequests = (link.id, c)
        case .twinResponses(_, let c):
            entry.twinResponses = (link.id, c)
            entry.desiredSubscribed = false
        default: break
        }
        devices[d] = entry
        accept(link, role: role, credit: parsed.endpoint == .events ? 1000 : 100)
    }

    private func conflicts(_ existing: DeviceLinks, _ role: Role) -> Bool {
        switch role {
        case .methodRequests(_, let c): return existing.methodRequests?.channel == c
        case .methodResponses(_, let c): return existing.methodResponses?.channel == c
        case .twinRequests(_, let c): return existing.twinRequests?.channel == c
        case .twinResponses(_, let c): return existing.twinResponses?.channel == c
        default: return false
        }
    }

    func accept(_ link: AMQPLink, role: Role, credit: Int) {
        link.setMaxMessageSize(IoTHubAMQP.linkMaxMessageSize)
        if link.isSender { link.setSenderSettleMode(link.remoteSenderSettleMode == .settled ? .settled : .unsettled) }
        link.open()
        if !link.isSender { link.flow(credit) }
        links[link.id] = LinkState(role: role, link: link)
        if role == .cbsResponses { cbsResponseLink = link.id }
    }

    /// Refuses an attach the AMQP way: an attach with a null terminus on our side, then a detach with the error.
    func refuse(_ link: AMQPLink, _ condition: AMQPCondition) {
        core.logger.info("refused link '\(link.name)': \(condition.name) \(condition.description)")
        core.refusedLinks += 1
        if link.isSender { link.setSource(nil) } else { link.setTarget(nil) }
        link.open()
        link.close(condition)
        links[link.id] = LinkState(role: .refused, link: link)
    }

    /// Forgets a link; for C2D, its locked messages return to the queue.
    func detached(_ link: AMQPLink) {
        guard let state = links.removeValue(forKey: link.id) else { return }
        pendingSends[link.id] = nil
        if state.role == .serviceFeedback { feedbackLinkGone(link.id) }
        if state.role == .serviceFileNotifications { fileNotificationLinkGone(link.id) }
        if cbsResponseLink == link.id { cbsResponseLink = links.first { $0.value.role == .cbsResponses }?.key }
        guard let d = state.role.deviceId, var entry = devices[d] else { return }
        entry.links.remove(link.id)
        switch state.role {
        case .cloudToDevice:
            entry.cloudToDevice = nil
            core.queues[d]?.releaseLocks(Set(entry.locks.keys))
            entry.locks = [:]
        case .methodRequests: entry.methodRequests = nil
        case .methodResponses: entry.methodResponses = nil
        case .twinRequests: entry.twinRequests = nil
        case .twinResponses:
            entry.twinResponses = nil
            entry.desiredSubscribed = false
        default: break
        }
        if entry.links.isEmpty {
            devices[d] = nil
            core.release(d, by: self)
        } else {
            devices[d] = entry
        }
    }

    /// Detaches every link of `deviceId` on this connection with `condition` (disabled device, expired token,
    /// link-creation conflict). The connection and the other devices stay.
    func evict(_ deviceId: String, because condition: AMQPCondition) {
        ref?.execute { [self] _ in
            // The device's registration changed: its certificate is judged again at its next attach.
            if certificateDevice == deviceId { certificateDevice = nil }
            guard let entry = devices[deviceId] else { return }
            for id in entry.links {
                if let state = links[id] {
                    state.link.close(condition)
                    detached(state.link)
                }
            }
        }
    }

    // MARK: X.509

    /// nil when the connection's client certificate authenticates device `d` (it then stays bound to `d`);
    /// otherwise the refusal the hub sends.
    func certificateRefusal(for d: String) -> AMQPCondition? {
        func unauthorized(_ why: String) -> AMQPCondition {
            AMQPCondition(name: IoTHubAMQP.unauthorizedAccess, description: hubErrorJSON(401002, "Unauthorized: \(why)"))
        }
        guard let chain = clientCertificate else { return unauthorized("no valid token on this connection covers device \(d)") }
        guard let device = core.registry.devices[d] else {
            return AMQPCondition(name: IoTHubAMQP.notFound, description: hubErrorJSON(404001, "Device \(d) at IotHub \(core.configuration.hubName) not registered."))
        }
        if let bound = certificateDevice, bound != d { return unauthorized("this connection's certificate authenticated device \(bound); one certificate is one device") }
        let cas = Array((core.registry.certificates ?? [:]).values)
        if let why = X509Authentication.refusal(chain: chain, device: device, cas: cas, now: Date(timeIntervalSince1970: Double(core.now) / 1000)) {
            return unauthorized(why)
        }
        certificateDevice = d
        return nil
    }

    // MARK: tokens

    func liveToken(covering identityPath: String) -> CBSToken? {
        let limit = core.now / 1000 - core.configuration.tokenClockSkewSeconds
        var prefix = identityPath
        while true {
            if let t = tokens[prefix], t.expiry > limit { return t }
            guard let slash = prefix.lastIndex(of: "/") else { return nil }
            prefix = String(prefix[..<slash])
        }
    }

    /// Drops expired tokens and detaches the links they no longer cover with "Token Invalid." (§12 item 32).
    func expireTokens(now: Int64) {
        let limit = now / 1000 - core.configuration.tokenClockSkewSeconds
        let expired = tokens.filter { $0.value.expiry <= limit }
        guard !expired.isEmpty else { return }
        for key in expired.keys { tokens[key] = nil }
        if let t = serviceToken, t.expiry <= limit {
            serviceToken = nil
            evictServiceLinks(because: AMQPCondition(name: IoTHubAMQP.unauthorizedAccess, description: "Token Invalid."))
        }
        for deviceId in devices.keys where deviceId != certificateDevice && liveToken(covering: "/devices/\(deviceId)") == nil {
            evict(deviceId, because: AMQPCondition(name: IoTHubAMQP.unauthorizedAccess, description: "Token Invalid."))
        }
    }

    /// Fault injection: every token covering `deviceId` (or all, when nil) expires now.
    func expireTokensNow(for deviceId: String?) {
        for (key, token) in tokens where deviceId.map({ token.covers("/devices/\($0)") }) ?? true {
            tokens[key]?.expiry = 0
        }
        expireTokens(now: core.now)
    }

    // MARK: sending with credit

    func send(_ message: AMQPMessage, on id: AMQPObjectID, tag: [UInt8]? = nil) {
        guard let state = links[id] else { return }
        if state.link.credit > 0 && (pendingSends[id]?.isEmpty ?? true) {
            transmit(message, on: state.link, tag: tag)
        } else {
            pendingSends[id, default: []].append(message)
        }
    }

    /// Every transfer the hub sends follows, on the wire, the dispositions it decided before: a reply never
    /// overtakes its request's `accepted` (CBS, twin, and any request/response pair).
    func transmit(_ message: AMQPMessage, on link: AMQPLink, tag: [UInt8]? = nil) {
        let tag = tag ?? AMQPUUID.random().bytes
        link.writePendingFrames()
        link.send(AMQPMessageCodec.encode(message), tag: tag, settled: link.remoteSenderSettleMode == .settled)
    }

    private func flushPending(_ link: AMQPLink) {
        guard var queue = pendingSends[link.id], !queue.isEmpty else { return }
        while link.credit > 0, !queue.isEmpty { transmit(queue.removeFirst(), on: link) }
        pendingSends[link.id] = queue
    }

    // MARK: inbound dispatch

    private func received(_ bytes: [UInt8], on delivery: AMQPDelivery) {
        let link = delivery.link
        guard let state = links[link.id] else {
            delivery.dispose(.rejected(AMQPCondition(name: IoTHubAMQP.notAllowed, description: "link not attached")))
            return
        }
        switch state.role {
        case .cbsRequests: receivedPutToken(bytes, delivery: delivery)
        case .telemetry(let d): receivedTelemetry(bytes, delivery: delivery, deviceId: d)
        case .methodResponses(let d, _): receivedMethodResponse(bytes, delivery: delivery, deviceId: d)
        case .twinRequests(let d, _): receivedTwinRequest(bytes, delivery: delivery, deviceId: d)
        case .serviceCloudToDevice: receivedServiceCloudToDevice(bytes, delivery: delivery)
        default: delivery.dispose(.rejected(AMQPCondition(name: IoTHubAMQP.notAllowed, description: "unexpected transfer")))
        }
        let window: Int
        if case .telemetry = state.role { window = 1000 } else { window = 100 }
        if link.credit < window / 2 { link.flow(window - link.credit) }
    }

    private func deliveryUpdated(_ delivery: AMQPDelivery) {
        guard let state = links[delivery.link.id] else {
            delivery.settle()
            return
        }
        if case .cloudToDevice(let d) = state.role {
            cloudToDeviceDisposition(delivery, deviceId: d)
        } else if state.role == .serviceFeedback {
            feedbackDisposition(delivery)
        } else if state.role == .serviceFileNotifications {
            fileNotificationDisposition(delivery)
        } else if delivery.isRemotelySettled {
            delivery.settle()
        }
    }
}

/// `/a/b` is a prefix of `/a/b/c` but not of `/a/bc` (segment-wise, docs/iothub-protocol.md §2.2).
func isSegmentPrefix(_ prefix: String, of path: String) -> Bool {
    if prefix.isEmpty { return true }
    guard path.hasPrefix(prefix) else { return false }
    return path.count == prefix.count || path.dropFirst(prefix.count).first == "/"
}
