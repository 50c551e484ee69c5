import Crypto
import FieldgateCore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Why a datagram was not taken (counted per leaf and reason).
public enum DatagramRejection: String, Sendable, CaseIterable {
    case oversize, malformed, sourceNotAllowed, unknownLeaf, notAllowedForLeaf, badSignature, staleTimestamp, replay
}

/// What a datagram said.
enum Datagram: Equatable {
    /// A reading for `leaf`.
    case reading(leaf: String, acquiredAtMs: Int64, envelope: TelemetryEnvelope)
    /// A leaf's answer to a command we sent (`{"type":"reply","id":…,"status":…,"payload":…}`).
    case reply(leaf: String, id: String, status: Int, payload: JSONValue)
}

/// Decodes datagrams (pure: no sockets). Formats (iothub issue 7):
/// - JSON `{"device": id, "ts": ms or ISO 8601?, "values": {...}, "props": {k: string}?}`; the reading's body is
///   `values`. A leaf's answers to commands: `{"device": id, "type": "reply", "id": …, "status": n, "payload": …}`.
/// - Per-source mapping: a datagram from a leaf's `mappedSource` belongs to that leaf; a JSON object body is the
///   reading's values, anything else is sent as it came (`application/octet-stream`).
/// - HMAC: for a leaf with a key, the datagram ends with `\nsig=<base64 HMAC-SHA256(key, bytes before "\n")>` and
///   the JSON carries `ts` within the window; each signature is accepted once (replays are refused).
struct DatagramDecoder {
    let configuration: UDPAdapterConfiguration
    private let leaves: [String: UDPLeaf]
    private let mapped: [String: String]
    private var recentSignatures: Set<String> = []
    private var signatureOrder: [String] = []

    init(configuration: UDPAdapterConfiguration) {
        self.configuration = configuration
        var leaves: [String: UDPLeaf] = [:]
        var mapped: [String: String] = [:]
        for l in configuration.leaves {
            leaves[l.deviceID] = l
            if let s = l.mappedSource { mapped[s] = l.deviceID }
        }
        self.leaves = leaves
        self.mapped = mapped
    }

    /// `sourceIP` is the sender's address without port; `sourcePort` its port.
    mutating func decode(_ bytes: [UInt8], sourceIP: String, sourcePort: Int, nowMs: Int64) -> Result<Datagram, DatagramRejectionAt> {
        guard bytes.count <= configuration.maxDatagramBytes else { return .failure(.init(.oversize, leaf: nil)) }
        guard configuration.allowedSources.isEmpty || configuration.allowedSources.contains(sourceIP) else {
            return .failure(.init(.sourceNotAllowed, leaf: nil))
        }
        let mappedLeaf = mapped["\(sourceIP):\(sourcePort)"] ?? mapped[sourceIP]
        var body = bytes
        var signature: String?
        if let nl = bytes.lastIndex(of: UInt8(ascii: "\n")), bytes[(nl + 1)...].starts(with: Array("sig=".utf8)) {
            body = Array(bytes[..<nl])
            signature = String(decoding: bytes[(nl + 5)...], as: UTF8.self)
        }
        let json = JSONValue.parse(body)
        let leafID: String
        if let mappedLeaf {
            leafID = mappedLeaf
            if let claimed = json?["device"]?.stringValue, claimed != mappedLeaf {
                return .failure(.init(.notAllowedForLeaf, leaf: claimed))  // a mapped source speaks only for its leaf
            }
        } else {
            guard case .object? = json else { return .failure(.init(.malformed, leaf: nil)) }
            guard let claimed = json?["device"]?.stringValue else { return .failure(.init(.malformed, leaf: nil)) }
            leafID = claimed
        }
        guard let leaf = leaves[leafID] else { return .failure(.init(.unknownLeaf, leaf: nil)) }
        if mappedLeaf == nil, !leaf.allowedSources.isEmpty, !leaf.allowedSources.contains(sourceIP) {
            return .failure(.init(.notAllowedForLeaf, leaf: leafID))
        }
        let ts = json?["ts"].flatMap(Self.milliseconds)
        if let key = leaf.hmacKey {
            guard let signature, let mac = Data(base64Encoded: signature),
                  HMAC<SHA256>.isValidAuthenticationCode(mac, authenticating: body, using: SymmetricKey(data: key))
            else { return .failure(.init(.badSignature, leaf: leafID)) }
            let skew = ts.map { $0.subtractingReportingOverflow(nowMs) }
            guard let skew, !skew.overflow, skew.partialValue.magnitude <= UInt64(configuration.timestampWindowSeconds * 1000) else {
                return .failure(.init(.staleTimestamp, leaf: leafID))
            }
            guard remember(signature) else { return .failure(.init(.replay, leaf: leafID)) }
        }
        if json?["type"]?.stringValue == "reply" {
            guard let id = json?["id"]?.stringValue else { return .failure(.init(.malformed, leaf: leafID)) }
            let status = json?["status"]?.intValue.map(Int.init) ?? 200
            return .success(.reply(leaf: leafID, id: id, status: status, payload: json?["payload"] ?? .null))
        }
        var properties: [String: String] = [:]
        if case .object(let props)? = json?["props"] {
            for (k, v) in props {
                guard let s = v.stringValue else { return .failure(.init(.malformed, leaf: leafID)) }
                properties[k] = s
            }
        }
        let envelope: TelemetryEnvelope
        if mappedLeaf != nil, json == nil || json?.objectValue == nil {
            envelope = TelemetryEnvelope(body: body, contentType: "application/octet-stream", contentEncoding: "binary", properties: properties)
        } else if let values = json?["values"] ?? (mappedLeaf != nil ? json : nil) {
            envelope = TelemetryEnvelope(body: values.bytes, properties: properties)
        } else {
            return .failure(.init(.malformed, leaf: leafID))
        }
        return .success(.reading(leaf: leafID, acquiredAtMs: ts ?? nowMs, envelope: envelope))
    }

    /// False when the signature was seen recently (a replay inside the window). Bounded memory.
    private mutating func remember(_ signature: String) -> Bool {
        guard recentSignatures.insert(signature).inserted else { return false }
        signatureOrder.append(signature)
        if signatureOrder.count > 65_536 {
            for s in signatureOrder.prefix(32_768) { recentSignatures.remove(s) }
            signatureOrder.removeFirst(32_768)
        }
        return true
    }

    /// `ts` as milliseconds since the epoch: a number (ms) or an ISO 8601 string.
    static func milliseconds(_ v: JSONValue) -> Int64? {
        if let i = v.intValue { return i }
        // Any number a sender writes must not trap: out-of-range or non-finite is no timestamp (found by udp-fuzz).
        if case .double(let d) = v, d.isFinite, abs(d) < 9.2e18 { return Int64(d) }
        return v.stringValue.flatMap(WallClock.parseISO8601)
    }

    /// Signs a datagram body as a leaf must (tests, simulators).
    static func sign(_ body: [UInt8], key: [UInt8]) -> [UInt8] {
        let mac = HMAC<SHA256>.authenticationCode(for: body, using: SymmetricKey(data: key))
        return body + Array("\nsig=\(Data(mac).base64EncodedString())".utf8)
    }
}

/// A rejection and the leaf it concerned, if known.
struct DatagramRejectionAt: Error, Equatable {
    var reason: DatagramRejection
    var leaf: String?
    init(_ reason: DatagramRejection, leaf: String?) {
        self.reason = reason
        self.leaf = leaf
    }
}
