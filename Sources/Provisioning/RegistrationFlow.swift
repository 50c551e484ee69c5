import FieldgateCore
import IoTHub

/// Where an identity was provisioned: the hub DPS assigned it to and its device id there.
public struct Assignment: Sendable, Equatable, Codable {
    public var hub: String
    public var deviceID: String
    public init(hub: String, deviceID: String) {
        self.hub = hub
        self.deviceID = deviceID
    }
}

/// Why a registration ended without an assignment.
public struct ProvisioningFailure: Error, Sendable, Equatable, CustomStringConvertible {
    /// DPS refused the identity (unknown or disabled enrollment, bad key or registration id): asking again at once
    /// will not help. Otherwise the service or the network failed for now.
    public var refused: Bool
    public var message: String
    public var description: String { message }
    public init(refused: Bool, _ message: String) {
        self.refused = refused
        self.message = message
    }
}

/// One HTTPS request the flow wants sent.
public struct ProvisioningRequest: Sendable, Equatable {
    public var method: String
    public var url: String
    public var headers: [String: String]
    public var body: [UInt8]?
}

/// One identity's registration with the Device Provisioning Service, as devices do it over HTTPS
/// (docs/provisioning.md): `PUT {endpoint}/{idScope}/registrations/{id}/register`, then
/// `GET …/operations/{operationId}` after each Retry-After until the operation is assigned, failed or disabled. With a
/// symmetric key both carry a SAS token for `{idScope}/registrations/{id}` signed with it and `skn=registration`; an
/// X.509 identity carries none (its certificate authenticates it at TLS). A pure
/// state machine: the caller sends what it asks for, waits where it says, and feeds back each response (status 0:
/// no response came).
public struct RegistrationFlow: Sendable {
    public struct Settings: Sendable, Equatable {
        /// `host` or `host:port` of the global endpoint.
        public var endpoint: String
        public var idScope: String
        public var apiVersion = "2021-06-01"
        /// Lifetime of the SAS token each request carries. Default: 1 h.
        public var tokenTTLSeconds: Int64 = 3600
        /// Status polls of one operation before the attempt counts as failed for now. Default: 30.
        public var maxPolls = 30
        /// Retries of a request that got no answer or a transient one (429, 5xx). Default: 5.
        public var maxRetries = 5
        /// The wait when DPS names none, and the longest wait it may ask for. Default: 3 s and 60 s.
        public var defaultWaitMilliseconds: Int64 = 3000
        public var maxWaitMilliseconds: Int64 = 60_000
        public var userAgent = "fieldgate/0.1"

        public init(endpoint: String, idScope: String) {
            self.endpoint = endpoint
            self.idScope = idScope
        }
    }

    public enum Action: Sendable, Equatable {
        /// Send this request now (after `afterMilliseconds`), then call `received`.
        case send(ProvisioningRequest, afterMilliseconds: Int64)
        case assigned(Assignment)
        case failed(ProvisioningFailure)
    }

    public let settings: Settings
    public let registrationID: String
    /// nil: X.509 attestation, no token.
    private let key: String?
    private let payload: JSONValue?
    private var operationID: String?
    private var polls = 0
    private var retries = 0
    /// A poll found the operation gone (404): the registration was started over once.
    private var restarted = false

    /// - Parameter key: the identity's symmetric key (for a group enrollment, the key derived for this id); nil when
    ///   its X.509 certificate authenticates it at TLS.
    public init(settings: Settings, registrationID: String, key: String?, payload: JSONValue? = nil) {
        self.settings = settings
        self.registrationID = registrationID
        self.key = key
        self.payload = payload
    }

    private var base: String { "https://\(settings.endpoint)/\(PercentEncoding.encode(settings.idScope))/registrations/\(PercentEncoding.encode(registrationID))" }

    private func request(_ method: String, _ url: String, body: [UInt8]?, nowSeconds: Int64) -> Result<ProvisioningRequest, ProvisioningFailure> {
        var headers = ["Accept": "application/json", "User-Agent": settings.userAgent]
        if let key {
            do {
                headers["Authorization"] = try SASToken.generate(resourceURI: "\(settings.idScope)/registrations/\(registrationID)", key: key,
                                                                 expiry: nowSeconds + settings.tokenTTLSeconds, keyName: "registration")
            } catch { return .failure(ProvisioningFailure(refused: true, "\(registrationID): cannot sign the registration: \(error.message)")) }
        }
        if body != nil { headers["Content-Type"] = "application/json; charset=utf-8" }
        return .success(ProvisioningRequest(method: method, url: url, headers: headers, body: body))
    }

    private func registerRequest(nowSeconds: Int64) -> Result<ProvisioningRequest, ProvisioningFailure> {
        var body: [String: JSONValue] = ["registrationId": .string(registrationID)]
        if let payload { body["payload"] = payload }
        return request("PUT", "\(base)/register?api-version=\(settings.apiVersion)", body: JSONValue.object(body).bytes, nowSeconds: nowSeconds)
    }

    private func pollRequest(_ operation: String, nowSeconds: Int64) -> Result<ProvisioningRequest, ProvisioningFailure> {
        request("GET", "\(base)/operations/\(PercentEncoding.encode(operation))?api-version=\(settings.apiVersion)", body: nil, nowSeconds: nowSeconds)
    }

    private func send(_ r: Result<ProvisioningRequest, ProvisioningFailure>, after ms: Int64) -> Action {
        switch r {
        case .success(let request): .send(request, afterMilliseconds: ms)
        case .failure(let failure): .failed(failure)
        }
    }

    /// The register request.
    public mutating func start(nowSeconds: Int64) -> Action {
        operationID = nil
        polls = 0
        retries = 0
        restarted = false
        return send(registerRequest(nowSeconds: nowSeconds), after: 0)
    }

    /// The answer to the last request: `status` 0 when none came (`error` says why).
    public mutating func received(status: Int, body: JSONValue?, retryAfterSeconds: Int?, error: String? = nil, nowSeconds: Int64) -> Action {
        let wait = min(max(retryAfterSeconds.map { Int64($0) * 1000 } ?? settings.defaultWaitMilliseconds, 1000), settings.maxWaitMilliseconds)
        switch status {
        case 200, 202:
            guard let body, let state = body["status"]?.stringValue else {
                return .failed(ProvisioningFailure(refused: false, "\(registrationID): DPS answered \(status) without an operation status"))
            }
            switch state {
            case "assigned":
                let registration = body["registrationState"] ?? body
                guard let hub = registration["assignedHub"]?.stringValue, !hub.isEmpty,
                      let device = registration["deviceId"]?.stringValue, !device.isEmpty else {
                    return .failed(ProvisioningFailure(refused: false, "\(registrationID): DPS reports an assignment without a hub or device id"))
                }
                return .assigned(Assignment(hub: hub, deviceID: device))
            case "assigning", "unassigned":
                if let id = body["operationId"]?.stringValue { operationID = id }
                guard let operationID else {
                    return .failed(ProvisioningFailure(refused: false, "\(registrationID): DPS answered \(state) without an operation id"))
                }
                polls += 1
                guard polls <= settings.maxPolls else {
                    return .failed(ProvisioningFailure(refused: false, "\(registrationID): still \(state) after \(settings.maxPolls) status checks"))
                }
                return send(pollRequest(operationID, nowSeconds: nowSeconds), after: wait)
            case "failed", "disabled":
                let registration = body["registrationState"] ?? body
                let code = registration["errorCode"]?.intValue.map { " \($0)" } ?? ""
                let why = registration["errorMessage"]?.stringValue ?? (state == "disabled" ? "the enrollment is disabled" : "no reason given")
                return .failed(ProvisioningFailure(refused: true, "\(registrationID): DPS \(state == "disabled" ? "refuses it" : "could not assign it")\(code): \(why)"))
            default:
                return .failed(ProvisioningFailure(refused: false, "\(registrationID): DPS reports the unknown status \(state)"))
            }
        case 404 where operationID != nil && !restarted:
            // The operation expired or DPS lost it: register again rather than count the identity as refused.
            restarted = true
            operationID = nil
            polls = 0
            return send(registerRequest(nowSeconds: nowSeconds), after: wait)
        case 400, 401, 403, 404:
            let code = body?["errorCode"]?.intValue.map { " \($0)" } ?? ""
            let message = body?["message"]?.stringValue ?? ""
            let hint = switch status {
            case 401: "the id scope, the registration id or the key does not match an enrollment"
            case 404: "the id scope or the operation is unknown"
            default: "DPS refuses the request"
            }
            return .failed(ProvisioningFailure(refused: true, "\(registrationID): DPS answered \(status)\(code) \(message): \(hint)"))
        default:
            // No answer, throttled (429) or the service failing (5xx): the same request again after the wait.
            retries += 1
            let what = status == 0 ? "no answer (\(error ?? "unknown error"))" : "HTTP \(status)"
            guard retries <= settings.maxRetries else {
                return .failed(ProvisioningFailure(refused: false, "\(registrationID): DPS registration failed: \(what)"))
            }
            let backoff = max(wait, min(settings.defaultWaitMilliseconds << min(retries, 5), settings.maxWaitMilliseconds))
            if let operationID { return send(pollRequest(operationID, nowSeconds: nowSeconds), after: status == 429 ? wait : backoff) }
            return send(registerRequest(nowSeconds: nowSeconds), after: status == 429 ? wait : backoff)
        }
    }
}
