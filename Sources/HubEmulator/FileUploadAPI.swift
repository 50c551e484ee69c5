import FieldgateCore
import HTTPTypes
import Hummingbird
import IoTHub
import NIOCore
import ProtonAMQP

/// File upload over HTTPS: the device side as IoT Hub serves it (`/devices/{id}/files`, `…/files/notifications`,
/// device SAS in `Authorization`), the Blob service's block-blob `PUT` with the SAS the hub issued, and for the
/// service side the file-upload notifications and the blob store's listing and content.
extension ServiceAPI {
    /// Blobs up to this size are taken in one PUT.
    static let maxBlobBytes = 256 << 20

    func addFileUploadRoutes(to router: Router<BasicRequestContext>) {
        router.post("/devices/{id}/files") { req, ctx in
            let id = try Self.decoded(ctx.parameters.require("id"))
            let header = req.headers[.authorization]
            try await core.perform { try $0.authorizeDevice(header, deviceId: id) }
            var req = req
            guard let name = try await ServiceAPI.bodyJSON(&req)?["blobName"]?.stringValue else {
                throw HubError(.badRequest, "the body must be {\"blobName\": …}", errorCode: 400004)
            }
            return try json(try await core.perform { try $0.startFileUpload(deviceId: id, blobName: name) })
        }
        router.post("/devices/{id}/files/notifications") { req, ctx in
            let id = try Self.decoded(ctx.parameters.require("id"))
            let header = req.headers[.authorization]
            try await core.perform { try $0.authorizeDevice(header, deviceId: id) }
            var req = req
            guard let body = try await ServiceAPI.bodyJSON(&req) else { throw HubError(.badRequest, "the body must be JSON", errorCode: 400004) }
            try await core.perform { try $0.finishFileUpload(deviceId: id, body: body) }
            return Response(status: .noContent)
        }
        router.put("/\(FileUploads.container)/**") { req, ctx in
            // The SAS covers the decoded name (a device id or file name may hold characters a URL escapes).
            let name = try ctx.parameters.getCatchAll().map { try Self.decoded(String($0)) }.joined(separator: "/")
            let query = Self.decodedQuery(req.uri.query)
            let blobType = req.headers[HTTPField.Name("x-ms-blob-type")!]
            let bytes = Array(try await req.body.collect(upTo: Self.maxBlobBytes).readableBytesView)
            try await core.perform { try $0.putBlob(name, query: query, blobType: blobType, bytes: bytes) }
            return Response(status: .created, headers: [HTTPField.Name("x-ms-request-server-encrypted")!: "true"])
        }
        router.get("/messages/serviceBound/filenotifications") { req, _ in
            try await authorize(req, "ServiceConnect")
            let wait = min(Int(req.uri.queryParameters.get("wait") ?? "0") ?? 0, 60_000)
            let notifications: [FileUploads.Notification] = await withCheckedContinuation { cont in
                core.reactor.execute { core.readFileNotifications(waitMilliseconds: wait) { cont.resume(returning: $0) } }
            }
            return try json(notifications)
        }
        router.get("/files") { req, _ in
            try await authorize(req, "ServiceConnect")
            let prefix = req.uri.queryParameters.get("prefix") ?? ""
            return try json(JSONValue.array(try await core.perform { $0.listBlobs(prefix: prefix) }))
        }
        router.get("/files/content") { req, _ in
            try await authorize(req, "ServiceConnect")
            guard let name = req.uri.queryParameters.get("name") else { throw HubError(.badRequest, "name=<blob name> is required") }
            guard let bytes = try await core.perform({ $0.blobContent(name) }) else { throw HubError(.notFound, "no blob \(name)") }
            return Response(status: .ok, headers: [.contentType: "application/octet-stream"], body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
        }
    }

    /// A percent-decoded path segment (Hummingbird hands them over as they came).
    static func decoded(_ segment: String) throws(HubError) -> String {
        guard let d = PercentEncoding.decode(segment) else { throw HubError(.badRequest, "malformed escape in \(segment)") }
        return d
    }

    /// `a=1&b=%2F` → ["a": "1", "b": "/"] (percent-decoded; a SAS signature holds '+', '/' and '=').
    static func decodedQuery(_ query: String?) -> [String: String] {
        var out: [String: String] = [:]
        for item in (query ?? "").split(separator: "&") {
            let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let key = PercentEncoding.decode(String(parts[0])) else { continue }
            out[key] = parts.count > 1 ? PercentEncoding.decode(String(parts[1])) ?? "" : ""
        }
        return out
    }
}
