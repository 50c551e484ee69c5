import FieldgateCore
import IoTHub
import ProtonAMQP
import Spool

#if canImport(Glibc)
import Glibc
#endif

/// One D2C message ready to send: the spool records it carries and its AMQP encoding.
struct OutgoingMessage: Sendable {
    var leaf: String
    var sequences: [UInt64]
    var bytes: [UInt8]
    /// The oldest acquisition time it carries (for latency figures).
    var acquiredAtMs: Int64
}

/// Turns spool records into D2C messages (contract 2): the message-id comes from the record, so every retry and
/// every restart sends the same id; `iothub-creation-time-utc` is the acquisition time.
///
/// Each message is written once, straight from the spooled envelope's bytes into its AMQP encoding
/// (`TelemetryEnvelopeLayout` → `AMQPWriter`): no envelope decode, no value tree, no formatter. An envelope whose
/// properties the hub would not take as they are (spooled before a rule existed, or by another writer) is decoded,
/// sanitized and re-encoded first: the rare path.
///
/// Coalescing (`coalesceTargetBytes`): a leaf's JSON readings in one fetch become one JSON array per message, up to
/// the target, gathered per leaf even when other leaves' records lie between them; in order, with the same content
/// type, encoding and properties. Its message-id is `<id of the first record>-<sequence of the last>`.
struct TelemetryEncoder {
    /// Coalescing target in bytes; nil = one message per record.
    var coalesceTargetBytes: Int?
    /// Message ids are this prefix and the record's decimal sequence (`Spool.messageID(for:)`: `<epoch>-`).
    let messageIDPrefix: [UInt8]

    /// What `hubSize` adds to the envelope's own parts (body, type, encoding, properties) at most: the message-id
    /// and the creation-time property.
    let sizeBesidesEnvelope: Int

    init(coalesceTargetBytes: Int?, messageIDPrefix: String) {
        self.coalesceTargetBytes = coalesceTargetBytes.map { min($0, IoTHubAMQP.maxTelemetrySize - 1024) }
        self.messageIDPrefix = Array(messageIDPrefix.utf8)
        sizeBesidesEnvelope = self.messageIDPrefix.count + 20 + IoTHubAMQP.creationTimeProperty.utf8.count + WallClock.iso8601Length
    }

    /// Where an entry's envelope bytes are: in the fetched batch (the common case, nothing copied), or, when its
    /// properties had to be fixed, in the encoding's table of fixed envelopes (by number: an array in the entry made
    /// every copy of it a retain and a release, ~100 instructions a reading).
    private enum Envelope {
        case record
        case fixed(Int)
    }

    /// The bytes entries are sent from: the fetched batch, and the envelopes fixed for it.
    private struct Source {
        let batch: SpoolBatch
        var fixed: [[UInt8]] = []
    }

    private struct Entry {
        var record: Int
        var envelope: Envelope
        var layout: TelemetryEnvelopeLayout
        /// JSON in UTF-8: it may share a coalesced message.
        var isJSON: Bool
        /// Entries with the same number have the same header bytes (type, encoding, properties): each was found
        /// equal to the one before it (`sameHeader`). Different numbers say nothing.
        var headerGroup: Int

        init(record: Int, envelope: Envelope, layout: TelemetryEnvelopeLayout, isJSON: Bool? = nil, headerGroup: Int? = nil,
             bytes: UnsafeRawBufferPointer) {
            self.record = record
            self.envelope = envelope
            self.layout = layout
            self.headerGroup = headerGroup ?? record
            self.isJSON = isJSON ?? (TelemetryEncoder.startsIgnoringCase(UnsafeRawBufferPointer(rebasing: bytes[layout.contentType]), "application/json")
                && TelemetryEncoder.equalIgnoringCase(UnsafeRawBufferPointer(rebasing: bytes[layout.contentEncoding]), "utf-8"))
        }

        /// Bytes of the envelope it is sent from (`payload`: the record's).
        func envelopeBytes(_ payload: UnsafeRawBufferPointer, _ source: Source) -> Int {
            if case .fixed(let n) = envelope { return source.fixed[n].count }
            return payload.count
        }

        func withBytes<R>(_ source: Source, _ body: (UnsafeRawBufferPointer) -> R) -> R {
            switch envelope {
            case .record: return source.batch.withPayload(record, body)
            case .fixed(let n): return source.fixed[n].withUnsafeBytes(body)
            }
        }
    }

    /// What a coalesced message's id adds to a single record's: `-` and the last sequence (at most 20 digits).
    private static let rangeSuffixBytes = 21

    /// Encodes `records` (per leaf in order). Records that are not telemetry envelopes, or that the hub could never
    /// accept (over 256 KB by its measure, a creation time it cannot read), come back in `invalid`: sending them
    /// would only be refused, or close the link.
    func encode(_ records: [SpoolRecord]) -> (messages: [OutgoingMessage], invalid: [UInt64]) {
        encode(SpoolBatch(records))
    }

    /// The same, for a fetched batch (its records are views into the bytes read: nothing is copied but into the
    /// messages).
    func encode(_ batch: SpoolBatch) -> (messages: [OutgoingMessage], invalid: [UInt64]) {
        let records = batch.records
        var source = Source(batch: batch)
        var invalid: [UInt64] = []
        var entries: [Entry] = []
        entries.reserveCapacity(records.count)
        for i in records.indices {
            let made = batch.withPayload(i) { payload -> Entry? in
                guard MessageRules.isPlausibleCreationTime(records[i].acquiredAtMs),
                      let entry = Self.sameHeader(asLastOf: entries, source, i, payload) ?? Self.entry(i, payload, &source.fixed)
                else { return nil }
                // The hub's measure counts parts of the envelope and a few fixed ones: an envelope this small
                // fits whatever it holds, and is not measured.
                if entry.envelopeBytes(payload, source) + sizeBesidesEnvelope > IoTHubAMQP.maxTelemetrySize,
                   hubSize(entry, sequence: records[i].sequence) > IoTHubAMQP.maxTelemetrySize { return nil }
                return entry
            }
            if let made { entries.append(made) } else { invalid.append(records[i].sequence) }
        }
        var messages: [OutgoingMessage] = []
        messages.reserveCapacity(entries.count)
        guard let target = coalesceTargetBytes else {
            for e in entries.indices { messages.append(message(source, entries, [e])) }
            return (messages, invalid)
        }
        // Per leaf (by the batch's leaf number: no name hashed or compared), in the order leaves first appear; each
        // leaf's records keep their order. Entries are passed by index: copying one (its layout, its envelope)
        // cost more than the rest of its handling.
        // A counting sort: each leaf's entries lie together in `byLeaf`, from `start[leaf]` (an array per leaf cost
        // its growth and a uniqueness check per record).
        var start = [Int](repeating: 0, count: batch.leafCount + 1)
        var leafOrder: [Int] = []
        for e in entries.indices {
            let leaf = records[entries[e].record].leafIndex
            if start[leaf + 1] == 0 { leafOrder.append(leaf) }
            start[leaf + 1] += 1
        }
        for leaf in 0..<batch.leafCount { start[leaf + 1] += start[leaf] }
        var filled = start
        let byLeaf = [Int](unsafeUninitializedCapacity: entries.count) { out, initialized in
            for e in entries.indices {
                let leaf = records[entries[e].record].leafIndex
                (out.baseAddress! + filled[leaf]).initialize(to: e)
                filled[leaf] += 1
            }
            initialized = entries.count
        }
        var group: [Int] = []
        for leaf in leafOrder {
            let leafEntries = byLeaf[start[leaf] ..< start[leaf + 1]]
            // The array's size: "[" and, per reading, its body and a "," or "]".
            var groupBytes = 1
            // What the hub counts besides the body (id with its range suffix, type, encoding, properties, creation
            // time): the group's body must leave room for it under 256 KB whatever the target.
            var overhead = 0
            func flush() {
                if !group.isEmpty { messages.append(message(source, entries, group)) }
                group.removeAll(keepingCapacity: true)
                groupBytes = 1
            }
            for index in leafEntries {
                guard entries[index].isJSON else {
                    flush()
                    messages.append(message(source, entries, [index]))
                    continue
                }
                let bodyCount = entries[index].layout.body.count
                let grown = groupBytes + bodyCount + 1
                if let first = group.first,
                   !Self.canJoin(entries, first, index, source) || grown > target || grown + overhead > IoTHubAMQP.maxTelemetrySize {
                    flush()
                }
                if group.isEmpty {
                    overhead = hubSize(entries[index], sequence: records[entries[index].record].sequence) - bodyCount + Self.rangeSuffixBytes
                }
                group.append(index)
                groupBytes += bodyCount + 1
            }
            flush()
        }
        return (messages, invalid)
    }

    /// A leaf's readings mostly share content type, encoding and properties byte for byte: then the layout (and
    /// what was checked of it) is the previous record's, with its own body.
    private static func sameHeader(asLastOf entries: [Entry], _ source: Source, _ index: Int, _ payload: UnsafeRawBufferPointer) -> Entry? {
        guard let p = entries.indices.last else { return nil }
        let header = entries[p].layout.body.lowerBound
        guard payload.count >= header else { return nil }
        let same = entries[p].withBytes(source) { previous in memcmp(previous.baseAddress!, payload.baseAddress!, header) == 0 }
        guard same else { return nil }
        var layout = entries[p].layout
        layout.body = header ..< payload.count
        return Entry(record: index, envelope: .record, layout: layout, isJSON: entries[p].isJSON, headerGroup: entries[p].headerGroup, bytes: payload)
    }

    /// The record's envelope as it will be sent, or nil when it cannot be (a fixed envelope is added to `fixed`).
    private static func entry(_ index: Int, _ payload: UnsafeRawBufferPointer, _ fixedEnvelopes: inout [[UInt8]]) -> Entry? {
        guard let layout = TelemetryEnvelopeLayout(payload) else { return nil }
        guard layout.propertiesAreClean else {
            // The hub's rules once more (docs/message-rules.md): fix the properties, then take the common path.
            guard var envelope = TelemetryEnvelope(decoding: Array(payload)) else { return nil }
            envelope.properties = MessageRules.sanitize(envelope.properties).properties
            let fixed = envelope.encoded()
            guard let again = fixed.withUnsafeBytes({ TelemetryEnvelopeLayout($0) }), again.propertiesAreClean, again.systemValuesAreASCII else { return nil }
            fixedEnvelopes.append(fixed)
            return fixed.withUnsafeBytes { Entry(record: index, envelope: .fixed(fixedEnvelopes.count - 1), layout: again, bytes: $0) }
        }
        // Content type and encoding travel as AMQP symbols: ASCII only.
        guard layout.systemValuesAreASCII else { return nil }
        return Entry(record: index, envelope: .record, layout: layout, bytes: payload)
    }

    /// The hub's measure of the message one record makes: body, message-id, content type and encoding, the
    /// properties and the creation-time property.
    private func hubSize(_ e: Entry, sequence: UInt64) -> Int {
        e.layout.body.count + messageIDPrefix.count + Self.decimalDigits(sequence) + e.layout.contentType.count + e.layout.contentEncoding.count
            + e.layout.propertyBytes + IoTHubAMQP.creationTimeProperty.utf8.count + WallClock.iso8601Length
    }

    private static func startsIgnoringCase(_ bytes: UnsafeRawBufferPointer, _ prefix: StaticString) -> Bool {
        bytes.count >= prefix.utf8CodeUnitCount && equalIgnoringCase(UnsafeRawBufferPointer(rebasing: bytes[0 ..< prefix.utf8CodeUnitCount]), prefix)
    }

    private static func equalIgnoringCase(_ bytes: UnsafeRawBufferPointer, _ text: StaticString) -> Bool {
        MessageRules.equalIgnoringCase(bytes, UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    /// Same content type, encoding and properties (JSON readings both): they can share one message.
    /// Entries by index: a copy of each cost more than the comparison.
    private static func canJoin(_ entries: [Entry], _ a: Int, _ b: Int, _ source: Source) -> Bool {
        if entries[a].headerGroup == entries[b].headerGroup { return true }
        // Type, encoding and properties are contiguous in an envelope, ahead of the body.
        let header = entries[a].layout.body.lowerBound
        guard header == entries[b].layout.body.lowerBound else { return false }
        return entries[a].withBytes(source) { pa in
            entries[b].withBytes(source) { pb in memcmp(pa.baseAddress!, pb.baseAddress!, header) == 0 }
        }
    }

    /// One AMQP message for `group` (one leaf's entries in order; several only when coalescing JSON).
    private func message(_ source: Source, _ entries: [Entry], _ group: [Int]) -> OutgoingMessage {
        let batch = source.batch
        let records = batch.records
        let first = entries[group[0]], firstRecord = records[first.record]
        let last = records[entries[group[group.count - 1]].record]
        var bodyBytes = 0
        for e in group { bodyBytes += entries[e].layout.body.count }
        if group.count > 1 { bodyBytes += group.count + 1 }  // brackets and commas
        let firstDigits = Self.decimalDigits(firstRecord.sequence)
        let lastDigits = group.count > 1 ? Self.decimalDigits(last.sequence) : 0
        let idBytes = messageIDPrefix.count + firstDigits + (group.count > 1 ? 1 + lastDigits : 0)
        let variables = 5 + 2 * (first.layout.propertyCount + 1)  // id, type, encoding, body; names and values
        let capacity = 3 * AMQPWriter.descriptorBytes + 2 * AMQPWriter.compoundHeaderBytes + variables * AMQPWriter.variableHeaderBytes + 5
            + idBytes + first.layout.contentType.count + first.layout.contentEncoding.count + first.layout.propertyBytes
            + IoTHubAMQP.creationTimeProperty.utf8.count + WallClock.iso8601Length + bodyBytes
        let bytes = AMQPWriter.bytes(capacity: capacity) { w in
            first.withBytes(source) { p in
                // properties: message-id, user-id, to, subject, reply-to, correlation-id, content-type, content-encoding
                w.descriptor(0x73)
                let list = w.beginList()
                w.string(count: idBytes) { out in
                    messageIDPrefix.withUnsafeBytes { out.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                    let at = messageIDPrefix.count
                    Self.writeDecimal(firstRecord.sequence, digits: firstDigits, to: out + at)
                    if group.count > 1 {
                        out.storeBytes(of: UInt8(ascii: "-"), toByteOffset: at + firstDigits, as: UInt8.self)
                        Self.writeDecimal(last.sequence, digits: lastDigits, to: out + at + firstDigits + 1)
                    }
                }
                for _ in 0..<5 { w.null() }
                w.symbol(UnsafeRawBufferPointer(rebasing: p[first.layout.contentType]))
                w.symbol(UnsafeRawBufferPointer(rebasing: p[first.layout.contentEncoding]))
                w.end(list, count: 8)
                // application-properties: the leaf's, then the creation time (the acquisition time of the first).
                w.descriptor(0x74)
                let map = w.beginMap()
                TelemetryEnvelopeLayout.forEachProperty(in: p, first.layout.properties) { k, v in
                    w.string(k)
                    w.string(v)
                }
                w.string(IoTHubAMQP.creationTimeProperty)
                w.string(count: WallClock.iso8601Length) { WallClock.writeISO8601(milliseconds: firstRecord.acquiredAtMs, to: $0) }
                w.end(map, count: 2 * (first.layout.propertyCount + 1))
                // data
                w.descriptor(0x75)
                if group.count == 1 { w.binary(UnsafeRawBufferPointer(rebasing: p[first.layout.body])) }
            }
            guard group.count > 1 else { return }
            w.binaryHeader(count: bodyBytes)
            w.raw(UInt8(ascii: "["))
            for (i, e) in group.enumerated() {
                if i > 0 { w.raw(UInt8(ascii: ",")) }
                let body = entries[e].layout.body
                entries[e].withBytes(source) { w.raw(UnsafeRawBufferPointer(rebasing: $0[body])) }
            }
            w.raw(UInt8(ascii: "]"))
        }
        let sequences = group.count == 1 ? [firstRecord.sequence] : group.map { records[entries[$0].record].sequence }
        return OutgoingMessage(leaf: batch.leaf(first.record), sequences: sequences, bytes: bytes, acquiredAtMs: firstRecord.acquiredAtMs)
    }

    /// Powers of ten up to 10^19 (every UInt64 has at most 20 digits).
    private static let powersOfTen: [UInt64] = (0..<20).map { (0..<$0).reduce(1) { r, _ in r * 10 } }

    /// Digits of `v` in decimal, from its bit length (no division: it is asked for every record).
    static func decimalDigits(_ v: UInt64) -> Int {
        // log10(2) ≈ 1233/4096: t digits or t + 1 for a value of that many bits.
        let t = ((64 - v.leadingZeroBitCount) * 1233) >> 12
        return v == 0 ? 1 : v < powersOfTen[t] ? t : t + 1
    }

    private static func writeDecimal(_ value: UInt64, digits: Int, to out: UnsafeMutableRawPointer) {
        var v = value
        for i in stride(from: digits - 1, through: 0, by: -1) {
            out.storeBytes(of: UInt8(truncatingIfNeeded: 48 + v % 10), toByteOffset: i, as: UInt8.self)
            v /= 10
        }
    }
}
