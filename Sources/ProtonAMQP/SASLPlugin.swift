internal import CProton

/// A Proton SASL implementation that speaks what IoT Hub clients speak: server side it offers the listener's
/// mechanisms (MSSBCBS, ANONYMOUS) and accepts any of them without credentials, because authentication happens
/// later over CBS; client side it chooses MSSBCBS with an empty initial response, as the Azure C SDK does
/// (docs/iothub-protocol.md §1.2). Proton 0.37's built-in SASL cannot do MSSBCBS at all.
enum SASLPlugin {
    nonisolated(unsafe) static let implementation: UnsafeMutablePointer<pnx_sasl_implementation> = {
        let p = UnsafeMutablePointer<pnx_sasl_implementation>.allocate(capacity: 1)
        p.initialize(to: pnx_sasl_implementation(
            free: { _ in },
            list_mechanisms: { t in
                guard let context = connectionContext(t), let listener = context.listener else { return nil }
                return UnsafePointer(listener.mechanismList)
            },
            init_server: { t in
                pnx_sasl_set_desired_state(t, SASL_POSTED_MECHANISMS)
                return true
            },
            init_client: { _ in true },
            prepare_write: { _ in },
            process_init: { t, mechanism, _ in
                let chosen = mechanism.map { String(cString: $0) } ?? ""
                let offered = connectionContext(t)?.listener?.configuration.saslMechanisms ?? []
                if offered.contains(chosen) {
                    connectionContext(t)?.saslMechanism = chosen
                    pnx_sasl_set_succeeded(t, "anonymous", nil)
                } else {
                    pnx_sasl_set_failed(t)
                }
                pnx_sasl_set_desired_state(t, SASL_POSTED_OUTCOME)
            },
            process_response: { _, _ in },
            process_mechanisms: { t, mechs in
                let offered = mechs.map { String(cString: $0) } ?? ""
                guard offered.split(separator: " ").contains("MSSBCBS") else { return false }
                pnx_sasl_set_selected_mechanism(t, "MSSBCBS")
                pnx_sasl_set_bytes_out(t, pn_bytes(0, nil))
                pnx_sasl_set_desired_state(t, SASL_POSTED_INIT)
                return true
            },
            process_challenge: { _, _ in },
            process_outcome: { _, _ in },
            can_encrypt: { _ in false },
            max_encrypt_size: { _ in 0 },
            encode: { _, _, _ in 0 },
            decode: { _, _, _ in 0 }
        ))
        return p
    }()

    private static func connectionContext(_ t: OpaquePointer?) -> ConnectionContext? {
        guard let raw = pnx_sasl_get_context(t) else { return nil }
        // Unretained: the reactor keeps the context alive until PN_TRANSPORT_CLOSED, after any SASL exchange.
        return Unmanaged<ConnectionContext>.fromOpaque(raw).takeUnretainedValue()
    }
}
