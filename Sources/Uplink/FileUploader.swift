import FieldgateCore
import HubTunnel
import IoTHub
import Synchronization

/// A file in the hub's storage, uploaded for an identity.
public struct UploadedFile: Sendable, Equatable {
    /// As the hub named it: `{deviceId}/{blobName}`.
    public var blobName: String
    public var bytes: Int
    public var correlationID: String
}

/// IoT Hub file upload as devices do it (docs/iothub-protocol.md §17), over HTTPS through libcurl with the uplink's
/// TLS and proxy settings: `POST /devices/{id}/files` for a SAS URI, a block-blob `PUT` to the storage it names,
/// then `POST /devices/{id}/files/notifications` with the outcome. The identity signs with its own credential (a
/// SAS token for `{host}/devices/{id}`). At most 10 uploads per identity are outstanding, as the hub allows; more
/// wait their turn. Each step blocks on libcurl, on a dispatch thread.
final class FileUploader: Sendable {
    static let apiVersion = "2021-04-12"
    static let maxPerIdentity = 10

    private let configuration: UplinkConfiguration
    private let inFlight = Mutex<[String: Int]>([:])

    init(configuration: UplinkConfiguration) {
        self.configuration = configuration
    }

    /// The settings of requests to `host` (a leaf's hub).
    func settings(host: String) -> HTTPSSettings {
        var s = HTTPSSettings()
        if case .tls(let tls) = configuration.transport {
            s.caFile = tls.caFile
            s.verifyPeer = tls.verifyHostName
        }
        s.proxy = configuration.webSocket.proxy
        s.connectHost = host
        s.connectAddress = host == configuration.hostName ? configuration.address
            : configuration.hostAddresses[host].map { _ in configuration.endpoint(for: host).address }
        s.timeoutMilliseconds = Int(max(configuration.operationTimeoutMilliseconds, 60_000))
        return s
    }

    /// A hub's HTTPS endpoint (the port of AMQP over WebSockets: 443 for IoT Hub).
    private func hubBase(_ host: String) -> String {
        configuration.webSocket.port == 443 ? "https://\(host)" : "https://\(host):\(configuration.webSocket.port)"
    }

    func upload(_ leaf: LeafConfiguration, blobName: String, bytes: [UInt8], contentType: String) async throws(UplinkError) -> UploadedFile {
        await acquire(leaf.deviceID)
        defer { release(leaf.deviceID) }
        let result: Result<UploadedFile, UplinkError> = await offCooperativePool { [self] in
            do throws(UplinkError) { return .success(try uploadNow(leaf, blobName: blobName, bytes: bytes, contentType: contentType)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    func acquire(_ deviceID: String) async {
        while !inFlight.withLock({ counts in
            guard counts[deviceID, default: 0] < Self.maxPerIdentity else { return false }
            counts[deviceID, default: 0] += 1
            return true
        }) {
            try? await Task.sleep(for: .milliseconds(100))
        }
    }

    func release(_ deviceID: String) {
        inFlight.withLock { counts in
            counts[deviceID, default: 1] -= 1
            if counts[deviceID] == 0 { counts[deviceID] = nil }
        }
    }

    private func uploadNow(_ leaf: LeafConfiguration, blobName: String, bytes: [UInt8], contentType: String) throws(UplinkError) -> UploadedFile {
        let expiry = WallClock.nowMilliseconds() / 1000 + configuration.tokenTTLSeconds
        let token: String
        let hub = leaf.hubHost ?? configuration.hostName
        do { token = try TokenMinter(hostName: hub).token(for: leaf, slot: .primary, expiry: expiry) } catch {
            throw UplinkError(.configuration, "\(leaf.deviceID): cannot sign a token for file upload: \(error.message)")
        }
        let device = PercentEncoding.encode(leaf.deviceID)
        let common = [("Authorization", token), ("User-Agent", configuration.clientVersion), ("Content-Type", "application/json")]
        let s = settings(host: hub)

        // 1. A SAS URI for the blob.
        let start = try call("POST", "\(hubBase(hub))/devices/\(device)/files?api-version=\(Self.apiVersion)", headers: common,
                             body: JSONValue.object(["blobName": .string(blobName)]).bytes, expect: [200], what: "starting the upload", settings: s)
        guard let j = start.json, let correlation = j["correlationId"]?.stringValue, let host = j["hostName"]?.stringValue,
              let container = j["containerName"]?.stringValue, let name = j["blobName"]?.stringValue, let sas = j["sasToken"]?.stringValue
        else { throw UplinkError(.invalidInput, "\(leaf.deviceID): the hub's answer to a file upload is not what IoT Hub sends: \(start.text.prefix(200))") }

        // 2. The blob, in one PUT (block blob).
        let path = ([container] + name.split(separator: "/").map { PercentEncoding.encode(String($0)) }).joined(separator: "/")
        // The whole PUT may take as long as the file needs at 16 kB/s (a slow cellular link), and a minute more;
        // a stalled one ends sooner (libcurl's low-speed limit).
        var putSettings = s
        putSettings.timeoutMilliseconds = s.timeoutMilliseconds + bytes.count / 16
        let put = HTTPSClient.perform("PUT", "https://\(host)/\(path)\(sas.hasPrefix("?") ? sas : "?" + sas)",
                                      headers: [("x-ms-blob-type", "BlockBlob"), ("x-ms-version", "2018-03-28"), ("Content-Type", contentType),
                                                ("User-Agent", configuration.clientVersion)],
                                      body: bytes, settings: putSettings)
        let stored: Bool
        let outcome: (code: Int, description: String)
        switch put {
        case .success(let r) where r.status == 201:
            stored = true
            outcome = (201, "uploaded \(bytes.count) bytes")
        case .success(let r):
            stored = false
            outcome = (r.status, "the storage refused the blob: HTTP \(r.status) \(r.text.prefix(200))")
        case .failure(let e):
            stored = false
            outcome = (500, "the blob could not be sent: \(e.message)")
        }

        // 3. The outcome, whatever it is: the hub frees the upload's slot and tells the service side.
        _ = try call("POST", "\(hubBase(hub))/devices/\(device)/files/notifications?api-version=\(Self.apiVersion)", headers: common,
                     body: JSONValue.object(["correlationId": .string(correlation), "isSuccess": .bool(stored),
                                             "statusCode": .int(Int64(outcome.code)), "statusDescription": .string(outcome.description)]).bytes,
                     expect: [200, 204], what: "notifying the hub of the upload", settings: s)
        guard stored else { throw UplinkError(.invalidInput, "\(leaf.deviceID): file upload of \(name) failed: \(outcome.description)") }
        return UploadedFile(blobName: name, bytes: bytes.count, correlationID: correlation)
    }

    private func call(_ method: String, _ url: String, headers: [(String, String)], body: [UInt8], expect: Set<Int>, what: String,
                      settings: HTTPSSettings) throws(UplinkError) -> HTTPSResponse {
        switch HTTPSClient.perform(method, url, headers: headers, body: body, settings: settings) {
        case .failure(let e):
            throw UplinkError(.unavailable, "\(what) failed: \(e.message)")
        case .success(let r) where expect.contains(r.status):
            return r
        case .success(let r):
            // IoT Hub's errors carry {"Message": "ErrorCode:…"} or {"errorCode":…,"message":…}.
            let message = r.json?["message"]?.stringValue ?? r.json?["Message"]?.stringValue ?? r.text
            throw UplinkError((400..<500).contains(r.status) && r.status != 429 && r.status != 408 ? .invalidInput : .unavailable,
                              "\(what): the hub answered HTTP \(r.status): \(message.prefix(300))")
        }
    }
}
