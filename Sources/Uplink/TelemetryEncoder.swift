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

    /// An envelope's header — content type, encoding and properties, ahead of the body — as checked once for the
    /// records that share it byte for byte.
    private struct Header {
        var layout: TelemetryEnvelopeLayout
        /// JSON in UTF-8: its readings may share a coalesced message.
        var isJSON: Bool
        /// Where the body starts in each envelope with this header (the body runs to the envelope's end).
        var bodyStart: Int { layout.body.lowerBound }
    }

    /// What an encoding reads: the fetched batch (whose memory holds the envelopes), the envelopes whose properties
    /// had to be fixed, and the headers found.
    private struct Source {
        let batch: SpoolBatch
        /// Envelopes rewritten with their properties fixed (the rare path).
        var fixed: [OwnedBytes] = []
        var headers: [Header] = []
    }

    /// One record as it will be sent: its envelope's bytes (valid while the encoding's `Source` lives) and its
    /// header by number. Plain data: an entry that carried the layout and an enum holding an array was retained,
    /// released and moved with every copy (with the header table, ~120 instructions a reading fewer).
    private struct Entry {
        var envelope: UnsafeRawBufferPointer
        var record: Int
        /// Entries with the same number have the same header bytes; different numbers say nothing.
        var header: Int
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
            let payload = batch.unsafePayload(i)
            guard MessageRules.isPlausibleCreationTime(records[i].acquiredAtMs),
                  let entry = Self.sameHeader(asLastOf: entries, source, i, payload) ?? Self.entry(i, payload, &source),
                  // The hub's measure counts parts of the envelope and a few fixed ones: an envelope this small
                  // fits whatever it holds, and is not measured.
                  entry.envelope.count + sizeBesidesEnvelope <= IoTHubAMQP.maxTelemetrySize
                    || hubSize(entry, source, sequence: records[i].sequence) <= IoTHubAMQP.maxTelemetrySize
            else {
                invalid.append(records[i].sequence)
                continue
            }
            entries.append(entry)
        }
        var messages: [OutgoingMessage] = []
        messages.reserveCapacity(entries.count)
        guard let target = coalesceTargetBytes else {
            let all = Array(entries.indices)
            for e in all.indices { messages.append(message(source, entries, all[e ... e])) }
            return (messages, invalid)
        }
        // Per leaf (by the batch's leaf number: no name hashed or compared), in the order leaves first appear; each
        // leaf's records keep their order. Entries are passed by index.
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
        // A message is a stretch of one leaf's entries in `byLeaf`: from `groupStart` to the entry at hand.
        for leaf in leafOrder {
            var groupStart = start[leaf]
            // The array's size: "[" and, per reading, its body and a "," or "]".
            var groupBytes = 1
            // What the hub counts besides the body (id with its range suffix, type, encoding, properties, creation
            // time): the group's body must leave room for it under 256 KB whatever the target.
            var overhead = 0
            for position in start[leaf] ..< start[leaf + 1] {
                let index = byLeaf[position]
                guard source.headers[entries[index].header].isJSON else {
                    if groupStart < position { messages.append(message(source, entries, byLeaf[groupStart ..< position], arrayBytes: groupBytes)) }
                    messages.append(message(source, entries, byLeaf[position ... position]))
                    groupStart = position + 1
                    groupBytes = 1
                    continue
                }
                let bodyCount = entries[index].envelope.count - source.headers[entries[index].header].bodyStart
                let grown = groupBytes + bodyCount + 1
                if groupStart < position,
                   !Self.canJoin(entries[byLeaf[groupStart]], entries[index], source) || grown > target || grown + overhead > IoTHubAMQP.maxTelemetrySize {
                    messages.append(message(source, entries, byLeaf[groupStart ..< position], arrayBytes: groupBytes))
                    groupStart = position
                    groupBytes = 1
                }
                if groupStart == position {
                    overhead = hubSize(entries[index], source, sequence: records[entries[index].record].sequence) - bodyCount + Self.rangeSuffixBytes
                }
                groupBytes += bodyCount + 1
            }
            if groupStart < start[leaf + 1] { messages.append(message(source, entries, byLeaf[groupStart ..< start[leaf + 1]], arrayBytes: groupBytes)) }
        }
        return (messages, invalid)
    }

    /// A leaf's readings mostly share content type, encoding and properties byte for byte: then the header (and
    /// what was checked of it) is the previous record's.
    private static func sameHeader(asLastOf entries: [Entry], _ source: Source, _ index: Int, _ payload: UnsafeRawBufferPointer) -> Entry? {
        guard let previous = entries.last else { return nil }
        let headerBytes = source.headers[previous.header].bodyStart
        guard payload.count >= headerBytes, memcmp(previous.envelope.baseAddress!, payload.baseAddress!, headerBytes) == 0 else { return nil }
        return Entry(envelope: payload, record: index, header: previous.header)
    }

    /// The record's envelope as it will be sent, or nil when it cannot be (its header, and a fixed envelope, are
    /// added to `source`).
    private static func entry(_ index: Int, _ payload: UnsafeRawBufferPointer, _ source: inout Source) -> Entry? {
        guard let layout = TelemetryEnvelopeLayout(payload) else { return nil }
        guard layout.propertiesAreClean else {
            // The hub's rules once more (docs/message-rules.md): fix the properties, then take the common path.
            guard var envelope = TelemetryEnvelope(decoding: Array(payload)) else { return nil }
            envelope.properties = MessageRules.sanitize(envelope.properties).properties
            let fixed = OwnedBytes(copying: envelope.encoded())
            guard let again = TelemetryEnvelopeLayout(fixed.contents), again.propertiesAreClean, again.systemValuesAreASCII else { return nil }
            source.fixed.append(fixed)
            return newHeader(again, index, fixed.contents, &source)
        }
        // Content type and encoding travel as AMQP symbols: ASCII only.
        guard layout.systemValuesAreASCII else { return nil }
        return newHeader(layout, index, payload, &source)
    }

    private static func newHeader(_ layout: TelemetryEnvelopeLayout, _ index: Int, _ envelope: UnsafeRawBufferPointer, _ source: inout Source) -> Entry {
        let isJSON = startsIgnoringCase(UnsafeRawBufferPointer(rebasing: envelope[layout.contentType]), "application/json")
            && equalIgnoringCase(UnsafeRawBufferPointer(rebasing: envelope[layout.contentEncoding]), "utf-8")
        source.headers.append(Header(layout: layout, isJSON: isJSON))
        return Entry(envelope: envelope, record: index, header: source.headers.count - 1)
    }

    /// The hub's measure of the message one record makes: body, message-id, content type and encoding, the
    /// properties and the creation-time property.
    private func hubSize(_ e: Entry, _ source: Source, sequence: UInt64) -> Int {
        let layout = source.headers[e.header].layout
        return e.envelope.count - layout.body.lowerBound + messageIDPrefix.count + Self.decimalDigits(sequence) + layout.contentType.count
            + layout.contentEncoding.count + layout.propertyBytes + IoTHubAMQP.creationTimeProperty.utf8.count + WallClock.iso8601Length
    }

    private static func startsIgnoringCase(_ bytes: UnsafeRawBufferPointer, _ prefix: StaticString) -> Bool {
        bytes.count >= prefix.utf8CodeUnitCount && equalIgnoringCase(UnsafeRawBufferPointer(rebasing: bytes[0 ..< prefix.utf8CodeUnitCount]), prefix)
    }

    private static func equalIgnoringCase(_ bytes: UnsafeRawBufferPointer, _ text: StaticString) -> Bool {
        MessageRules.equalIgnoringCase(bytes, UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    /// Same content type, encoding and properties (JSON readings both): they can share one message.
    private static func canJoin(_ a: Entry, _ b: Entry, _ source: Source) -> Bool {
        if a.header == b.header { return true }
        // Type, encoding and properties are contiguous in an envelope, ahead of the body.
        let headerBytes = source.headers[a.header].bodyStart
        guard headerBytes == source.headers[b.header].bodyStart else { return false }
        return memcmp(a.envelope.baseAddress!, b.envelope.baseAddress!, headerBytes) == 0
    }

    /// One AMQP message for `group` (one leaf's entries in order; several only when coalescing JSON, then
    /// `arrayBytes` is the JSON array's size, as the grouping counted it).
    private func message(_ source: Source, _ entries: [Entry], _ group: ArraySlice<Int>, arrayBytes: Int = 0) -> OutgoingMessage {
        let records = source.batch.records
        let first = entries[group[group.startIndex]], firstRecord = records[first.record]
        let last = records[entries[group[group.endIndex - 1]].record]
        let layout = source.headers[first.header].layout
        // Entries that join share their header's length: their bodies start at the same place.
        let bodyStart = layout.body.lowerBound
        let bodyBytes = group.count > 1 ? arrayBytes : first.envelope.count - bodyStart
        let firstDigits = Self.decimalDigits(firstRecord.sequence)
        let lastDigits = group.count > 1 ? Self.decimalDigits(last.sequence) : 0
        let idBytes = messageIDPrefix.count + firstDigits + (group.count > 1 ? 1 + lastDigits : 0)
        let variables = 5 + 2 * (layout.propertyCount + 1)  // id, type, encoding, body; names and values
        let capacity = 3 * AMQPWriter.descriptorBytes + 2 * AMQPWriter.compoundHeaderBytes + variables * AMQPWriter.variableHeaderBytes + 5
            + idBytes + layout.contentType.count + layout.contentEncoding.count + layout.propertyBytes
            + IoTHubAMQP.creationTimeProperty.utf8.count + WallClock.iso8601Length + bodyBytes
        let p = first.envelope
        let bytes = AMQPWriter.bytes(capacity: capacity) { w in
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
            w.symbol(UnsafeRawBufferPointer(rebasing: p[layout.contentType]))
            w.symbol(UnsafeRawBufferPointer(rebasing: p[layout.contentEncoding]))
            w.end(list, count: 8)
            // application-properties: the leaf's, then the creation time (the acquisition time of the first).
            w.descriptor(0x74)
            let map = w.beginMap()
            TelemetryEnvelopeLayout.forEachProperty(in: p, layout.properties) { k, v in
                w.string(k)
                w.string(v)
            }
            w.string(IoTHubAMQP.creationTimeProperty)
            w.string(count: WallClock.iso8601Length) { WallClock.writeISO8601(milliseconds: firstRecord.acquiredAtMs, to: $0) }
            w.end(map, count: 2 * (layout.propertyCount + 1))
            // data
            w.descriptor(0x75)
            guard group.count > 1 else { return w.binary(UnsafeRawBufferPointer(rebasing: p[bodyStart...])) }
            w.binaryHeader(count: bodyBytes)
            w.raw(UInt8(ascii: "["))
            var separator = false
            for e in group {
                if separator { w.raw(UInt8(ascii: ",")) }
                separator = true
                w.raw(UnsafeRawBufferPointer(rebasing: entries[e].envelope[bodyStart...]))
            }
            w.raw(UInt8(ascii: "]"))
        }
        let sequences = [UInt64](unsafeUninitializedCapacity: group.count) { out, initialized in
            for (i, e) in group.enumerated() { (out.baseAddress! + i).initialize(to: records[entries[e].record].sequence) }
            initialized = group.count
        }
        return OutgoingMessage(leaf: source.batch.leaf(first.record), sequences: sequences, bytes: bytes, acquiredAtMs: firstRecord.acquiredAtMs)
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
