import FieldgateCore
import IoTHub
import Logging
import ProtonAMQP

/// What the service side asks of the hub. Every function runs on the reactor thread (via `perform`).
extension HubCore {
    // MARK: registry

    public func listDevices() -> [DeviceRecord] { registry.devices.values.sorted { $0.deviceId < $1.deviceId } }

    public func device(_ id: String) throws(HubError) -> DeviceRecord {
        guard let d = registry.devices[id] else { throw HubError(.notFound, "Device \(id) is not registered.") }
        return d
    }

    @discardableResult
    public func upsertDevice(id: String, status: String?, primaryKey: String?, secondaryKey: String?, ifNew: Bool = false) throws(HubError) -> DeviceRecord {
        if ifNew, registry.devices[id] != nil { throw HubError(.conflict, "Device \(id) already exists.") }
        let before = registry.devices[id]
        let record = try registry.upsertDevice(id: id, status: status ?? before?.status ?? "enabled", primaryKey: primaryKey, secondaryKey: secondaryKey)
        if twins[id] == nil { twins[id] = TwinDocument(deviceId: id, nowMilliseconds: now) }
        let keysChanged = before.map { $0.authentication != record.authentication } ?? false
        if !record.isEnabled || keysChanged {
            deviceOwners[id]?.evict(id, because: AMQPCondition(name: IoTHubAMQP.unauthorizedAccess, description: hubErrorJSON(401002, "Device \(id) is disabled or its keys changed.")))
            for c in connections.values { c.dropTokens(scopedTo: id) }
        }
        markDirty()
        return record
    }

    /// Creates or replaces an X.509 device (thumbprints, or a chain to a verified CA certificate).
    @discardableResult
    public func upsertX509Device(id: String, status: String?, _ registration: X509Registration, ifNew: Bool = false) throws(HubError) -> DeviceRecord {
        if ifNew, registry.devices[id] != nil { throw HubError(.conflict, "Device \(id) already exists.") }
        let before = registry.devices[id]
        let record = try registry.upsertX509Device(id: id, status: status ?? before?.status ?? "enabled", registration)
        if twins[id] == nil { twins[id] = TwinDocument(deviceId: id, nowMilliseconds: now) }
        if !record.isEnabled || before.map({ $0.authentication != record.authentication }) ?? false {
            deviceOwners[id]?.evict(id, because: AMQPCondition(name: IoTHubAMQP.unauthorizedAccess, description: hubErrorJSON(401002, "Device \(id) is disabled or its credentials changed.")))
            for c in connections.values { c.dropTokens(scopedTo: id) }
        }
        markDirty()
        return record
    }

    /// Adds or replaces a CA certificate (IoT Hub's Certificates): `certificateAuthority` devices chain to the
    /// verified ones. `verified` stands for the proof of possession (or the portal's "verified on upload").
    public func putCACertificate(name: String, pem: String, verified: Bool) throws(HubError) -> CACertificateRecord {
        guard pem.contains("-----BEGIN CERTIFICATE-----") else { throw HubError(.badRequest, "the certificate must be PEM") }
        let record = CACertificateRecord(name: name, pem: pem, isVerified: verified)
        var all = registry.certificates ?? [:]
        all[name] = record
        registry.certificates = all
        markDirty()
        return record
    }

    public func deleteDevice(_ id: String) throws(HubError) {
        guard registry.devices.removeValue(forKey: id) != nil else { throw HubError(.notFound, "Device \(id) is not registered.") }
        twins[id] = nil
        queues[id] = nil
        deviceOwners[id]?.evict(id, because: AMQPCondition(name: IoTHubAMQP.notFound, description: hubErrorJSON(404001, "Device \(id) was deleted.")))
        for c in connections.values { c.dropTokens(scopedTo: id) }
        markDirty()
    }

    public func policy(_ name: String) -> PolicyRecord? { registry.policies[name] }

    // MARK: twins

    func twin(for id: String) -> TwinDocument {
        twins[id] ?? TwinDocument(deviceId: id, nowMilliseconds: now)
    }

    /// Basic-tier hubs have no C2D, twins or methods (403010).
    func requireStandardTier(_ feature: String) throws(HubError) {
        if tier == .basic { throw HubError.notInTier(feature) }
    }

    public func twinView(_ id: String) throws(HubError) -> JSONValue {
        try requireStandardTier("Device twins")
        let d = try device(id)
        return twin(for: id).serviceView(etag: d.etag, status: d.status)
    }

    /// Replaces the tags and the desired properties (`PUT /twins/{id}`): what the new twin leaves out is removed.
    public func replaceTwin(_ id: String, with replacement: JSONValue) throws(HubError) -> JSONValue {
        try requireStandardTier("Device twins")
        guard case .object(let root) = replacement else { throw HubError(.badRequest, "a twin must be a JSON object") }
        let current = twin(for: id)
        let patch: JSONValue = [
            "tags": TwinDocument.replacementPatch(from: current.tags, to: root["tags"] ?? .object([:])),
            "properties": ["desired": TwinDocument.replacementPatch(from: current.desired, to: root["properties"]?["desired"] ?? .object([:]))],
        ]
        return try patchTwin(id, patch: patch)
    }

    /// Applies `{"tags":…, "properties":{"desired":…}}` and pushes the desired part to a subscribed device.
    public func patchTwin(_ id: String, patch: JSONValue) throws(HubError) -> JSONValue {
        try requireStandardTier("Device twins")
        let d = try device(id)
        guard case .object(let root) = patch else { throw HubError(.badRequest, "a twin patch must be a JSON object") }
        var t = twin(for: id)
        if let tags = root["tags"] { try t.patchTags(tags) }
        if let desired = root["properties"]?["desired"] {
            let pushed = try t.patchDesired(desired, nowMilliseconds: now)
            deviceOwners[id]?.pushDesiredLater(pushed, deviceId: id, version: t.desiredVersion)
        }
        if root["properties"]?["reported"] != nil {
            throw HubError(.badRequest, "reported properties are written by the device only")
        }
        twins[id] = t
        markDirty()
        return t.serviceView(etag: d.etag, status: d.status)
    }

    // MARK: C2D

    /// Queues a C2D message (64 KB, 50 per device) and delivers it if the device is connected.
    public func sendCloudToDevice(_ id: String, message: CloudToDeviceMessage, ttlMilliseconds: Int64?) throws(HubError) -> UInt64 {
        try requireStandardTier("Cloud-to-device messaging")
        _ = try device(id)
        let size = message.body.count + message.properties.reduce(0) { $0 + $1.key.utf8.count + $1.value.utf8.count }
        guard size <= IoTHubAMQP.maxCloudToDeviceSize else {
            throw HubError(.tooLarge, "the message is \(size) bytes; cloud-to-device messages are at most \(IoTHubAMQP.maxCloudToDeviceSize)")
        }
        var queue = queues[id] ?? CloudToDeviceQueue(limits: configuration.cloudToDevice)
        let seq = try queue.enqueue(message, ttlMilliseconds: ttlMilliseconds, now: now)
        queues[id] = queue
        registry.devices[id]?.cloudToDeviceMessageCount = queue.count
        markDirty()
        if let owner = deviceOwners[id] { owner.ref?.execute { _ in owner.pumpCloudToDevice(id) } }
        return seq
    }

    /// Messages in the device's C2D queue (enqueued or locked), as the registry's `cloudToDeviceMessageCount`.
    public func cloudToDeviceQueueCount(_ id: String) -> Int { queues[id]?.count ?? 0 }

    public func purgeCloudToDevice(_ id: String) throws(HubError) -> Int {
        try requireStandardTier("Cloud-to-device messaging")
        _ = try device(id)
        let purged = queues[id]?.purge() ?? []
        for m in purged { recordFeedback(deviceId: id, message: m, outcome: .purged) }
        markDirty()
        return purged.count
    }

    /// Feedback records now, or within `waitMilliseconds` when there are none yet.
    public func readFeedback(waitMilliseconds: Int, deliver: @escaping @Sendable ([FeedbackRecord]) -> Void) {
        let ready = takeFeedback()
        if !ready.isEmpty || waitMilliseconds <= 0 { return deliver(ready) }
        let waiter = feedback.addWaiter(deliver)
        reactor.schedule(after: .milliseconds(waitMilliseconds)) { [self] in feedback.removeWaiter(waiter)?([]) }
    }

    // MARK: events

    /// Events from sequence `from`, now or within `waitMilliseconds` when none are there yet.
    public func readEvents(from: Int64, limit: Int, waitMilliseconds: Int, deliver: @escaping @Sendable ([ReceivedEvent]) -> Void) {
        let ready = readEvents(from: from, limit: limit)
        if !ready.isEmpty || waitMilliseconds <= 0 { return deliver(ready) }
        let once = OnceBox(deliver)
        eventWaiters.append((from, { once.call($0) }))
        reactor.schedule(after: .milliseconds(waitMilliseconds)) { once.call([]) }
    }

    public var nextEventSequence: Int64 { events.nextSequence }
    public var acceptedEventCount: Int64 { events.totalAccepted }

    // MARK: methods

    /// Invokes a direct method: 404 when the device has no paired method links, 504 when it does not answer in
    /// time (default 30 s, at most 300 s).
    public func invokeMethod(_ id: String, name: String, payload: JSONValue, timeoutSeconds: Int?,
                             complete: @escaping @Sendable (Result<MethodResult, HubError>) -> Void) {
        if tier == .basic { return complete(.failure(.notInTier("Direct methods"))) }
        guard registry.devices[id] != nil else {
            return complete(.failure(HubError(.notFound, "Device \(id) is not registered.")))
        }
        let timeout = timeoutSeconds ?? configuration.methodDefaultTimeoutSeconds
        guard (5...configuration.methodMaxTimeoutSeconds).contains(timeout) || timeoutSeconds == nil else {
            return complete(.failure(HubError(.badRequest, "responseTimeoutInSeconds must be between 5 and \(configuration.methodMaxTimeoutSeconds)")))
        }
        guard Self.isValidMethodName(name) else {
            return complete(.failure(HubError(.badRequest, "'\(name)' is not a valid method name")))
        }
        guard payload.bytes.count <= 128 * 1024 else {
            return complete(.failure(HubError(.tooLarge, "method payloads are at most 128 KB")))
        }
        guard let owner = deviceOwners[id], owner.devices[id]?.methodsPaired == true else {
            return complete(.failure(HubError(.notFound, "Device \(id) is not online (no method links attached).")))
        }
        let requestID = AMQPUUID.random()
        let timer = reactor.schedule(after: .seconds(timeout)) { [self] in
            guard pendingMethods.removeValue(forKey: requestID) != nil else { return }
            complete(.failure(HubError(.gatewayTimeout, "Timed out waiting for the response from device \(id).")))
        }
        pendingMethods[requestID] = PendingMethod(deviceId: id, complete: { complete(.success($0)) }, timer: timer)
        owner.ref?.execute { [self] _ in
            if !owner.sendMethodRequest(deviceId: id, requestID: requestID, name: name, payload: payload) {
                if pendingMethods.removeValue(forKey: requestID) != nil {
                    timer.cancel()
                    complete(.failure(HubError(.notFound, "Device \(id) is not online (no method links attached).")))
                }
            }
        }
    }

    /// US-ASCII printable alphanumerics except `$ ( ) < > @ , ; : \ ' / [ ] ? = { }` SP HT.
    static func isValidMethodName(_ name: String) -> Bool {
        let forbidden = Set("$()<>@,;:\\'/[]?={} \t".unicodeScalars)
        return !name.isEmpty && name.unicodeScalars.allSatisfy { $0.value > 0x20 && $0.value < 0x7F && !forbidden.contains($0) }
    }

    // MARK: faults

    public func throttle(_ id: String, forSeconds seconds: Int) throws(HubError) {
        _ = try device(id)
        throttledUntil[id] = now + Int64(seconds) * 1000
    }

    /// The device's next `count` telemetry messages are refused for good, as the hub refuses a malformed one.
    public func rejectTelemetry(_ id: String, count: Int) throws(HubError) {
        _ = try device(id)
        rejectTelemetry[id] = max(0, count)
    }

    public func expireTokens(deviceId: String?) {
        for c in connections.values { c.ref?.execute { _ in c.expireTokensNow(for: deviceId) } }
    }

    /// Drops every device connection at the socket, without an AMQP close (as a network failure would).
    public func dropAllConnections() -> Int {
        let all = Array(connections.values)
        for c in all { c.ref?.execute { $0.abort() } }
        return all.count
    }

    public var connectionCount: Int { connections.count }
}

extension HubConnection {
    func dropTokens(scopedTo deviceId: String) {
        ref?.execute { [self] _ in
            for (key, token) in tokens where token.scopePath == "/devices/\(deviceId)" { tokens[key] = nil }
        }
    }

    func pushDesiredLater(_ patch: JSONValue, deviceId: String, version: Int64) {
        ref?.execute { [self] _ in pushDesired(patch, deviceId: deviceId, version: version) }
    }
}

/// Calls a completion at most once (a long poll answered either by data or by its timer).
final class OnceBox<T>: @unchecked Sendable {
    // @unchecked: used on the reactor thread only.
    private var body: ((T) -> Void)?
    init(_ body: @escaping (T) -> Void) { self.body = body }
    func call(_ value: T) {
        let b = body
        body = nil
        b?(value)
    }
}
