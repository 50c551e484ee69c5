import FieldgateCore
import HubEmulator
import HubServiceClient
import HubTestSupport
import HubTunnel
import IoTHub
import Synchronization
import Testing
@testable import Uplink

/// Issue 23.1 and 23.7: IoT Hub file upload over HTTPS (libcurl) against fieldgate-hub's files endpoints and blob
/// store, with the SAS checks the real service makes.
@Suite("File upload")
struct FileUploadTests {
    private func service(_ hub: TestHub) -> HubServiceClient {
        HubServiceClient(host: "127.0.0.1", port: hub.running.httpPort, authorization: nil)
    }

    /// Through a real tinyproxy that wants Basic authentication: a leaf uploads a file; the blob is in the hub's
    /// store under `{device}/{name}` with the exact bytes, and the service side gets its file-upload notification.
    /// Twelve uploads at once from one identity all succeed: the gateway keeps at most 10 outstanding, where the
    /// hub refuses an 11th (403006).
    @Test func uploadsThroughTheProxyAndNotifiesTheServiceSide() async throws {
        let proxy = try TestProxy.start()
        defer { proxy.stop() }
        try await withHub(configure: { $0.httpsPort = 0 }) { hub in
            let leaves = try await createLeaves(hub, count: 2)
            let h = try UplinkHarness(hub: hub, leaves: leaves) {
                $0.webSocket.port = hub.running.httpsPort!
                $0.webSocket.proxy = .url(proxy.url, user: TestProxy.user, password: TestProxy.password)
            }
            h.uplink.start()
            let content = Array((0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 31) })
            let file = try await h.uplink.uploadFile(for: "leaf-1", blobName: "logs/2026-12-05.bin", bytes: content, contentType: "application/octet-stream")
            #expect(file.blobName == "leaf-1/logs/2026-12-05.bin" && file.bytes == content.count)
            #expect(try await hub.core.perform { $0.blobContent(file.blobName) } == content)
            let notes = try await service(hub).request("GET", "/messages/serviceBound/filenotifications?wait=2000")
            let note = try #require(notes.json?.arrayValue?.first)
            #expect(note["deviceId"]?.stringValue == "leaf-1" && note["blobName"]?.stringValue == file.blobName)
            #expect(note["blobSizeInBytes"]?.intValue == Int64(content.count))
            #expect(note["blobUri"]?.stringValue?.hasSuffix("/fieldgate-uploads/leaf-1/logs/2026-12-05.bin") == true)
            #expect(proxy.log().contains("CONNECT localhost:\(hub.running.httpsPort!)") || proxy.log().contains("CONNECT 127.0.0.1:\(hub.running.httpsPort!)"),
                    "through the proxy: \(proxy.log())")

            let results = await withTaskGroup(of: Result<UploadedFile, UplinkError>.self) { group in
                for i in 0..<12 {
                    group.addTask {
                        do throws(UplinkError) {
                            return .success(try await h.uplink.uploadFile(for: "leaf-0", blobName: "many/\(i).txt", bytes: Array("file \(i)".utf8),
                                                                         contentType: "text/plain"))
                        } catch { return .failure(error) }
                    }
                }
                return await group.reduce(into: []) { $0.append($1) }
            }
            let failures = results.compactMap { if case .failure(let e) = $0 { e.message } else { nil } }
            #expect(failures.isEmpty, "\(failures)")
            let stored = try await hub.core.perform { $0.listBlobs(prefix: "leaf-0/many/") }
            #expect(stored.count == 12)
            await h.stop()
        }
    }

    /// The hub's side of the rules, as IoT Hub applies them: a device token for another device, a blob PUT with a
    /// tampered or missing SAS, an 11th outstanding upload (403006) and a notification for an unknown correlation id
    /// all get a clear refusal; a hub that cannot be reached is a retriable failure.
    @Test func theHubChecksTokensSASAndLimits() async throws {
        try await withHub(configure: { $0.httpsPort = 0 }) { hub in
            let leaves = try await createLeaves(hub, count: 2)
            var settings = HTTPSSettings()
            settings.caFile = hub.certificates.caCertificate
            settings.connectHost = "localhost"
            settings.connectAddress = "127.0.0.1"
            settings.proxy = .direct
            let base = "https://localhost:\(hub.running.httpsPort!)"
            let expiry = WallClock.nowMilliseconds() / 1000 + 600
            func token(_ leaf: LeafConfiguration) throws -> String {
                try TokenMinter(hostName: "localhost").token(for: leaf, slot: .primary, expiry: expiry)
            }
            func post(_ path: String, _ body: JSONValue, as leaf: LeafConfiguration) throws -> HTTPSResponse {
                try HTTPSClient.perform("POST", base + path, headers: [("Authorization", try token(leaf)), ("Content-Type", "application/json")],
                                        body: body.bytes, settings: settings).get()
            }
            // leaf-1's token does not open leaf-0's uploads.
            let foreign = try post("/devices/leaf-0/files", ["blobName": "x"], as: leaves[1])
            #expect(foreign.status == 401 && foreign.json?["errorCode"]?.intValue == 401003, "\(foreign.text)")

            let start = try post("/devices/leaf-0/files", ["blobName": "a.txt"], as: leaves[0])
            let j = try #require(start.json)
            #expect(start.status == 200 && j["containerName"] == "fieldgate-uploads" && j["blobName"] == "leaf-0/a.txt")
            let sas = try #require(j["sasToken"]?.stringValue)
            let blobURL = "https://\(j["hostName"]!.stringValue!)/fieldgate-uploads/leaf-0/a.txt"
            let blobHeaders = [("x-ms-blob-type", "BlockBlob")]
            let tampered = try HTTPSClient.perform("PUT", blobURL + sas.replacing("sig=", with: "sig=A"), headers: blobHeaders,
                                                   body: Array("no".utf8), settings: settings).get()
            #expect(tampered.status == 403, "\(tampered.text)")
            let other = try HTTPSClient.perform("PUT", "https://\(j["hostName"]!.stringValue!)/fieldgate-uploads/leaf-0/b.txt" + sas, headers: blobHeaders,
                                                body: Array("no".utf8), settings: settings).get()
            #expect(other.status == 403, "a SAS names one blob: \(other.text)")
            let unsigned = try HTTPSClient.perform("PUT", blobURL, headers: blobHeaders, body: Array("no".utf8), settings: settings).get()
            #expect(unsigned.status == 403)
            let put = try HTTPSClient.perform("PUT", blobURL + sas, headers: blobHeaders, body: Array("yes".utf8), settings: settings).get()
            #expect(put.status == 201)

            // Ten outstanding (this one and nine more); the eleventh is refused.
            for i in 0..<9 { #expect(try post("/devices/leaf-0/files", ["blobName": .string("n\(i)")], as: leaves[0]).status == 200) }
            let eleventh = try post("/devices/leaf-0/files", ["blobName": "n10"], as: leaves[0])
            #expect(eleventh.status == 403 && eleventh.json?["errorCode"]?.intValue == 403006, "\(eleventh.text)")
            // Completing one frees a slot.
            let done = try post("/devices/leaf-0/files/notifications", ["correlationId": j["correlationId"]!, "isSuccess": true, "statusCode": 201,
                                                                        "statusDescription": "ok"], as: leaves[0])
            #expect(done.status == 204)
            #expect(try post("/devices/leaf-0/files", ["blobName": "n10"], as: leaves[0]).status == 200)
            let unknown = try post("/devices/leaf-0/files/notifications", ["correlationId": "nope", "isSuccess": true], as: leaves[0])
            #expect(unknown.status == 400)
            // Nothing outside the blob store can be read through it.
            let outside = try await service(hub).request("GET", "/files/content?name=../../certs/server.key")
            #expect(outside.status == 404)

            // Names a URL escapes (a device id with '.', ':' and '(', a file name with a space) sign and store as
            // IoT Hub's storage takes them: decoded.
            let odd = try await hub.core.perform { try $0.upsertDevice(id: "meter.01:(a)", status: nil, primaryKey: nil, secondaryKey: nil) }
            let oddLeaf = LeafConfiguration(deviceID: odd.deviceId, credential: .symmetricKey(primary: odd.authentication.symmetricKey.primaryKey, secondary: nil))
            let h = try UplinkHarness(hub: hub, leaves: [oddLeaf]) { $0.webSocket.port = hub.running.httpsPort!; $0.webSocket.proxy = .direct }
            h.uplink.start()
            let file = try await h.uplink.uploadFile(for: "meter.01:(a)", blobName: "x y/(1).txt", bytes: Array("odd".utf8), contentType: "text/plain")
            #expect(file.blobName == "meter.01:(a)/x y/(1).txt")
            #expect(try await hub.core.perform { $0.blobContent("meter.01:(a)/x y/(1).txt") } == Array("odd".utf8))
            await h.stop()
        }
        // Nothing listens where the hub's HTTPS should be: the upload fails as retriable, saying why.
        try await withHub { hub in
            let leaves = try await createLeaves(hub, count: 1)
            let h = try UplinkHarness(hub: hub, leaves: leaves) { $0.webSocket.port = 1; $0.webSocket.proxy = .direct }
            h.uplink.start()
            do throws(UplinkError) {
                _ = try await h.uplink.uploadFile(for: "leaf-0", blobName: "x", bytes: [1], contentType: "application/octet-stream")
                Issue.record("uploaded to a port without TLS")
            } catch {
                #expect(error.isRetriable && error.message.contains("starting the upload failed"), "\(error)")
            }
            await h.stop()
        }
    }

    /// The gateway's own bound, apart from the hub's: an identity's 11th upload waits until one of its 10 ends;
    /// another identity's does not wait.
    @Test func atMostTenUploadsPerIdentityAtOnce() async throws {
        let uploader = FileUploader(configuration: UplinkConfiguration(hostName: "localhost"))
        final class Count: Sendable { let value = Mutex(0) }
        let count = Count()
        var holders: [Task<Void, Never>] = []
        for _ in 0..<11 {
            holders.append(Task {
                await uploader.acquire("meter-1")
                count.value.withLock { $0 += 1 }
            })
        }
        try await eventually(10, "ten started") { count.value.withLock { $0 } == 10 }
        try await Task.sleep(for: .milliseconds(400))
        #expect(count.value.withLock { $0 } == 10, "the 11th waits")
        await uploader.acquire("meter-2")  // another identity is not held up
        uploader.release("meter-1")
        try await eventually(10, "the 11th started once one ended") { count.value.withLock { $0 } == 11 }
        for t in holders { await t.value }
    }

    /// A file costs the daily quota two messages (its start and its notification), whatever its size; with the quota
    /// spent the hub refuses to start one (403002), as it refuses telemetry.
    @Test func aFileCostsTwoMessagesOfTheDailyQuota() async throws {
        try await withHub(configure: { $0.httpsPort = 0; $0.hub.dailyMessageQuota = 1000 }) { hub in
            let leaves = try await createLeaves(hub, count: 1)
            let h = try UplinkHarness(hub: hub, leaves: leaves) {
                $0.webSocket.port = hub.running.httpsPort!
                $0.webSocket.proxy = .direct
            }
            h.uplink.start()
            _ = try await h.uplink.uploadFile(for: "leaf-0", blobName: "big.bin", bytes: [UInt8](repeating: 7, count: 1 << 20), contentType: "application/octet-stream")
            #expect(try await hub.core.perform { $0.quotaJSON["used"] } == 2, "1 MiB as a file: 2 messages (as D2C: 256)")
            try await hub.core.perform { $0.spendQuota(reset: false) }
            do throws(UplinkError) {
                _ = try await h.uplink.uploadFile(for: "leaf-0", blobName: "late.bin", bytes: [1], contentType: "application/octet-stream")
                Issue.record("an upload with the quota spent went through")
            } catch {
                #expect(error.message.contains("IotHubQuotaExceeded"), "\(error.message)")
            }
            await h.stop()
        }
    }
}
