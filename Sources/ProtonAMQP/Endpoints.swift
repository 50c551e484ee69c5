internal import CProton

// Swift views of Proton's endpoint objects. They are plain values wrapping a pointer and are only valid on the
// reactor thread, inside an event handler or an `AMQPConnectionRef.execute` job; they are deliberately not
// Sendable. Handlers that keep per-link state key it by `id` and drop it on `.linkFinal`.

/// A stable identity for an endpoint while it lives.
public struct AMQPObjectID: Hashable, Sendable {
    let bits: UInt
    init(_ p: OpaquePointer) { bits = UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(p))) }
}

public struct AMQPConnection {
    let raw: OpaquePointer
    let context: ConnectionContext

    public var id: AMQPObjectID { AMQPObjectID(raw) }
    /// A Sendable handle to this connection for other threads.
    public var ref: AMQPConnectionRef { AMQPConnectionRef(context: context) }
    public var remoteContainer: String? { pn_connection_remote_container(raw).map { String(cString: $0) } }
    /// The idle-timeout the peer advertised, in milliseconds (0 = none).
    public var remoteIdleTimeoutMilliseconds: UInt32 {
        guard let t = pn_connection_transport(raw) else { return 0 }
        return pn_transport_get_remote_idle_timeout(t)
    }
    /// The SASL mechanism the peer chose, if any ("" when it skipped SASL).
    public var saslMechanism: String { context.saslMechanism }

    /// Opens a new session (client side).
    public func openSession() -> AMQPSession {
        let s = pn_session(raw)!
        pn_session_open(s)
        return AMQPSession(raw: s)
    }

    public func close(_ condition: AMQPCondition? = nil) {
        if let condition { setCondition(pn_connection_condition(raw), condition) }
        pn_connection_close(raw)
    }

    /// Drops the socket without an AMQP close, as a network failure would.
    public func abort() {
        guard let t = pn_connection_transport(raw) else { return }
        pn_transport_close_tail(t)
        pn_transport_close_head(t)
    }
}

public struct AMQPSession {
    let raw: OpaquePointer
    public var id: AMQPObjectID { AMQPObjectID(raw) }

    public func sender(name: String) -> AMQPLink { AMQPLink(raw: pn_sender(raw, name)) }
    public func receiver(name: String) -> AMQPLink { AMQPLink(raw: pn_receiver(raw, name)) }
    public func close() { pn_session_close(raw) }
    /// Lets Proton free the session and its links once their frames are out (after `close`). Drop every
    /// `AMQPLink`/`AMQPDelivery` of the session first: they must not be touched again.
    public func free() { pn_session_free(raw) }
}

public enum AMQPSenderSettleMode: Sendable { case unsettled, settled, mixed }
public enum AMQPReceiverSettleMode: Sendable { case first, second }

public struct AMQPLink {
    let raw: OpaquePointer
    public var id: AMQPObjectID { AMQPObjectID(raw) }

    public var name: String { String(cString: pn_link_name(raw)) }
    public var isSender: Bool { pn_link_is_sender(raw) }
    public var session: AMQPSession { AMQPSession(raw: pn_link_session(raw)) }
    public var remoteSourceAddress: String? { terminusAddress(pn_link_remote_source(raw)) }
    public var remoteTargetAddress: String? { terminusAddress(pn_link_remote_target(raw)) }
    public var remoteProperties: [AMQPValue: AMQPValue] {
        ProtonData.readWhole(pn_link_remote_properties(raw))?.mapValue ?? [:]
    }
    public var remoteMaxMessageSize: UInt64 { pn_link_remote_max_message_size(raw) }
    public var remoteSenderSettleMode: AMQPSenderSettleMode {
        switch pn_link_remote_snd_settle_mode(raw) {
        case PN_SND_SETTLED: .settled
        case PN_SND_UNSETTLED: .unsettled
        default: .mixed
        }
    }
    public var remoteReceiverSettleMode: AMQPReceiverSettleMode {
        pn_link_remote_rcv_settle_mode(raw) == PN_RCV_SECOND ? .second : .first
    }
    public var remoteCondition: AMQPCondition? { readCondition(pn_link_remote_condition(raw)) }
    public var credit: Int { Int(pn_link_credit(raw)) }
    public var isLocallyOpen: Bool { pn_link_state(raw) & Int32(PN_LOCAL_ACTIVE) != 0 }
    /// The peer has detached it (or refused its attach).
    public var isRemotelyClosed: Bool { pn_link_state(raw) & Int32(PN_REMOTE_CLOSED) != 0 }

    public func setSource(_ address: String?) { setTerminus(pn_link_source(raw), address) }
    public func setTarget(_ address: String?) { setTerminus(pn_link_target(raw), address) }
    /// Copies the peer's source and target into ours (the usual attach reply of a server).
    public func mirrorRemoteTermini() {
        pn_terminus_copy(pn_link_source(raw), pn_link_remote_source(raw))
        pn_terminus_copy(pn_link_target(raw), pn_link_remote_target(raw))
    }
    public func setProperties(_ properties: [AMQPValue: AMQPValue]) {
        ProtonData.writeWhole(.map(properties), into: pn_link_properties(raw))
    }
    public func setMaxMessageSize(_ size: UInt64) { pn_link_set_max_message_size(raw, size) }
    public func setSenderSettleMode(_ mode: AMQPSenderSettleMode) {
        let m: pn_snd_settle_mode_t = switch mode {
        case .settled: PN_SND_SETTLED
        case .unsettled: PN_SND_UNSETTLED
        case .mixed: PN_SND_MIXED
        }
        pn_link_set_snd_settle_mode(raw, m)
    }
    public func setReceiverSettleMode(_ mode: AMQPReceiverSettleMode) {
        pn_link_set_rcv_settle_mode(raw, mode == .second ? PN_RCV_SECOND : PN_RCV_FIRST)
    }

    public func open() { pn_link_open(raw) }

    /// Detaches with `closed=true`, optionally with an error condition.
    public func close(_ condition: AMQPCondition? = nil) {
        if let condition { setCondition(pn_link_condition(raw), condition) }
        pn_link_close(raw)
    }

    /// Lets Proton free the link once its frames are out (after `close`). Drop every `AMQPLink`/`AMQPDelivery` of
    /// it first: they must not be touched again.
    public func free() { pn_link_free(raw) }

    /// Grants `credit` more link credit (receiver).
    public func flow(_ credit: Int) { pn_link_flow(raw, Int32(credit)) }

    /// Encodes every frame Proton holds for this link's connection into the transport's output now. Proton writes
    /// the dispositions decided during an event batch after that batch's transfers, so a reply sent in the same
    /// batch as its request's `accepted` would overtake it on the wire; a transfer sent after this call follows
    /// every disposition decided before it (uAMQP's management clients require that order).
    public func writePendingFrames() {
        guard let transport = pn_connection_transport(pn_session_connection(pn_link_session(raw))) else { return }
        _ = pn_transport_pending(transport)
    }

    /// Sends an encoded message (sender). `tag` is the delivery tag (16 bytes for C2D lock tokens).
    @discardableResult
    public func send(_ encoded: [UInt8], tag: [UInt8], settled: Bool = false) -> AMQPDelivery {
        let d = tag.withUnsafeBufferPointer { buf in
            buf.withMemoryRebound(to: CChar.self) { pn_delivery(raw, pn_dtag($0.baseAddress, $0.count))! }
        }
        return finishSend(d, encoded, settled: settled)
    }

    /// The same with an eight-byte tag (`AMQPDelivery.tagNumber` reads it back), without an array per message.
    @discardableResult
    public func send(_ encoded: [UInt8], tag: UInt64, settled: Bool = false) -> AMQPDelivery {
        let d = withUnsafeBytes(of: tag.littleEndian) { pn_delivery(raw, pn_dtag($0.baseAddress!.assumingMemoryBound(to: CChar.self), 8))! }
        return finishSend(d, encoded, settled: settled)
    }

    /// The message's bytes into delivery `d`, which then goes out (settled at once when asked).
    private func finishSend(_ d: OpaquePointer, _ encoded: [UInt8], settled: Bool) -> AMQPDelivery {
        encoded.withUnsafeBufferPointer { buf in
            buf.withMemoryRebound(to: CChar.self) { _ = pn_link_send(raw, $0.baseAddress, $0.count) }
        }
        pn_link_advance(raw)
        if settled { pn_delivery_settle(d) }
        return AMQPDelivery(raw: d)
    }

    private func terminusAddress(_ t: OpaquePointer?) -> String? {
        guard let t, let a = pn_terminus_get_address(t) else { return nil }
        return String(cString: a)
    }

    private func setTerminus(_ t: OpaquePointer?, _ address: String?) {
        guard let t else { return }
        if let address { pn_terminus_set_address(t, address) } else { pn_terminus_set_type(t, PN_UNSPECIFIED) }
    }
}

/// The outcome of a delivery (AMQP 1.0 §3.4).
public enum AMQPOutcome: Sendable, Equatable {
    case accepted
    case rejected(AMQPCondition?)
    case released
    case modified(deliveryFailed: Bool, undeliverableHere: Bool)
}

public struct AMQPDelivery {
    let raw: OpaquePointer
    public var id: AMQPObjectID { AMQPObjectID(raw) }

    public var link: AMQPLink { AMQPLink(raw: pn_delivery_link(raw)) }
    public var tag: [UInt8] {
        let t = pn_delivery_tag(raw)
        return ProtonData.bytesArray(pn_bytes(t.size, t.start))
    }
    /// An eight-byte tag as the number `AMQPLink.send(_:tag:settled:)` was given; nil for a tag of another size.
    public var tagNumber: UInt64? {
        let t = pn_delivery_tag(raw)
        guard t.size == 8, let start = t.start else { return nil }
        return UInt64(littleEndian: UnsafeRawPointer(start).loadUnaligned(as: UInt64.self))
    }
    public var isRemotelySettled: Bool { pn_delivery_settled(raw) }

    /// The outcome the peer sent, nil while there is none.
    public var remoteOutcome: AMQPOutcome? {
        let state = pn_delivery_remote_state(raw)
        let disposition = pn_delivery_remote(raw)
        switch state {
        case cproton_accepted: return .accepted
        case cproton_rejected: return .rejected(readCondition(pn_disposition_condition(disposition)))
        case cproton_released: return .released
        case cproton_modified:
            return .modified(deliveryFailed: pn_disposition_is_failed(disposition),
                             undeliverableHere: pn_disposition_is_undeliverable(disposition))
        default: return nil
        }
    }

    /// Sends `outcome` and, when `settle`, settles (receiver side).
    public func dispose(_ outcome: AMQPOutcome, settle: Bool = true) {
        let local = pn_delivery_local(raw)
        let state: UInt64
        switch outcome {
        case .accepted: state = cproton_accepted
        case .rejected(let condition):
            if let condition { setCondition(pn_disposition_condition(local), condition) }
            state = cproton_rejected
        case .released: state = cproton_released
        case .modified(let failed, let undeliverable):
            pn_disposition_set_failed(local, failed)
            pn_disposition_set_undeliverable(local, undeliverable)
            state = cproton_modified
        }
        pn_delivery_update(raw, state)
        if settle { pn_delivery_settle(raw) }
    }

    /// Settles without (further) outcome.
    public func settle() { pn_delivery_settle(raw) }
}

func setCondition(_ c: OpaquePointer?, _ condition: AMQPCondition) {
    guard let c else { return }
    pn_condition_set_name(c, condition.name)
    pn_condition_set_description(c, condition.description)
    if !condition.info.isEmpty { ProtonData.writeWhole(.map(condition.info), into: pn_condition_info(c)) }
}

func readCondition(_ c: OpaquePointer?) -> AMQPCondition? {
    guard let c, pn_condition_is_set(c), let name = pn_condition_get_name(c) else { return nil }
    let description = pn_condition_get_description(c).map { String(cString: $0) } ?? ""
    let info = ProtonData.readWhole(pn_condition_info(c))?.mapValue ?? [:]
    return AMQPCondition(name: String(cString: name), description: description, info: info)
}

/// What a connection handler hears, always on the reactor thread.
public enum AMQPEvent {
    /// The peer's Open arrived (a listener has already answered it).
    case connectionOpened
    /// The peer closed the connection (we answer with our close).
    case connectionClosed(AMQPCondition?)
    /// The socket is gone; the last event of a connection. `error` explains an abnormal end.
    case transportClosed(AMQPError?)
    /// The peer began a session (a listener has already answered it).
    case sessionOpened(AMQPSession)
    case sessionClosed(AMQPSession)
    /// The peer attached a link, or answered our attach. For a peer-initiated attach the handler must answer:
    /// set termini/properties and `open()`, or `open()` then `close(condition)` to refuse.
    case linkOpened(AMQPLink)
    /// The peer detached a link (we answer with our detach).
    case linkClosed(AMQPLink, AMQPCondition?)
    /// The link object is about to be freed: drop any state keyed by its id.
    case linkFinal(AMQPLink)
    /// Credit changed on a link.
    case linkFlow(AMQPLink)
    /// A complete message arrived on a receiver link; the handler disposes `delivery`.
    case message(AMQPDelivery, bytes: [UInt8])
    /// The peer updated or settled a delivery we sent.
    case deliveryUpdated(AMQPDelivery)
}

/// Receives a connection's events on the reactor thread. Implementations are confined to that thread.
public protocol AMQPConnectionHandler: AnyObject {
    func handle(_ event: AMQPEvent, on connection: AMQPConnection)
}
