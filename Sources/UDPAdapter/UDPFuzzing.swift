import FieldgateCore
import FrameCodecs

/// The libFuzzer entry for the datagram decoder (Fuzz/udp-fuzz): any bytes from any source must decode or be
/// rejected without crashing, and a reading is never attributed to a leaf its source may not speak for.
public enum UDPFuzzing {
    static let configuration: UDPAdapterConfiguration = {
        var c = UDPAdapterConfiguration(port: 0, leaves: [
            UDPLeaf(deviceID: "open"),
            UDPLeaf(deviceID: "fenced", allowedSources: ["10.0.0.2"]),
            UDPLeaf(deviceID: "mapped", mappedSource: "10.0.0.9"),
            UDPLeaf(deviceID: "signed", hmacKey: Array("fuzz-key".utf8)),
            UDPLeaf(deviceID: "mapped-csv", mappedSource: "10.0.0.10", format: .csv(fields: ["a", "b"], idField: nil)),
        ])
        c.maxDatagramBytes = 2048
        return c
    }()

    public static func check(_ bytes: UnsafeRawBufferPointer) {
        guard let selector = bytes.first else { return }
        let sources = ["10.0.0.1", "10.0.0.2", "10.0.0.9", "::1", "10.0.0.10"]
        let source = sources[Int(selector) % sources.count]
        var decoder = DatagramDecoder(configuration: configuration)
        let body = Array(bytes.dropFirst())
        // The scanner agrees with itself: a document it splits into members parses whole, and so does each value.
        if let members = JSONScanner.members(of: body) {
            precondition(JSONValue.parse(body) != nil, "members(of:) accepted what parse refuses")
            for m in members { precondition(JSONValue.parse(Array(body[m.range])) != nil, "a member's value does not parse alone") }
        }
        guard case .success(let d) = decoder.decode(body, sourceIP: source, sourcePort: 1, nowMs: 1_700_000_000_000) else { return }
        let leaf: String
        switch d {
        case .reading(let l, _, let envelope, _):
            leaf = l
            precondition(TelemetryEnvelope(decoding: envelope.encoded()) == envelope, "an envelope must round-trip")
        case .reply(let l, _, _, _):
            leaf = l
        }
        switch leaf {
        case "fenced": precondition(source == "10.0.0.2", "a fenced leaf was spoken for by \(source)")
        case "signed": precondition(false, "a datagram without the key's signature was accepted")
        default: break
        }
        if source == "10.0.0.9" { precondition(leaf == "mapped", "a mapped source spoke for \(leaf)") }
        if source == "10.0.0.10" { precondition(leaf == "mapped-csv", "a mapped source spoke for \(leaf)") }
    }
}
