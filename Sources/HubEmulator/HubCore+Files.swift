import FieldgateCore
import IoTHub
import Logging
import ProtonAMQP

extension HubCore {
    /// Checks a device's HTTPS request: `Authorization: SharedAccessSignature sr={host}/devices/{id}…`, signed with
    /// one of the device's keys, or a hub policy with DeviceConnect whose scope covers the device. The device must
    /// exist and be enabled.
    func authorizeDevice(_ header: String?, deviceId: String) throws(HubError) {
        guard let header else { throw HubError(.unauthorized, "missing Authorization: SharedAccessSignature sr=…/devices/\(deviceId)…", errorCode: 401002) }
        let token: SASToken
        do { token = try SASToken.parse(header) } catch { throw HubError(.unauthorized, "the SAS token is malformed: \(error.message)", errorCode: 401002) }
        guard token.expiry + configuration.tokenClockSkewSeconds > now / 1000 else {
            throw HubError(.unauthorized, "IotHubUnauthorized: the SAS token has expired", errorCode: 401003)
        }
        let resource = token.decodedResource
        let slash = resource.firstIndex(of: "/") ?? resource.endIndex
        let scope = String(resource[slash...]).trimmingTrailingSlash
        guard String(resource[..<slash]).lowercased() == configuration.hostName.lowercased(),
              scope.isEmpty || scope == "/devices" || scope == "/devices/\(deviceId)"
        else { throw HubError(.unauthorized, "IotHubUnauthorized: the token's resource \(resource) does not cover device \(deviceId)", errorCode: 401003) }
        guard let device = registry.devices[deviceId] else {
            throw HubError(.notFound, "Device \(deviceId) at IotHub \(configuration.hubName) not registered.", errorCode: 404001)
        }
        let keys: [String]
        if let name = token.keyName {
            guard let policy = registry.policies[name], policy.grants("DeviceConnect") else {
                throw HubError(.unauthorized, "IotHubUnauthorized: policy \(name) does not grant DeviceConnect", errorCode: 401003)
            }
            keys = [policy.primaryKey, policy.secondaryKey]
        } else {
            guard scope == "/devices/\(deviceId)" else {
                throw HubError(.unauthorized, "IotHubUnauthorized: a device-key token must be scoped to the device", errorCode: 401003)
            }
            keys = [device.authentication.symmetricKey.primaryKey, device.authentication.symmetricKey.secondaryKey]
        }
        guard keys.contains(where: token.isSigned(with:)) else {
            throw HubError(.unauthorized, "IotHubUnauthorized: the SAS token's signature matches neither key", errorCode: 401003)
        }
        guard device.isEnabled else { throw HubError(.unauthorized, "Device \(deviceId) is disabled.", errorCode: 401002) }
    }

    /// `POST /devices/{id}/files`: a SAS URI for `{id}/{blobName}` in the hub's storage container.
    func startFileUpload(deviceId: String, blobName: String) throws(HubError) -> JSONValue {
        guard let endpoint = blobEndpoint else {
            throw HubError(.badRequest, "file upload is not configured on this hub: no storage account is associated (fieldgate-hub serves blobs on its HTTPS port: serve --https-port)", errorCode: 400022)
        }
        // A file upload costs the daily quota two messages, its start and its notification, as IoT Hub bills it.
        if let refusal = quotaExceededMessage() { throw HubError(.forbidden, refusal, errorCode: 403002) }
        let upload = try fileUploads.start(deviceId: deviceId, blobName: blobName, nowMs: now)
        chargeQuota(messageSizes: [0])
        return ["correlationId": .string(upload.correlationId), "hostName": .string(endpoint), "containerName": .string(FileUploads.container),
                "blobName": .string(upload.blobName), "sasToken": .string(upload.sasToken)]
    }

    /// `POST /devices/{id}/files/notifications`: the upload is over; a successful one whose blob is there becomes a
    /// file-upload notification for the service side.
    func finishFileUpload(deviceId: String, body: JSONValue) throws(HubError) {
        guard let correlation = body["correlationId"]?.stringValue, case .bool(let success)? = body["isSuccess"] else {
            throw HubError(.badRequest, "the notification needs correlationId and isSuccess", errorCode: 400004)
        }
        guard let upload = fileUploads.finish(deviceId: deviceId, correlationId: correlation) else {
            throw HubError(.badRequest, "no file upload \(correlation) is outstanding for device \(deviceId)", errorCode: 400004)
        }
        chargeQuota(messageSizes: [0])
        guard success else {
            logger.info("file upload \(upload.blobName) reported failed by \(deviceId): \(body["statusCode"]?.intValue ?? 0) \(body["statusDescription"]?.stringValue ?? "")")
            return
        }
        guard let blob = blobs.list(prefix: upload.blobName).first(where: { $0.name == upload.blobName }) else {
            throw HubError(.badRequest, "device \(deviceId) reported \(upload.blobName) uploaded, but the blob is not in the container", errorCode: 400004)
        }
        fileUploads.notifications.append(FileUploads.Notification(
            deviceId: deviceId, blobUri: "https://\(blobEndpoint ?? "")/\(FileUploads.container)/\(upload.blobName)", blobName: upload.blobName,
            lastUpdatedTime: blob.lastModified, blobSizeInBytes: blob.size, enqueuedTimeUtc: WallClock.iso8601(milliseconds: now)))
        dispatchFileNotifications()
    }

    /// Hands the waiting notifications to the oldest consumer waiting for them.
    func dispatchFileNotifications() {
        guard let (deliver, records) = fileUploads.notifications.nextHandOff() else { return }
        deliver(records)
    }

    /// A Blob service `PUT` (block blob) with a SAS this hub issued.
    func putBlob(_ name: String, query: [String: String], blobType: String?, bytes: [UInt8]) throws(HubError) {
        if let why = fileUploads.refusal(blob: name, query: query, nowMs: now) {
            throw HubError(.forbidden, "AuthenticationFailed: \(why)")
        }
        guard blobType == "BlockBlob" else { throw HubError(.badRequest, "x-ms-blob-type must be BlockBlob") }
        try blobs.put(name, bytes: bytes, nowMs: now)
    }

    /// File-upload notifications now, or within `waitMilliseconds` when there are none yet.
    func readFileNotifications(waitMilliseconds: Int, deliver: @escaping @Sendable ([FileUploads.Notification]) -> Void) {
        let ready = fileUploads.notifications.takeAll()
        if !ready.isEmpty || waitMilliseconds <= 0 { return deliver(ready) }
        let waiter = fileUploads.notifications.addWaiter(deliver)
        reactor.schedule(after: .milliseconds(waitMilliseconds)) { [self] in fileUploads.notifications.removeWaiter(waiter)?([]) }
    }

    /// Blobs in the hub's container (service side and CLI).
    public func listBlobs(prefix: String = "") -> [JSONValue] {
        blobs.list(prefix: prefix).map { ["name": .string($0.name), "size": .int(Int64($0.size)), "lastModified": .string($0.lastModified)] }
    }

    public func blobContent(_ name: String) -> [UInt8]? { blobs.get(name) }
}
