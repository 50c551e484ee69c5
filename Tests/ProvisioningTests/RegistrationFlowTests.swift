import FieldgateCore
import IoTHub
import Provisioning
import Testing

#if canImport(Glibc)
import Glibc
#endif

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The DPS registration state machine without sockets (issue 24), and the assignment store on disk.
@Suite("DPS registration (no sockets)")
struct RegistrationFlowTests {
    let settings = RegistrationFlow.Settings(endpoint: "dps.example:8443", idScope: "0ne0012AB34")
    let key = generateSymmetricKey()

    private func request(_ a: RegistrationFlow.Action) -> (ProvisioningRequest, Int64)? {
        if case .send(let r, let after) = a { return (r, after) }
        return nil
    }

    @Test func registerThenPollUntilAssigned() throws {
        var flow = RegistrationFlow(settings: settings, registrationID: "sensor-7", key: key, payload: ["site": "north"])
        let (put, wait0) = try #require(request(flow.start(nowSeconds: 1_000)))
        #expect(wait0 == 0 && put.method == "PUT")
        #expect(put.url == "https://dps.example:8443/0ne0012AB34/registrations/sensor-7/register?api-version=2021-06-01")
        let authorization = try #require(put.headers["Authorization"])
        let token = try SASToken.parse(authorization)
        #expect(token.decodedResource == "0ne0012AB34/registrations/sensor-7" && token.keyName == "registration")
        #expect(token.isSigned(with: key) && token.expiry == 1_000 + 3600)
        let bytes = try #require(put.body)
        let body = try #require(JSONValue.parse(bytes))
        #expect(body["registrationId"] == "sensor-7" && body["payload"]?["site"] == "north")

        // 202 assigning: poll the operation after DPS's Retry-After (at least 1 s, at most 60 s).
        let (poll, wait) = try #require(request(flow.received(status: 202, body: ["operationId": "op-1", "status": "assigning"], retryAfterSeconds: 3, nowSeconds: 1_001)))
        #expect(wait == 3000 && poll.method == "GET" && poll.url.contains("/registrations/sensor-7/operations/op-1?api-version="))
        #expect(request(flow.received(status: 200, body: ["operationId": "op-1", "status": "assigning"], retryAfterSeconds: 900, nowSeconds: 1_004))?.1 == 60_000)
        #expect(request(flow.received(status: 200, body: ["operationId": "op-1", "status": "assigning"], retryAfterSeconds: nil, nowSeconds: 1_064))?.1 == 3000)
        let done = flow.received(status: 200, body: ["operationId": "op-1", "status": "assigned",
                                                     "registrationState": ["assignedHub": "hub-b.azure-devices.net", "deviceId": "sensor-7", "status": "assigned"]],
                                 retryAfterSeconds: nil, nowSeconds: 1_067)
        #expect(done == .assigned(Assignment(hub: "hub-b.azure-devices.net", deviceID: "sensor-7")))
    }

    @Test func refusalsAndTransientFailures() throws {
        var flow = RegistrationFlow(settings: settings, registrationID: "sensor-7", key: key)
        _ = flow.start(nowSeconds: 0)
        guard case .failed(let f) = flow.received(status: 401, body: ["errorCode": 401002, "message": "Unauthorized"], retryAfterSeconds: nil, nowSeconds: 0) else {
            Issue.record("401 is a failure"); return
        }
        #expect(f.refused && f.message.contains("401 401002 Unauthorized") && f.message.contains("does not match an enrollment"))

        _ = flow.start(nowSeconds: 0)
        _ = flow.received(status: 202, body: ["operationId": "op-2", "status": "assigning"], retryAfterSeconds: 1, nowSeconds: 0)
        guard case .failed(let disabled) = flow.received(status: 200, body: ["operationId": "op-2", "status": "disabled",
                                                                            "registrationState": ["status": "disabled"]], retryAfterSeconds: nil, nowSeconds: 1) else {
            Issue.record("disabled is a failure"); return
        }
        #expect(disabled.refused && disabled.message.contains("refuses it"))

        // No answer, 429 and 5xx: the same request again, backing off; the poll stays a poll.
        _ = flow.start(nowSeconds: 0)
        _ = flow.received(status: 202, body: ["operationId": "op-3", "status": "assigning"], retryAfterSeconds: 1, nowSeconds: 0)
        let (again, wait) = try #require(request(flow.received(status: 0, body: nil, retryAfterSeconds: nil, error: "connection refused", nowSeconds: 1)))
        #expect(again.url.contains("/operations/op-3") && wait >= 3000)
        #expect(request(flow.received(status: 429, body: nil, retryAfterSeconds: 7, nowSeconds: 5))?.1 == 7000, "a throttle's Retry-After is kept")
        var last: RegistrationFlow.Action = .failed(ProvisioningFailure(refused: false, ""))
        for _ in 0..<10 { last = flow.received(status: 503, body: nil, retryAfterSeconds: nil, nowSeconds: 10) }
        guard case .failed(let gaveUp) = last else { Issue.record("gives up at last"); return }
        #expect(!gaveUp.refused && gaveUp.message.contains("HTTP 503"))
    }

    @Test func aLostOperationStartsTheRegistrationOver() throws {
        var flow = RegistrationFlow(settings: settings, registrationID: "sensor-7", key: key)
        _ = flow.start(nowSeconds: 0)
        _ = flow.received(status: 202, body: ["operationId": "op-9", "status": "assigning"], retryAfterSeconds: 1, nowSeconds: 0)
        let (again, _) = try #require(request(flow.received(status: 404, body: ["errorCode": 404203], retryAfterSeconds: nil, nowSeconds: 1)))
        #expect(again.method == "PUT" && again.url.hasSuffix("/register?api-version=2021-06-01"))
        _ = flow.received(status: 202, body: ["operationId": "op-10", "status": "assigning"], retryAfterSeconds: 1, nowSeconds: 2)
        guard case .failed(let f) = flow.received(status: 404, body: nil, retryAfterSeconds: nil, nowSeconds: 3) else {
            Issue.record("a second loss is a failure"); return
        }
        #expect(f.refused)
    }

    @Test func x509CarriesNoToken() throws {
        var flow = RegistrationFlow(settings: settings, registrationID: "gw-1", key: nil)
        let (put, _) = try #require(request(flow.start(nowSeconds: 0)))
        #expect(put.headers["Authorization"] == nil, "the certificate authenticates at TLS")
    }

    @Test func storeKeepsAssignmentsWhileTheSettingsAndKeyHold() throws {
        let path = FileManager.default.temporaryDirectory.path + "/fieldgate-assignments-\(UInt32.random(in: 0...UInt32.max)).json"
        defer { unlink(path) }
        var store = AssignmentStore(path: path)
        let fingerprint = AssignmentStore.fingerprint(ofKey: key)
        store.record(Assignment(hub: "hub-a", deviceID: "d1"), for: "d1", idScope: "s", endpoint: "e", keyFingerprint: fingerprint, nowMilliseconds: 0)
        #expect(store.save() == nil)
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(!text.contains(key), "keys never reach the file")
        let loaded = AssignmentStore(path: path)
        #expect(loaded.assignment(for: "d1", idScope: "s", endpoint: "e", keyFingerprint: fingerprint) == Assignment(hub: "hub-a", deviceID: "d1"))
        #expect(loaded.assignment(for: "d1", idScope: "other", endpoint: "e", keyFingerprint: fingerprint) == nil, "another id scope registers again")
        #expect(loaded.assignment(for: "d1", idScope: "s", endpoint: "e", keyFingerprint: AssignmentStore.fingerprint(ofKey: generateSymmetricKey())) == nil,
                "a new key registers again")
        try "{ not json".write(toFile: path, atomically: true, encoding: .utf8)
        let broken = AssignmentStore(path: path)
        #expect(broken.entries.isEmpty && broken.loadProblem?.contains("every identity registers again") == true)
    }
}
