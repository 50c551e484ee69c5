import FieldgateCore
import IoTHub
import Logging
import ProtonAMQP

extension HubConnection {
    /// A put-token request on `$cbs` (docs/iothub-protocol.md §3, §12 items 1–9). The request is accepted first
    /// (the C SDK tears the connection down otherwise), then answered on this connection's `$cbs` receiver link.
    func receivedPutToken(_ bytes: [UInt8], delivery: AMQPDelivery) {
        delivery.dispose(.accepted)
        guard let request = try? AMQPMessageCodec.decode(bytes) else {
            core.logger.notice("undecodable CBS request dropped")
            return
        }
        let (status, description) = evaluatePutToken(request)
        var reply = AMQPMessage()
        reply.correlationID = request.messageID  // same AMQP type as the request's message-id
        reply.applicationProperties = ["status-code": .int(Int32(status)), "status-description": .string(description)]
        if let responseLink = cbsResponseLink {
            send(reply, on: responseLink)
        } else {
            core.logger.notice("CBS reply dropped: the connection has no $cbs receiver link")
        }
    }

    private func evaluatePutToken(_ request: AMQPMessage) -> (Int, String) {
        let props = request.applicationProperties
        let operation = props["operation"]?.stringValue
        guard operation == "put-token" || operation == "delete-token" else {
            return (400, "unsupported CBS operation '\(operation ?? "")'")
        }
        guard let type = props["type"]?.stringValue?.lowercased(),
              type == IoTHubAMQP.tokenTypeServiceBus || type == IoTHubAMQP.tokenTypeAzureDevices
        else { return (400, "unsupported token type '\(props["type"]?.stringValue ?? "")'") }
        guard let rawName = props["name"]?.stringValue, !rawName.isEmpty,
              let decodedName = PercentEncoding.decode(rawName)
        else { return (400, "the put-token request has no audience (name)") }
        // Service clients name the hub as a URL (uamqp: "https://{host}", the C SDK: "amqps://{host}/…").
        let audience = withoutScheme(decodedName)

        let audienceSlash = audience.firstIndex(of: "/") ?? audience.endIndex
        let audienceHost = String(audience[..<audienceSlash])
        let audiencePath = String(audience[audienceSlash...]).trimmingTrailingSlash
        if operation == "delete-token" {
            tokens[audiencePath] = nil
            expireTokens(now: core.now)
            return (200, "OK")
        }
        guard case .value(.string(let tokenString)) = request.body else {
            return (400, "the put-token body must be an amqp-value string")
        }
        let token: SASToken
        do { token = try SASToken.parse(tokenString) } catch { return (401, "The SAS token is malformed: \(error.message)") }

        let nowSeconds = core.now / 1000
        if token.expiry + core.configuration.tokenClockSkewSeconds <= nowSeconds {
            return (401, "The specified SAS token is expired.")
        }
        // sr = {host}[/devices[/{d}]], host compared case-insensitively (§12 item 5).
        let resource = token.decodedResource
        let slash = resource.firstIndex(of: "/") ?? resource.endIndex
        let host = String(resource[..<slash])
        let scopePath = String(resource[slash...]).trimmingTrailingSlash
        guard host.lowercased() == core.configuration.hostName.lowercased() else {
            return (401, "The SAS token's resource \(host) does not name this hub (\(core.configuration.hostName)).")
        }
        let segments = scopePath.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        let scopedDevice: String?
        switch segments.count {
        case 0: scopedDevice = nil
        case 1 where segments.first == "devices": scopedDevice = nil
        case 2 where segments.first == "devices": scopedDevice = String(segments.last!)
        default: return (401, "The SAS token's resource \(resource) is not a device or hub scope.")
        }

        let keys: (String, String)
        var deviceConnect = true, serviceConnect = false
        if let policyName = token.keyName {
            guard let policy = core.registry.policies[policyName] else {
                return (401, "The shared access policy \(policyName) does not exist.")
            }
            deviceConnect = policy.grants("DeviceConnect")
            serviceConnect = policy.grants("ServiceConnect") && scopePath.isEmpty
            guard deviceConnect || serviceConnect else {
                return (401, "The shared access policy \(policyName) grants neither DeviceConnect nor ServiceConnect on \(resource).")
            }
            keys = (policy.primaryKey, policy.secondaryKey)
        } else {
            guard let d = scopedDevice else { return (401, "A device-key token must be scoped to one device.") }
            guard let device = core.registry.devices[d] else {
                return (404, "Device \(d) at IotHub \(core.configuration.hubName) not registered.")
            }
            keys = (device.authentication.symmetricKey.primaryKey, device.authentication.symmetricKey.secondaryKey)
        }
        guard token.isSigned(with: keys.0) || token.isSigned(with: keys.1) else {
            return (401, "The specified SAS token has an invalid signature. It does not match either the primary or secondary key.")
        }
        if let d = scopedDevice {
            guard let device = core.registry.devices[d] else {
                return (404, "Device \(d) at IotHub \(core.configuration.hubName) not registered.")
            }
            guard device.isEnabled else { return (401, "Device \(d) is disabled.") }
        }
        // The audience must be covered by what the token grants (§12 item 7).
        guard audienceHost.lowercased() == host.lowercased(), isSegmentPrefix(scopePath, of: audiencePath) else {
            return (401, "The audience \(audience) is not covered by the token's resource \(resource).")
        }
        if tokens[audiencePath] == nil && tokens.count >= core.configuration.maxTokensPerConnection {
            return (403, "This connection already holds \(core.configuration.maxTokensPerConnection) tokens.")
        }
        guard deviceConnect || audiencePath.isEmpty else {
            return (401, "The shared access policy \(token.keyName ?? "") grants ServiceConnect, which covers the hub's service endpoints, not \(audience).")
        }
        guard core.admitAuthentication() else { return (429, "Device connections are being throttled.") }
        // The token authenticates what its audience names, which lies inside its resource: devices for
        // DeviceConnect, the hub's service endpoints for ServiceConnect.
        if deviceConnect {
            tokens[audiencePath] = CBSToken(scopePath: audiencePath, expiry: token.expiry, policy: token.keyName)
        }
        if serviceConnect && audiencePath.isEmpty {
            serviceToken = CBSToken(scopePath: "", expiry: token.expiry, policy: token.keyName)
        }
        return (200, "OK")
    }
}

/// `amqps://host/path` → `host/path`; anything without a scheme stays as it is.
func withoutScheme(_ address: String) -> String {
    guard let r = address.firstRange(of: "://") else { return address }
    return String(address[r.upperBound...])
}

extension String {
    var trimmingTrailingSlash: String {
        var s = self
        while s.hasSuffix("/") { s.removeLast() }
        return s
    }
}
