/// The libFuzzer entry for the framers and decoders (Fuzz/frame-fuzz): any byte stream, cut at any point, must
/// frame and decode without crashing; frames respect their length bounds; a framed payload comes back intact.
public enum FrameFuzzing {
    static let framings: [Framing] = [
        .lines(maxLength: 64), .fixed(length: 7), .lengthPrefixed(prefixBytes: 1, maxLength: 64),
        .lengthPrefixed(prefixBytes: 2, maxLength: 64), .markers(start: 0x02, end: 0x03, escape: 0x10, maxLength: 64),
    ]
    /// Made per input: a lazily built global would be reported as a leak by LeakSanitizer.
    static func decoders() -> [FrameDecoder] { [
        try! FrameDecoder(.json(idField: "id")), try! FrameDecoder(.csv(fields: ["id", "a", "b"], idField: "id")),
        try! FrameDecoder(.keyValue(fieldMap: ["T": "t"], onlyMapped: false, idField: nil)),
        try! FrameDecoder(.regex(pattern: #"(?<k>[a-z]+)=(?<v>-?\d+(\.\d+)?)"#, idField: nil)), try! FrameDecoder(.raw),
    ] }

    public static func check(_ bytes: UnsafeRawBufferPointer) {
        guard let first = bytes.first else { return }
        let data = Array(bytes.dropFirst())
        let cut = data.isEmpty ? 0 : Int(first) % (data.count + 1)
        let decoders = decoders()
        for framing in framings {
            var f = Framer(framing)
            let frames = f.feed(data[..<cut]) + f.feed(data[cut...])
            for frame in frames {
                switch framing {
                case .lines(_, let max), .lengthPrefixed(_, let max), .markers(_, _, _, let max): precondition(frame.count <= max)
                case .fixed(let n): precondition(frame.count == n)
                }
                for d in decoders { _ = d.decode(frame) }
            }
            // Round trip: a framed payload (within bounds, no line delimiter in it) decodes to itself.
            let payload = Array(data.prefix(48))
            if case .lines = framing, payload.contains(0x0A) || payload.contains(0x0D) || payload.isEmpty { continue }
            if case .fixed = framing { continue }
            var g = Framer(framing)
            precondition(g.feed(g.frame(payload)) == [payload], "a framed payload must come back intact")
        }
    }
}
