import MessageAuthentication
import FieldgateCore
import FrameCodecs

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Why a datagram was not taken (counted per leaf and reason).
public enum DatagramRejection: String, Sendable, CaseIterable {
    case oversize, malformed, sourceNotAllowed, unknownLeaf, notAllowedForLeaf, badSignature, staleTimestamp, replay
    /// `ts` outside what the hub takes as a creation time (1970-01-01 … 9999-12-31).
    case implausibleTimestamp
}

/// What a datagram said.
enum Datagram: Equatable {
    /// A reading for `leaf`; `fixes`: what was done to its properties to meet the hub's rules.
    case reading(leaf: String, acquiredAtMs: Int64, envelope: TelemetryEnvelope, fixes: [MessageRules.Fix])
    /// A leaf's answer to a command we sent (`{"type":"reply","id":…,"status":…,"payload":…}`).
    case reply(leaf: String, id: String, status: Int, payload: JSONValue)
}

/// Decodes datagrams (pure: no sockets). Formats (iothub issue 7):
/// - JSON `{"device": id, "ts": ms or ISO 8601?, "values": {...}, "props": {k: string}?}`; the reading's body is
///   `values`. A leaf's answers to commands: `{"device": id, "type": "reply", "id": …, "status": n, "payload": …}`.
/// - Per-source mapping: a datagram from a leaf's `mappedSource` belongs to that leaf; a JSON object body is the
///   reading's values, anything else is sent as it came (`application/octet-stream`).
/// - HMAC: for a leaf with a key, the datagram ends with `\nsig=<base64 HMAC-SHA256(key, bytes before "\n")>` and
///   the JSON carries `ts` within the window; each signature is accepted once, and after a restart nothing at or
///   below the newest `ts` accepted before it (`ReplayGuard`).
struct DatagramDecoder {
    let configuration: UDPAdapterConfiguration
    private let leaves: [String: UDPLeaf]
    private let mapped: [String: String]
    /// Decoders of the mapped sources that have a format (regexes compiled once).
    private let formats: [String: FrameDecoder]
    /// Kept across reloads (the adapter carries it to the next decoder) and, through its floors, restarts.
    var replay = ReplayGuard()

    init(configuration: UDPAdapterConfiguration) {
        self.configuration = configuration
        var leaves: [String: UDPLeaf] = [:]
        var mapped: [String: String] = [:]
        var formats: [String: FrameDecoder] = [:]
        for l in configuration.leaves {
            leaves[l.deviceID] = l
            if let s = l.mappedSource { mapped[s] = l.deviceID }
            // An invalid pattern is refused when the adapter is made (UDPAdapter.init); here it just decodes nothing.
            if l.mappedSource != nil, let f = l.format { formats[l.deviceID] = try? FrameDecoder(f) }
        }
        self.leaves = leaves
        self.mapped = mapped
        self.formats = formats
    }

    /// `sourceIP` is the sender's address without port; `sourcePort` its port.
    mutating func decode(_ bytes: [UInt8], sourceIP: String, sourcePort: Int, nowMs: Int64) -> Result<Datagram, DatagramRejectionAt> {
        bytes.withUnsafeBufferPointer { decode($0, sourceIP: sourceIP, sourcePort: sourcePort, nowMs: nowMs) }
    }

    /// The hot path of UDP ingest: the JSON is scanned once, not built; `values` is forwarded as the bytes that
    /// came (validated), and only the few top-level members the adapter reads are decoded.
    mutating func decode(_ bytes: UnsafeBufferPointer<UInt8>, sourceIP: String, sourcePort: Int, nowMs: Int64) -> Result<Datagram, DatagramRejectionAt> {
        guard bytes.count <= configuration.maxDatagramBytes else { return .failure(.init(.oversize, leaf: nil)) }
        guard configuration.allowedSources.isEmpty || configuration.allowedSources.contains(sourceIP) else {
            return .failure(.init(.sourceNotAllowed, leaf: nil))
        }
        let mappedLeaf = mapped.isEmpty ? nil : mapped["\(sourceIP):\(sourcePort)"] ?? mapped[sourceIP]
        var body = bytes
        var signature: String?
        if let nl = bytes.lastIndex(of: UInt8(ascii: "\n")), bytes[(nl + 1)...].starts(with: "sig=".utf8) {
            body = UnsafeBufferPointer(rebasing: bytes[..<nl])
            signature = String(decoding: UnsafeBufferPointer(rebasing: bytes[(nl + 5)...]), as: UTF8.self)
        }
        let members = JSONScanner.members(of: body)
        /// The last member named `key` (as `JSONValue.parse` lets the last duplicate win).
        func member(_ key: String) -> JSONScanner.Member? { members?.last { $0.key == key } }
        func string(_ key: String) -> String? {
            member(key).flatMap { $0.kind == .string ? JSONScanner.string(at: $0.range, in: body) : nil }
        }
        func value(_ m: JSONScanner.Member) -> JSONValue? { JSONScanner.value(of: UnsafeBufferPointer(rebasing: body[m.range])) }

        let namedID: String
        if let mappedLeaf {
            namedID = mappedLeaf
            if let claimed = string("device"), claimed != mappedLeaf {
                return .failure(.init(.notAllowedForLeaf, leaf: claimed))  // a mapped source speaks only for its leaf
            }
        } else {
            guard members != nil, let claimed = string("device") else { return .failure(.init(.malformed, leaf: nil)) }
            namedID = claimed
        }
        guard let leaf = leaves[namedID] else { return .failure(.init(.unknownLeaf, leaf: nil)) }
        // The configured spelling from here on: the table finds "café" for "cafe\u{301}", and the spool and the
        // uplink tell leaves apart by bytes, so readings spooled under the datagram's spelling would never be sent.
        let leafID = leaf.deviceID
        if mappedLeaf == nil, !leaf.allowedSources.isEmpty, !leaf.allowedSources.contains(sourceIP) {
            return .failure(.init(.notAllowedForLeaf, leaf: leafID))
        }
        let ts = member("ts").flatMap(value).flatMap(Self.milliseconds)
        if let key = leaf.hmacKey {
            guard let signature, let mac = Data(base64Encoded: signature),
                  HMACSHA256.isValid(Array(mac), for: Array(body), key: key)
            else { return .failure(.init(.badSignature, leaf: leafID)) }
            let skew = ts.map { $0.subtractingReportingOverflow(nowMs) }
            guard let skew, !skew.overflow, skew.partialValue.magnitude <= UInt64(configuration.timestampWindowSeconds * 1000) else {
                return .failure(.init(.staleTimestamp, leaf: leafID))
            }
            guard let ts, replay.accept(leaf: leafID, signature: signature, timestampMs: ts) else {
                return .failure(.init(.replay, leaf: leafID))
            }
        }
        if string("type") == "reply" {
            guard let id = string("id") else { return .failure(.init(.malformed, leaf: leafID)) }
            let status = member("status").flatMap(value)?.intValue.map(Int.init) ?? 200
            return .success(.reply(leaf: leafID, id: id, status: status, payload: member("payload").flatMap(value) ?? .null))
        }
        var properties: [String: String] = [:]
        if let props = member("props"), props.kind == .object, case .object(let object)? = value(props) {
            for (k, v) in object {
                guard let s = v.stringValue else { return .failure(.init(.malformed, leaf: leafID)) }
                properties[k] = s
            }
        }
        let envelope: TelemetryEnvelope
        if mappedLeaf != nil, let decoder = formats[leafID] {
            // The serial decoders for a mapped source; a trailing line end is not part of the frame.
            var frame = Array(body)
            while let last = frame.last, last == UInt8(ascii: "\n") || last == UInt8(ascii: "\r") { frame.removeLast() }
            switch decoder.decode(frame) {
            case .success(let decoded):
                if let named = decoded.leaf, named != leafID { return .failure(.init(.notAllowedForLeaf, leaf: named)) }
                envelope = TelemetryEnvelope(body: decoded.values.bytes, properties: properties)
            case .failure:
                return .failure(.init(.malformed, leaf: leafID))
            }
        } else if mappedLeaf != nil, members == nil {
            envelope = TelemetryEnvelope(body: Array(body), contentType: "application/octet-stream", contentEncoding: "binary", properties: properties)
        } else if let values = member("values") {
            envelope = TelemetryEnvelope(body: Array(body[values.range]), properties: properties)
        } else if mappedLeaf != nil {
            envelope = TelemetryEnvelope(body: Array(body), properties: properties)
        } else {
            return .failure(.init(.malformed, leaf: leafID))
        }
        if let ts, !MessageRules.isPlausibleCreationTime(ts) { return .failure(.init(.implausibleTimestamp, leaf: leafID)) }
        var sanitized = envelope
        let (allowed, fixes) = MessageRules.sanitize(envelope.properties)
        sanitized.properties = allowed
        return .success(.reading(leaf: leafID, acquiredAtMs: ts ?? nowMs, envelope: sanitized, fixes: fixes))
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
        let mac = HMACSHA256.authenticationCode(for: body, key: key)
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
