import FieldgateCore
import Hummingbird
import IoTHub
import NIOCore
import ProtonAMQP

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The service side over HTTP/JSON, shaped like the IoT Hub service REST API where one exists
/// (`/devices`, `/twins`, `/twins/{id}/methods`), plus C2D send, feedback, the event stream and fault injection.
/// Authorized by a service-policy SAS token in `Authorization`, unless the server runs in open (loopback) mode.
struct ServiceAPI: Sendable {
    let core: HubCore
    let open: Bool
    let faults: @Sendable (Fault) async throws -> JSONValue

    enum Fault: Sendable {
        case refuseConnections(seconds: Int)
    }

    func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/devices") { req, _ in
            try await authorize(req, "RegistryRead")
            let devices = try await core.perform { $0.listDevices() }
            return try json(devices)
        }
        router.get("/devices/{id}") { req, ctx in
            try await authorize(req, "RegistryRead")
            let id = try ctx.parameters.require("id")
            return try json(try await core.perform { core in try core.device(id) })
        }
        router.put("/devices/{id}") { req, ctx in
            try await authorize(req, "RegistryWrite")
            let id = try ctx.parameters.require("id")
            var req = req
            let body = try await Self.bodyJSON(&req)
            let keys = body?["authentication"]?["symmetricKey"]
            let status = body?["status"]?.stringValue
            let primary = keys?["primaryKey"]?.stringValue, secondary = keys?["secondaryKey"]?.stringValue
            let ifNew = req.headers[.ifMatch] == nil && req.uri.queryParameters.get("create") == "true"
            switch body?["authentication"]?["type"]?.stringValue {
            case "selfSigned":
                let t = body?["authentication"]?["x509Thumbprint"]
                guard let p = t?["primaryThumbprint"]?.stringValue else { throw HubError(.badRequest, "selfSigned devices need x509Thumbprint.primaryThumbprint") }
                let s = t?["secondaryThumbprint"]?.stringValue
                return try json(try await core.perform { core in
                    try core.upsertX509Device(id: id, status: status, .selfSigned(primaryThumbprint: p, secondaryThumbprint: s), ifNew: ifNew)
                })
            case "certificateAuthority":
                return try json(try await core.perform { core in try core.upsertX509Device(id: id, status: status, .certificateAuthority, ifNew: ifNew) })
            case nil, "sas": break
            case let other?: throw HubError(.badRequest, "authentication type \(other): use sas, selfSigned or certificateAuthority")
            }
            return try json(try await core.perform { core in
                try core.upsertDevice(id: id, status: status, primaryKey: primary, secondaryKey: secondary, ifNew: ifNew)
            })
        }
        router.put("/certificates/{name}") { req, ctx in
            try await authorize(req, "RegistryWrite")
            let name = try ctx.parameters.require("name")
            var req = req
            let properties = try await Self.bodyJSON(&req)?["properties"]
            guard let pem = properties?["certificate"]?.stringValue else {
                throw HubError(.badRequest, "the body must be {\"properties\": {\"certificate\": \"<PEM>\", \"isVerified\": true}}")
            }
            let verified = properties?["isVerified"] == .bool(true)
            return try json(try await core.perform { core in try core.putCACertificate(name: name, pem: pem, verified: verified) })
        }
        router.delete("/devices/{id}") { req, ctx in
            try await authorize(req, "RegistryWrite")
            let id = try ctx.parameters.require("id")
            try await core.perform { core in try core.deleteDevice(id) }
            return Response(status: .noContent)
        }
        router.delete("/devices/{id}/commands") { req, ctx in
            try await authorize(req, "ServiceConnect")
            let id = try ctx.parameters.require("id")
            let n = try await core.perform { core in try core.purgeCloudToDevice(id) }
            return try json(JSONValue.object(["deviceId": .string(id), "totalMessagesPurged": .int(Int64(n))]))
        }
        router.get("/twins/{id}") { req, ctx in
            try await authorize(req, "ServiceConnect")
            let id = try ctx.parameters.require("id")
            return try json(try await core.perform { core in try core.twinView(id) })
        }
        router.patch("/twins/{id}") { req, ctx in
            try await authorize(req, "ServiceConnect")
            let id = try ctx.parameters.require("id")
            var req = req
            guard let patch = try await Self.bodyJSON(&req) else { throw HubError(.badRequest, "the twin patch must be JSON") }
            return try json(try await core.perform { core in try core.patchTwin(id, patch: patch) })
        }
        router.put("/twins/{id}") { req, ctx in
            try await authorize(req, "ServiceConnect")
            let id = try ctx.parameters.require("id")
            var req = req
            guard let replacement = try await Self.bodyJSON(&req) else { throw HubError(.badRequest, "the twin must be JSON") }
            return try json(try await core.perform { core in try core.replaceTwin(id, with: replacement) })
        }
        router.post("/twins/{id}/methods") { req, ctx in
            try await authorize(req, "ServiceConnect")
            let id = try ctx.parameters.require("id")
            var req = req
            guard let body = try await Self.bodyJSON(&req), let name = body["methodName"]?.stringValue else {
                throw HubError(.badRequest, "the body must be {\"methodName\": …, \"payload\": …, \"responseTimeoutInSeconds\": …}")
            }
            let timeout = body["responseTimeoutInSeconds"]?.intValue.map(Int.init)
            let payload = body["payload"] ?? .null
            let result: MethodResult = try await withCheckedThrowingContinuation { cont in
                core.reactor.execute {
                    core.invokeMethod(id, name: name, payload: payload, timeoutSeconds: timeout) { cont.resume(with: $0) }
                }
            }
            return try json(result)
        }
        router.post("/devices/{id}/messages/deviceBound") { req, ctx in
            try await authorize(req, "ServiceConnect")
            let id = try ctx.parameters.require("id")
            var req = req
            guard let body = try await Self.bodyJSON(&req) else { throw HubError(.badRequest, "the body must be JSON") }
            let (message, ttl) = try cloudToDeviceMessage(from: body)
            let seq = try await core.perform { core in try core.sendCloudToDevice(id, message: message, ttlMilliseconds: ttl) }
            return try json(JSONValue.object(["messageId": .string(message.messageId), "sequenceNumber": .int(Int64(seq))]))
        }
        router.get("/messages/serviceBound/feedback") { req, _ in
            try await authorize(req, "ServiceConnect")
            let wait = min(Int(req.uri.queryParameters.get("wait") ?? "0") ?? 0, 60_000)
            let records: [FeedbackRecord] = await withCheckedContinuation { cont in
                core.reactor.execute { core.readFeedback(waitMilliseconds: wait) { cont.resume(returning: $0) } }
            }
            return try json(records)
        }
        router.get("/events") { req, _ in
            try await authorize(req, "ServiceConnect")
            let q = req.uri.queryParameters
            let wait = min(Int(q.get("wait") ?? "0") ?? 0, 60_000)
            let limit = min(max(Int(q.get("limit") ?? "1000") ?? 1000, 1), 10_000)
            let fromParam = q.get("from").flatMap { Int64($0) }
            let events: [ReceivedEvent] = await withCheckedContinuation { cont in
                core.reactor.execute {
                    let from = fromParam ?? core.nextEventSequence  // no `from`: only what arrives from now on
                    core.readEvents(from: from, limit: limit, waitMilliseconds: wait) { cont.resume(returning: $0) }
                }
            }
            let next = events.last.map { $0.sequenceNumber + 1 } ?? fromParam ?? 0
            return try json(EventPage(events: events, next: next))
        }
        router.get("/statistics") { req, _ in
            try await authorize(req, "RegistryRead")
            return try json(try await core.perform { core in
                JSONValue.object([
                    "connections": .int(Int64(core.connectionCount)), "acceptedEvents": .int(core.acceptedEventCount),
                    "devices": .int(Int64(core.registry.devices.count)), "dailyQuota": core.quotaJSON,
                    "tier": .string(core.tier.rawValue), "refusedLinks": .int(Int64(core.refusedLinks)),
                ])
            })
        }
        router.post("/faults/throttle") { req, _ in
            try await authorize(req, "ServiceConnect")
            var req = req
            let body = try await Self.bodyJSON(&req)
            guard let id = body?["deviceId"]?.stringValue else { throw HubError(.badRequest, "deviceId is required") }
            let seconds = Int(body?["seconds"]?.intValue ?? 60)
            try await core.perform { core in try core.throttle(id, forSeconds: seconds) }
            return try json(JSONValue.object(["throttled": .string(id), "seconds": .int(Int64(seconds))]))
        }
        router.post("/faults/reject-telemetry") { req, _ in
            try await authorize(req, "ServiceConnect")
            var req = req
            let body = try await Self.bodyJSON(&req)
            guard let id = body?["deviceId"]?.stringValue else { throw HubError(.badRequest, "deviceId is required") }
            let count = Int(body?["count"]?.intValue ?? 1)
            try await core.perform { core in try core.rejectTelemetry(id, count: count) }
            return try json(JSONValue.object(["rejecting": .string(id), "count": .int(Int64(count))]))
        }
        router.post("/faults/quota-exceeded") { req, _ in
            try await authorize(req, "ServiceConnect")
            var req = req
            let reset = try await Self.bodyJSON(&req)?["reset"] == .bool(true)
            return try json(try await core.perform { core in
                core.spendQuota(reset: reset)
                return JSONValue.object(["dailyQuota": core.quotaJSON])
            })
        }
        router.post("/faults/expire-tokens") { req, _ in
            try await authorize(req, "ServiceConnect")
            var req = req
            let id = try await Self.bodyJSON(&req)?["deviceId"]?.stringValue
            try await core.perform { $0.expireTokens(deviceId: id) }
            return try json(JSONValue.object(["expired": id.map(JSONValue.string) ?? "all"]))
        }
        router.post("/faults/drop-connections") { req, _ in
            try await authorize(req, "ServiceConnect")
            let n = try await core.perform { $0.dropAllConnections() }
            return try json(JSONValue.object(["dropped": .int(Int64(n))]))
        }
        router.post("/faults/refuse-connections") { req, _ in
            try await authorize(req, "ServiceConnect")
            var req = req
            let seconds = Int(try await Self.bodyJSON(&req)?["seconds"]?.intValue ?? 10)
            return try json(try await faults(.refuseConnections(seconds: seconds)))
        }
        addFileUploadRoutes(to: router)
        return router
    }

    struct EventPage: Codable { var events: [ReceivedEvent]; var next: Int64 }

    /// Checks `Authorization: SharedAccessSignature …&skn=<policy>` against the hub's policies. The policy must hold
    /// exactly the right the operation needs, as on the real hub: RegistryRead / RegistryWrite for the identity
    /// registry; ServiceConnect for twins, methods, C2D, feedback and events (seed 003's permission table).
    func authorize(_ request: Request, _ right: String) async throws {
        if open { return }
        guard let header = request.headers[.authorization] else {
            throw HTTPError(.unauthorized, message: "missing Authorization: SharedAccessSignature … (or run the hub with --open-service-api)")
        }
        let token: SASToken
        do { token = try SASToken.parse(header) } catch { throw HTTPError(.unauthorized, message: error.message) }
        guard let name = token.keyName else { throw HTTPError(.unauthorized, message: "service tokens need skn=<policy>") }
        let host = core.configuration.hostName
        let skew = core.configuration.tokenClockSkewSeconds
        let allowed = try await core.perform { core -> Bool in
            guard let policy = core.policy(name), policy.grants(right) else { return false }
            let resourceHost = token.decodedResource.split(separator: "/").first.map(String.init) ?? ""
            return resourceHost.lowercased() == host.lowercased()
                && token.expiry + skew > core.now / 1000
                && (token.isSigned(with: policy.primaryKey) || token.isSigned(with: policy.secondaryKey))
        }
        guard allowed else { throw HTTPError(.unauthorized, message: "the token is invalid, expired, or its policy lacks \(right)") }
    }

    /// The request's JSON body (at most 1 MiB); nil when empty. Also the DPS's.
    static func bodyJSON(_ request: inout Request) async throws -> JSONValue? {
        let buffer = try await request.collectBody(upTo: 1 << 20)
        guard buffer.readableBytes > 0 else { return nil }
        guard let value = JSONValue.parse(Array(buffer.readableBytesView)) else {
            throw HubError(.badRequest, "the body is not valid JSON")
        }
        return value
    }

    private func cloudToDeviceMessage(from body: JSONValue) throws(HubError) -> (CloudToDeviceMessage, Int64?) {
        let bytes: [UInt8]
        if let b64 = body["bodyBase64"]?.stringValue {
            guard let d = Data(base64Encoded: b64) else { throw HubError(.badRequest, "bodyBase64 is not base64") }
            bytes = Array(d)
        } else if let s = body["body"]?.stringValue {
            bytes = Array(s.utf8)
        } else if let v = body["body"] {
            bytes = v.bytes
        } else {
            bytes = []
        }
        var props: [String: String] = [:]
        for (k, v) in body["properties"]?.objectValue ?? [:] {
            guard let s = v.stringValue else { throw HubError(.badRequest, "property \(k) must be a string") }
            props[k] = s
        }
        let ackRaw = body["ack"]?.stringValue ?? "none"
        guard let ack = FeedbackRequest(rawValue: ackRaw) else { throw HubError(.badRequest, "ack must be none, positive, negative or full") }
        let message = CloudToDeviceMessage(
            messageId: body["messageId"]?.stringValue ?? AMQPUUID.random().description, correlationId: body["correlationId"]?.stringValue,
            body: bytes, properties: props, contentType: body["contentType"]?.stringValue,
            contentEncoding: body["contentEncoding"]?.stringValue, ack: ack)
        let ttl = body["ttlSeconds"]?.intValue.map { $0 * 1000 }
        if let ttl, ttl < 60_000 || ttl > 172_800_000 { throw HubError(.badRequest, "ttlSeconds must be between 60 and 172800") }
        return (message, ttl)
    }

    func json(_ value: some Encodable) throws -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = try encoder.encode(value)
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}

extension HubError: HTTPResponseError {
    public var status: HTTPResponse.Status { .init(code: code.httpStatus) }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        let body = hubErrorJSON(errorCode ?? code.httpStatus * 1000, message)
        return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: body)))
    }
}

