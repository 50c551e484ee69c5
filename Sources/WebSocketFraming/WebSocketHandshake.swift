import MessageAuthentication

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The client's side of the WebSocket opening handshake (RFC 6455 §4.1): the upgrade request, then the check of
/// the server's answer. Pure apart from the key's randomness, which the caller may supply.
public struct WebSocketClientHandshake: Sendable {
    public enum Outcome: Sendable, Equatable {
        case needMore
        /// Upgraded; bytes after the response head already belong to the WebSocket stream.
        case upgraded(leftover: [UInt8])
    }

    /// Why the server did not upgrade, in words an operator can act on.
    public struct Refused: Error, Sendable, Equatable, CustomStringConvertible {
        /// The HTTP status, when the server answered with one.
        public let status: Int?
        public let description: String
    }

    static let guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    static let maxHeadBytes = 16 * 1024

    public let key: String
    public let subprotocol: String
    public let request: [UInt8]
    private var received: [UInt8] = []

    /// - Parameters:
    ///   - host: the Host header (the hub's name, with `:port` when not 443).
    ///   - path: e.g. `/$iothub/websocket`.
    ///   - keyBytes: 16 random bytes (RFC 6455 §4.1: a fresh nonce per connection).
    public init(host: String, path: String, subprotocol: String, keyBytes: [UInt8] = SecureRandom.bytes(16), userAgent: String) {
        key = Data(keyBytes).base64EncodedString()
        self.subprotocol = subprotocol
        let lines = [
            "GET \(path) HTTP/1.1",
            "Host: \(host)",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: \(key)",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Protocol: \(subprotocol)",
            "User-Agent: \(userAgent)",
        ]
        request = Array((lines.joined(separator: "\r\n") + "\r\n\r\n").utf8)
    }

    /// The `Sec-WebSocket-Accept` value a server must answer `key` with.
    public static func acceptValue(for key: String) -> String {
        Data(SHA1.digest(Array((key + guid).utf8))).base64EncodedString()
    }

    /// Consumes response bytes.
    public mutating func receive(_ bytes: some Collection<UInt8>) throws(Refused) -> Outcome {
        received.append(contentsOf: bytes)
        guard let end = Self.headEnd(received) else {
            if received.count > Self.maxHeadBytes { throw Refused(status: nil, description: "the server's HTTP response head exceeds \(Self.maxHeadBytes) bytes") }
            return .needMore
        }
        let head = String(decoding: received[..<end], as: UTF8.self)
        let leftover = Array(received[(end + 4)...])
        var lines = head.split(separator: "\r\n", omittingEmptySubsequences: false).map(String.init)
        let statusLine = lines.removeFirst()
        let parts = statusLine.split(separator: " ", maxSplits: 2).map(String.init)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]) else {
            throw Refused(status: nil, description: "the server did not answer with HTTP (\(statusLine.prefix(60)))")
        }
        guard status == 101 else {
            let reason = parts.count > 2 ? " \(parts[2])" : ""
            throw Refused(status: status, description: "the server refused the WebSocket upgrade: HTTP \(status)\(reason)")
        }
        var fields: [String: String] = [:]
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].lowercased()
            let value = String(line[line.index(after: colon)...].drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
            fields[name] = fields[name].map { "\($0), \(value)" } ?? value
        }
        guard fields["upgrade"]?.lowercased() == "websocket",
              fields["connection"]?.lowercased().split(separator: ",").contains(where: { $0.filter { $0 != " " && $0 != "\t" } == "upgrade" }) == true
        else { throw Refused(status: 101, description: "the server's 101 lacks Upgrade: websocket / Connection: Upgrade") }
        guard fields["sec-websocket-accept"] == Self.acceptValue(for: key) else {
            throw Refused(status: 101, description: "the server's Sec-WebSocket-Accept does not match our key (not a WebSocket server, or something in between rewrote the handshake)")
        }
        guard fields["sec-websocket-protocol"] == subprotocol else {
            throw Refused(status: 101, description: "the server did not agree to the subprotocol \(subprotocol) (it answered \(fields["sec-websocket-protocol"] ?? "none"))")
        }
        guard fields["sec-websocket-extensions"] == nil else {
            throw Refused(status: 101, description: "the server chose an extension we did not offer (\(fields["sec-websocket-extensions"]!))")
        }
        return .upgraded(leftover: leftover)
    }

    static func headEnd(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for i in 0...(bytes.count - 4) where bytes[i] == 13 && bytes[i + 1] == 10 && bytes[i + 2] == 13 && bytes[i + 3] == 10 {
            return i
        }
        return nil
    }
}
