internal import CProton

/// Hands a connection's AMQP frames, as Proton traces them (`<- @disposition(21) [...]`, `-> @transfer(20) [...]`),
/// to a closure on the reactor thread. For tests that check what goes on the wire and in which order; the
/// closure must not block.
final class FrameTracer {
    let trace: @Sendable (String) -> Void

    private init(_ trace: @escaping @Sendable (String) -> Void) { self.trace = trace }

    /// The log sink of traced transports; its context is the retained tracer.
    private static let sink: pn_log_sink_t = { context, _, _, message in
        guard let message, let pointer = UnsafeRawPointer(bitPattern: context) else { return }
        Unmanaged<FrameTracer>.fromOpaque(pointer).takeUnretainedValue().trace(String(cString: message))
    }

    /// Starts tracing `transport`. The tracer stays alive until `stop` (at PN_TRANSPORT_CLOSED).
    static func start(on transport: OpaquePointer, _ trace: @escaping @Sendable (String) -> Void) {
        let logger = pn_transport_logger(transport)
        let context = Int(bitPattern: Unmanaged.passRetained(FrameTracer(trace)).toOpaque())
        pn_logger_set_log_sink(logger, sink, context)
        pn_logger_set_mask(logger, UInt16(PN_SUBSYSTEM_AMQP.rawValue), UInt16(PN_LEVEL_FRAME.rawValue))
    }

    /// Stops tracing `transport` and frees its tracer, if it had one (its sink is ours; any other is left alone).
    static func stop(on transport: OpaquePointer) {
        let logger = pn_transport_logger(transport)
        guard let current = pn_logger_get_log_sink(logger),
              unsafeBitCast(current, to: UnsafeRawPointer.self) == unsafeBitCast(sink, to: UnsafeRawPointer.self),
              let pointer = UnsafeRawPointer(bitPattern: pn_logger_get_log_sink_context(logger)) else { return }
        pn_logger_reset_mask(logger, UInt16(PN_SUBSYSTEM_ALL.rawValue), UInt16(PN_LEVEL_ALL.rawValue))
        let fallback = pn_default_logger()
        pn_logger_set_log_sink(logger, pn_logger_get_log_sink(fallback), pn_logger_get_log_sink_context(fallback))
        Unmanaged<FrameTracer>.fromOpaque(pointer).release()
    }
}
