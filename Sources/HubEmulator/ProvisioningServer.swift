import FieldgateCore
import HTTPTypes
import Hummingbird
import HummingbirdTLS
import IoTHub
import Logging
import NIOCore
import NIOSSL
import ProtonAMQP
import ServiceLifecycle
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Settings of the emulated Device Provisioning Service.
public struct ProvisioningServerConfiguration: Sendable {
    /// The id scope devices name in their requests. Default: `0ne00FIELD1`.
    public var idScope = "0ne00FIELD1"
    /// The service's host name: service tokens name it. Default: localhost.
    public var hostName = "localhost"
    public var bindHost = "127.0.0.1"
    /// HTTPS port (443 at DPS); 0 picks a free one.
    public var port = 443
    public var tls: AMQPServerTLS
    /// The wait DPS asks for (Retry-After) between a register request and the operation's status. Default: 3 s.
    public var retryAfterSeconds = 3
    /// Tolerated token clock skew, in seconds. Default: 300.
    public var tokenClockSkewSeconds: Int64 = 300
    /// Enrollment management without authorization (loopback development only). Default: false.
    public var openServiceAPI = false
    /// Where enrollments and registrations persist (`dps.json`); nil = memory only.
    public var stateDirectory: String?

    public init(tls: AMQPServerTLS) { self.tls = tls }
}

/// The Device Provisioning Service as devices and the service SDKs reach it (docs/provisioning.md): devices
/// `PUT /{idScope}/registrations/{id}/register` and poll `GET …/operations/{operationId}`; the service side manages
/// `/enrollments/{id}`, `/enrollmentGroups/{id}` and `/registrations/{id}`. An assignment creates (or updates) the
/// device in the chosen linked hub with the attested keys, as DPS does.
public final class ProvisioningServer: Sendable {
    public let configuration: ProvisioningServerConfiguration
    private let linked: [HubCore]
    private let logger: Logger
    private let state: Mutex<ProvisioningState>
    private let operations = Mutex<[String: Operation]>([:])
    private let task = Mutex<(task: Task<Void, any Error>?, group: ServiceGroup?)>((nil, nil))

    private struct Operation {
        var registrationID: String
        var createdMilliseconds = WallClock.nowMilliseconds()
        /// The operation's final answer: `assigned`, `failed` or `disabled`, with the registration state.
        var result: JSONValue
        var statusText: String
    }

    /// - Parameter linkedHubs: the hubs devices may be assigned to, by their host names.
    public init(configuration: ProvisioningServerConfiguration, linkedHubs: [HubCore], logger: Logger = Logger(label: "fieldgate.dps")) {
        self.configuration = configuration
        self.linked = linkedHubs
        self.logger = logger
        var initial = ProvisioningState(idScope: configuration.idScope)
        if let dir = configuration.stateDirectory, let bytes = FileManager.default.contents(atPath: dir + "/dps.json"),
           let saved = try? JSONDecoder().decode(ProvisioningState.self, from: bytes) {
            initial = saved
            initial.idScope = configuration.idScope
        }
        state = Mutex(initial)
    }

    public var linkedHubNames: [String] { linked.map(\.configuration.hostName) }
    private let counters = Mutex<(registerRequests: Int, assignments: Int)>((0, 0))
    /// Register requests received and assignments made since the start.
    public var registerRequests: Int { counters.withLock { $0.registerRequests } }
    public var assignmentsMade: Int { counters.withLock { $0.assignments } }

    /// Adds or replaces an enrollment group (the service API's PUT does the same).
    public func put(_ group: EnrollmentGroup) {
        state.withLock { $0.enrollmentGroups[group.enrollmentGroupId] = group }
        save()
    }

    /// Adds or replaces an individual enrollment.
    public func put(_ enrollment: IndividualEnrollment) {
        state.withLock { $0.enrollments[enrollment.registrationId] = enrollment }
        save()
    }
    public var serviceKey: String { state.withLock { $0.serviceKey } }
    public var snapshot: ProvisioningState { state.withLock { $0 } }

    /// Serves HTTPS; returns the bound port.
    public func start() async throws -> Int {
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(configuration.tls.certificateFile).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: configuration.tls.privateKeyFile, format: .pem)))
        tls.certificateVerification = .optionalVerification
        tls.trustRoots = .certificates([])  // the enrollments decide, not a system trust store (which may be absent)
        let promise = PortPromise()
        // Devices with X.509 attestation present their certificate; any passes the handshake and the enrollment decides.
        let app = Application(
            router: router(),
            server: try .tls(.http1(), configuration: .init(tlsConfiguration: tls) { _, promise in promise.succeed(.certificateVerified) }),
            configuration: .init(address: .hostname(configuration.bindHost, port: configuration.port), serverName: "fieldgate-dps"),
            onServerRunning: { promise.complete(.success($0.localAddress?.port ?? 0)) },
            logger: logger)
        let group = ServiceGroup(services: [app], gracefulShutdownSignals: [], logger: logger)
        let running = Task {
            do { try await group.run() } catch { promise.complete(.failure(error)); throw error }
        }
        task.withLock { $0 = (running, group) }
        let port = try await promise.value()
        logger.info("fieldgate-hub DPS serving id scope \(configuration.idScope) on https port \(port), linked hubs: \(linkedHubNames.joined(separator: ", "))")
        return port
    }

    public func stop() async {
        let (running, group) = task.withLock { t in defer { t = (nil, nil) }; return t }
        await group?.triggerGracefulShutdown()
        _ = try? await running?.value
        save()
    }

    private func save() {
        guard let dir = configuration.stateDirectory else { return }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard let bytes = try? encoder.encode(state.withLock { $0 }) else { return }
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        StateFile.replace(dir + "/dps.json", with: Array(bytes), mode: 0o600)
    }

    // MARK: device API

    /// A register request: authenticate, choose the hub, create the device there; the device learns the outcome from
    /// the operation it polls.
    func register(registrationID: String, authorization: String?, clientCertificate: [UInt8]?, body: JSONValue?) async -> Response {
        let now = WallClock.nowMilliseconds()
        counters.withLock { $0.registerRequests += 1 }
        guard isValidRegistrationID(registrationID) else {
            return Self.refusal(ProvisioningRefusal(status: 400, errorCode: 400004, message: "Invalid registration id \(registrationID): lowercase letters, digits and - . _ : only"))
        }
        if let named = body?["registrationId"]?.stringValue, named != registrationID {
            return Self.refusal(ProvisioningRefusal(status: 400, errorCode: 400004, message: "The body's registrationId \(named) differs from the path's \(registrationID)"))
        }
        let planned = state.withLock { s -> Result<ProvisioningPlan, ProvisioningRefusal> in
            if authorization == nil, let clientCertificate {
                return s.authenticateCertificate(registrationID: registrationID, leafDER: clientCertificate, now: Date(timeIntervalSince1970: Double(now) / 1000))
                    .flatMap { s.plan(registrationID: registrationID, keys: SymmetricKeyPair(), group: $0.group, enrollment: $0.enrollment,
                                      linkedHubs: linkedHubNames, x509Thumbprint: $0.thumbprint) }
            }
            return s.authenticate(registrationID: registrationID, authorization: authorization, nowSeconds: now / 1000,
                                  skewSeconds: configuration.tokenClockSkewSeconds)
                .flatMap { s.plan(registrationID: registrationID, keys: $0.keys, group: $0.group, enrollment: $0.enrollment, linkedHubs: linkedHubNames) }
        }
        let plan: ProvisioningPlan
        switch planned {
        case .failure(let refusal): return Self.refusal(refusal)
        case .success(let p): plan = p
        }
        let operationID = "5." + AMQPUUIDText.random().prefix(16) + "." + AMQPUUIDText.random()
        var operation: Operation
        if plan.disabled {
            operation = Operation(registrationID: registrationID, result: [
                "registrationId": .string(registrationID), "status": "disabled",
                "errorCode": 401007, "errorMessage": "The enrollment is disabled",
            ], statusText: "disabled")
        } else if let hub = linked.first(where: { $0.configuration.hostName == plan.hub }) {
            do {
                _ = try await hub.perform { core in
                    if let thumbprint = plan.x509Thumbprint {
                        try core.upsertX509Device(id: plan.deviceId, status: "enabled", .selfSigned(primaryThumbprint: thumbprint, secondaryThumbprint: nil))
                    } else {
                        try core.upsertDevice(id: plan.deviceId, status: "enabled", primaryKey: plan.keys.primaryKey, secondaryKey: plan.keys.secondaryKey)
                    }
                }
                let record = state.withLock { $0.recordAssignment(plan, payload: body?["payload"], nowMilliseconds: now) }
                save()
                counters.withLock { $0.assignments += 1 }
                operation = Operation(registrationID: registrationID, result: record.json(), statusText: "assigned")
                logger.info("dps: \(registrationID) assigned to \(plan.hub) as \(plan.deviceId)")
            } catch {
                operation = Operation(registrationID: registrationID, result: [
                    "registrationId": .string(registrationID), "status": "failed", "errorCode": 500000,
                    "errorMessage": .string("The device could not be created in \(plan.hub): \(error)"),
                ], statusText: "failed")
            }
        } else {
            operation = Operation(registrationID: registrationID, result: [
                "registrationId": .string(registrationID), "status": "failed", "errorCode": 400209,
                "errorMessage": .string("The linked hub \(plan.hub) is not available"),
            ], statusText: "failed")
        }
        let stored = operation
        operations.withLock { ops in
            // Finished operations are kept for their devices to read, the newest 10,000 of them.
            if ops.count >= 10_000, let oldest = ops.min(by: { $0.value.createdMilliseconds < $1.value.createdMilliseconds })?.key {
                ops[oldest] = nil
            }
            ops[operationID] = stored
        }
        return Self.jsonResponse(["operationId": .string(operationID), "status": "assigning"], status: .accepted,
                                 retryAfter: configuration.retryAfterSeconds)
    }

    /// An operation's status, for the registration that started it (same token rules as the register request).
    func operationStatus(registrationID: String, operationID: String, authorization: String?, clientCertificate: [UInt8]?) -> Response {
        let now = WallClock.nowMilliseconds()
        let refusal = state.withLock { s -> ProvisioningRefusal? in
            if authorization == nil, let clientCertificate {
                if case .failure(let r) = s.authenticateCertificate(registrationID: registrationID, leafDER: clientCertificate,
                                                                     now: Date(timeIntervalSince1970: Double(now) / 1000)) { return r }
                return nil
            }
            if case .failure(let r) = s.authenticate(registrationID: registrationID, authorization: authorization, nowSeconds: now / 1000,
                                                      skewSeconds: configuration.tokenClockSkewSeconds) { return r }
            return nil
        }
        if let refusal { return Self.refusal(refusal) }
        guard let operation = operations.withLock({ $0[operationID] }), operation.registrationID == registrationID else {
            return Self.refusal(ProvisioningRefusal(status: 404, errorCode: 404203, message: "Operation \(operationID) not found"))
        }
        return Self.jsonResponse(["operationId": .string(operationID), "status": .string(operation.statusText),
                                  "registrationState": operation.result], status: .ok)
    }

    // MARK: routes

    func router() -> Router<ProvisioningRequestContext> {
        let router = Router(context: ProvisioningRequestContext.self)
        router.put("/{idScope}/registrations/{registrationId}/register") { [self] req, ctx in
            let scope = try ctx.parameters.require("idScope"), id = try ctx.parameters.require("registrationId")
            guard scope == configuration.idScope else {
                return Self.refusal(ProvisioningRefusal(status: 401, errorCode: 401002, message: "Unauthorized"))
            }
            var req = req
            let body = try await ServiceAPI.bodyJSON(&req)
            return await register(registrationID: id, authorization: req.headers[.authorization],
                                  clientCertificate: await ctx.clientCertificate(), body: body)
        }
        router.get("/{idScope}/registrations/{registrationId}/operations/{operationId}") { [self] req, ctx in
            let scope = try ctx.parameters.require("idScope"), id = try ctx.parameters.require("registrationId")
            guard scope == configuration.idScope else {
                return Self.refusal(ProvisioningRefusal(status: 401, errorCode: 401002, message: "Unauthorized"))
            }
            return operationStatus(registrationID: id, operationID: try ctx.parameters.require("operationId"),
                                   authorization: req.headers[.authorization], clientCertificate: await ctx.clientCertificate())
        }
        router.put("/enrollmentGroups/{id}") { [self] req, ctx in
            try authorize(req)
            var req = req
            let body = try await ServiceAPI.bodyJSON(&req) ?? [:]
            let group = try Self.enrollmentGroup(id: try ctx.parameters.require("id"), from: body, linkedHubs: linkedHubNames)
            put(group)
            return Self.jsonResponse(Self.json(group), status: .ok)
        }
        router.get("/enrollmentGroups/{id}") { [self] req, ctx in
            try authorize(req)
            guard let g = state.withLock({ $0.enrollmentGroups[ctx.parameters.get("id") ?? ""] }) else { return Self.notFound("Enrollment group") }
            return Self.jsonResponse(Self.json(g), status: .ok)
        }
        router.delete("/enrollmentGroups/{id}") { [self] req, ctx in
            try authorize(req)
            guard state.withLock({ $0.enrollmentGroups.removeValue(forKey: ctx.parameters.get("id") ?? "") }) != nil else { return Self.notFound("Enrollment group") }
            save()
            return Response(status: .noContent)
        }
        router.put("/enrollments/{id}") { [self] req, ctx in
            try authorize(req)
            var req = req
            let body = try await ServiceAPI.bodyJSON(&req) ?? [:]
            let enrollment = try Self.enrollment(id: try ctx.parameters.require("id"), from: body, linkedHubs: linkedHubNames)
            put(enrollment)
            return Self.jsonResponse(Self.json(enrollment), status: .ok)
        }
        router.get("/enrollments/{id}") { [self] req, ctx in
            try authorize(req)
            guard let e = state.withLock({ $0.enrollments[ctx.parameters.get("id") ?? ""] }) else { return Self.notFound("Enrollment") }
            return Self.jsonResponse(Self.json(e), status: .ok)
        }
        router.delete("/enrollments/{id}") { [self] req, ctx in
            try authorize(req)
            guard state.withLock({ $0.enrollments.removeValue(forKey: ctx.parameters.get("id") ?? "") }) != nil else { return Self.notFound("Enrollment") }
            save()
            return Response(status: .noContent)
        }
        router.get("/registrations/{id}") { [self] req, ctx in
            try authorize(req)
            guard let r = state.withLock({ $0.registrations[ctx.parameters.get("id") ?? ""] }) else { return Self.notFound("Registration") }
            return Self.jsonResponse(r.json(), status: .ok)
        }
        router.delete("/registrations/{id}") { [self] req, ctx in
            try authorize(req)
            guard state.withLock({ $0.registrations.removeValue(forKey: ctx.parameters.get("id") ?? "") }) != nil else { return Self.notFound("Registration") }
            save()
            return Response(status: .noContent)
        }
        return router
    }

    /// Enrollment management: `SharedAccessSignature sr={dps host}…&skn=provisioningserviceowner`, or open mode.
    private func authorize(_ request: Request) throws {
        if configuration.openServiceAPI { return }
        let now = WallClock.nowMilliseconds() / 1000
        guard let header = request.headers[.authorization], let token = try? SASToken.parse(header),
              token.keyName == "provisioningserviceowner",
              token.decodedResource.split(separator: "/").first.map({ $0.lowercased() == configuration.hostName.lowercased() }) == true,
              token.expiry + configuration.tokenClockSkewSeconds > now,
              token.isSigned(with: serviceKey)
        else { throw HubError(.unauthorized, "a provisioningserviceowner token for \(configuration.hostName) is required (or run with --open-service-api)") }
    }

    // MARK: JSON

    static func enrollmentGroup(id: String, from body: JSONValue, linkedHubs: [String]) throws(HubError) -> EnrollmentGroup {
        let (keys, enabled, policy, hubs) = try common(body, linkedHubs: linkedHubs)
        return EnrollmentGroup(enrollmentGroupId: id, keys: keys, signingCertificatePEM: try certificate(body, "signingCertificates"),
                               enabled: enabled, allocationPolicy: policy, iotHubs: hubs)
    }

    /// The PEM of an X.509 attestation (`attestation.x509.{clientCertificates|signingCertificates}.primary.certificate`).
    private static func certificate(_ body: JSONValue, _ kind: String) throws(HubError) -> String? {
        guard body["attestation"]?["type"]?.stringValue == "x509" else { return nil }
        guard let pem = body["attestation"]?["x509"]?[kind]?["primary"]?["certificate"]?.stringValue, pem.contains("-----BEGIN CERTIFICATE-----") else {
            throw HubError(.badRequest, "an x509 attestation needs attestation.x509.\(kind).primary.certificate (PEM)")
        }
        return pem
    }

    static func enrollment(id: String, from body: JSONValue, linkedHubs: [String]) throws(HubError) -> IndividualEnrollment {
        guard isValidRegistrationID(id) else {
            throw HubError(.badRequest, "registration id \(id): lowercase letters, digits and - . _ : only")
        }
        let (keys, enabled, policy, hubs) = try common(body, linkedHubs: linkedHubs)
        return IndividualEnrollment(registrationId: id, deviceId: body["deviceId"]?.stringValue, keys: keys,
                                    certificatePEM: try certificate(body, "clientCertificates"), enabled: enabled,
                                    allocationPolicy: policy, iotHubs: hubs)
    }

    private static func common(_ body: JSONValue, linkedHubs: [String]) throws(HubError) -> (SymmetricKeyPair, Bool, AllocationPolicy, [String]?) {
        let attestation = body["attestation"]
        if let type = attestation?["type"]?.stringValue, type != "symmetricKey" && type != "x509" {
            throw HubError(.badRequest, "attestation type \(type) is not served here: use symmetricKey or x509")
        }
        let primary = attestation?["symmetricKey"]?["primaryKey"]?.stringValue, secondary = attestation?["symmetricKey"]?["secondaryKey"]?.stringValue
        for k in [primary, secondary].compactMap({ $0 }) where !isValidSymmetricKey(k) {
            throw HubError(.badRequest, "symmetric keys must be base64")
        }
        let status = body["provisioningStatus"]?.stringValue ?? "enabled"
        guard status == "enabled" || status == "disabled" else { throw HubError(.badRequest, "provisioningStatus must be enabled or disabled") }
        let policyText = body["allocationPolicy"]?.stringValue ?? "hashed"
        guard let policy = AllocationPolicy(rawValue: policyText) else {
            throw HubError(.badRequest, "allocationPolicy \(policyText): use \(AllocationPolicy.allCases.map(\.rawValue).joined(separator: " or "))")
        }
        let hubs = body["iotHubs"]?.arrayValue?.compactMap(\.stringValue)
        for h in hubs ?? [] where !linkedHubs.contains(h) {
            throw HubError(.badRequest, "\(h) is not a linked hub (linked: \(linkedHubs.joined(separator: ", ")))")
        }
        return (SymmetricKeyPair(primaryKey: primary, secondaryKey: secondary), status == "enabled", policy, hubs)
    }

    static func attestationJSON(_ keys: SymmetricKeyPair) -> JSONValue {
        ["type": "symmetricKey", "symmetricKey": ["primaryKey": .string(keys.primaryKey), "secondaryKey": .string(keys.secondaryKey)]]
    }

    static func json(_ g: EnrollmentGroup) -> JSONValue {
        let attestation: JSONValue = g.signingCertificatePEM.map { ["type": "x509", "x509": ["signingCertificates": ["primary": ["certificate": .string($0)]]]] }
            ?? attestationJSON(g.keys)
        var o: [String: JSONValue] = ["enrollmentGroupId": .string(g.enrollmentGroupId), "attestation": attestation,
                                      "provisioningStatus": .string(g.enabled ? "enabled" : "disabled"),
                                      "allocationPolicy": .string(g.allocationPolicy.rawValue)]
        if let hubs = g.iotHubs { o["iotHubs"] = .array(hubs.map { .string($0) }) }
        return .object(o)
    }

    static func json(_ e: IndividualEnrollment) -> JSONValue {
        let attestation: JSONValue = e.certificatePEM.map { ["type": "x509", "x509": ["clientCertificates": ["primary": ["certificate": .string($0)]]]] }
            ?? attestationJSON(e.keys)
        var o: [String: JSONValue] = ["registrationId": .string(e.registrationId), "attestation": attestation,
                                      "provisioningStatus": .string(e.enabled ? "enabled" : "disabled"),
                                      "allocationPolicy": .string(e.allocationPolicy.rawValue)]
        if let d = e.deviceId { o["deviceId"] = .string(d) }
        if let hubs = e.iotHubs { o["iotHubs"] = .array(hubs.map { .string($0) }) }
        return .object(o)
    }


    static func jsonResponse(_ value: JSONValue, status: HTTPResponse.Status, retryAfter: Int? = nil) -> Response {
        var headers: HTTPFields = [.contentType: "application/json; charset=utf-8"]
        if let retryAfter { headers[.retryAfter] = String(retryAfter) }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: value.bytes)))
    }

    /// DPS's error body.
    static func refusal(_ r: ProvisioningRefusal) -> Response {
        var response = jsonResponse(["errorCode": .int(Int64(r.errorCode)), "trackingId": .string(AMQPUUIDText.random()),
                                     "message": .string(r.message), "timestampUtc": .string(WallClock.iso8601Now())],
                                    status: .init(code: r.status))
        response.headers[HTTPField.Name("x-ms-error-code")!] = String(r.errorCode)
        return response
    }

    static func notFound(_ what: String) -> Response {
        refusal(ProvisioningRefusal(status: 404, errorCode: 404201, message: "\(what) not found"))
    }
}

/// A DPS request's context: the channel too, for the client certificate of X.509 attestation.
struct ProvisioningRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let channel: any Channel

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }

    /// The DER of the certificate the client presented at TLS; nil when none.
    func clientCertificate() async -> [UInt8]? {
        let channel = self.channel
        return try? await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self).peerCertificate.map { try $0.toDERBytes() }
        }.get()
    }
}
