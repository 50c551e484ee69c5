internal import CProton
import FieldgateCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A byte stream Proton has no transport for (AMQP over WebSockets, through a proxy): the stream moves bytes, Proton
/// stays the AMQP engine, fed through `pn_connection_driver`.
///
/// The stream runs on its own thread and calls its sink from there. The reactor calls `write`, `close` and `abort`
/// on its thread; they must not block.
public protocol AMQPByteStream: AnyObject, Sendable {
    /// Begins opening the stream (a client's tunnel and handshake); bytes written before it is open wait.
    func start(_ sink: AMQPByteStreamSink)
    func write(_ bytes: [UInt8])
    /// Ends the stream after what was written has gone out.
    func close()
    /// Ends the stream now.
    func abort()
}

/// Where a stream delivers what happens to it; callable from any thread.
public struct AMQPByteStreamSink: Sendable {
    public let received: @Sendable ([UInt8]) -> Void
    /// The stream ended; nil when it ended cleanly.
    public let ended: @Sendable (AMQPError?) -> Void

    public init(received: @escaping @Sendable ([UInt8]) -> Void, ended: @escaping @Sendable (AMQPError?) -> Void) {
        self.received = received
        self.ended = ended
    }
}

/// One AMQP connection over an `AMQPByteStream`, driven by `pn_connection_driver` on the reactor thread.
final class StreamDriver: @unchecked Sendable {
    // @unchecked: everything but `stream` (itself Sendable) is touched only on the reactor thread.
    let driver: UnsafeMutablePointer<pn_connection_driver_t>
    let context: ConnectionContext
    let stream: any AMQPByteStream
    unowned let reactor: AMQPReactor
    /// Received bytes Proton has not taken yet: `pendingInput[inputOffset...]`.
    private var pendingInput: [UInt8] = []
    private var inputOffset = 0
    private var tickTimer: AMQPTimer?
    private var tickDeadline: Int64 = 0
    private var abortTimer: AMQPTimer?
    private(set) var isDone = false

    /// How long a connection we closed may wait for the peer's Close before the stream is cut.
    static let closeGraceMilliseconds = 5_000

    init(reactor: AMQPReactor, context: ConnectionContext, stream: any AMQPByteStream, connection: OpaquePointer, transport: OpaquePointer) {
        self.reactor = reactor
        self.context = context
        self.stream = stream
        driver = .allocate(capacity: 1)
        driver.initialize(to: pn_connection_driver_t())
        pn_connection_driver_init(driver, connection, transport)
    }

    var connection: OpaquePointer { driver.pointee.connection }
    var transport: OpaquePointer { driver.pointee.transport }

    /// Binds the transport and starts the stream; its events come back on the reactor thread.
    func start() {
        pn_connection_driver_bind(driver)
        let weakSelf = WeakDriver(self)
        stream.start(AMQPByteStreamSink(
            received: { [reactor] bytes in
                reactor.execute { weakSelf.driver?.received(bytes) }
            },
            ended: { [reactor] error in
                reactor.execute { weakSelf.driver?.streamEnded(error) }
            }))
        process()
    }

    func wake() {
        let weakSelf = WeakDriver(self)
        reactor.execute { weakSelf.driver?.runJobs() }
    }

    private func runJobs() {
        guard !isDone else { return }
        let connection = AMQPConnection(raw: self.connection, context: context)
        for job in context.takeJobs() { job(connection) }
        process()
    }

    private func received(_ bytes: [UInt8]) {
        guard !isDone else { return }
        if inputOffset == pendingInput.count { pendingInput = bytes; inputOffset = 0 } else { pendingInput += bytes }
        process()
    }

    /// The stream is gone: Proton hears it as a transport error (or a clean end of input) and closes down.
    func streamEnded(_ error: AMQPError?) {
        guard !isDone else { return }
        if let error {
            let condition = pn_transport_condition(transport)
            if !pn_condition_is_set(condition) {
                pn_condition_set_name(condition, error.code == .tls ? "amqp:tls-error" : "proton:io")
                pn_condition_set_description(condition, error.message)
            }
        }
        pendingInput = []
        inputOffset = 0
        pn_connection_driver_close(driver)
        process()
    }

    /// Cuts the stream at once (reactor shutdown).
    func abort() {
        guard !isDone else { return }
        stream.abort()
        streamEnded(AMQPError(.closed, "the AMQP reactor shut down"))
    }

    /// Feeds input, dispatches events, hands output to the stream and arms the heartbeat timer, until nothing
    /// moves.
    private func process() {
        guard !isDone else { return }
        let connection = AMQPConnection(raw: self.connection, context: context)
        while true {
            var fed = false
            if inputOffset < pendingInput.count {
                if pn_connection_driver_read_closed(driver) {
                    pendingInput = []
                    inputOffset = 0
                } else {
                    let buffer = pn_connection_driver_read_buffer(driver)
                    let n = min(buffer.size, pendingInput.count - inputOffset)
                    if n > 0 {
                        pendingInput.withUnsafeBytes { src in
                            UnsafeMutableRawPointer(buffer.start!).copyMemory(from: src.baseAddress! + inputOffset, byteCount: n)
                        }
                        inputOffset += n
                        if inputOffset == pendingInput.count {
                            pendingInput.removeAll(keepingCapacity: true)
                            inputOffset = 0
                        }
                        pn_connection_driver_read_done(driver, n)
                        fed = true
                    }
                }
            }
            while let event = pn_connection_driver_next_event(driver) {
                let type = pn_event_type(event)
                if type == PN_CONNECTION_LOCAL_CLOSE { armAbortTimer() }
                reactor.handleConnectionEvent(type, event, connection: connection)
                if isDone { return }
            }
            flushOutput()
            if pn_connection_driver_finished(driver) {
                finish()
                return
            }
            if !fed || inputOffset == pendingInput.count { break }
        }
        armTick()
    }

    private func flushOutput() {
        while true {
            let out = pn_connection_driver_write_buffer(driver)
            guard out.size > 0, let start = out.start else { return }
            stream.write(Array(UnsafeRawBufferPointer(start: start, count: out.size)))
            pn_connection_driver_write_done(driver, out.size)
        }
    }

    /// Proton's heartbeats and idle timeout run on its tick (which may write a heartbeat or end the connection);
    /// it says when it wants the next one.
    private func armTick() {
        let next = pn_transport_tick(transport, MonotonicClock.milliseconds())
        if pn_connection_driver_has_event(driver) {
            let connection = AMQPConnection(raw: self.connection, context: context)
            while let event = pn_connection_driver_next_event(driver) {
                reactor.handleConnectionEvent(pn_event_type(event), event, connection: connection)
            }
        }
        flushOutput()
        if pn_connection_driver_finished(driver) { return finish() }
        guard next != tickDeadline else { return }
        tickTimer?.cancel()
        tickDeadline = next
        guard next > 0 else { tickTimer = nil; return }
        let delay = max(0, next - MonotonicClock.milliseconds())
        tickTimer = reactor.schedule(after: .milliseconds(delay)) { [weak self] in
            guard let self else { return }
            self.tickDeadline = 0
            self.process()
        }
    }

    private func armAbortTimer() {
        guard abortTimer == nil else { return }
        abortTimer = reactor.schedule(after: .milliseconds(Self.closeGraceMilliseconds)) { [weak self] in
            guard let self, !self.isDone else { return }
            self.stream.abort()
            self.streamEnded(AMQPError(.timeout, "the peer did not answer our Close within \(Self.closeGraceMilliseconds / 1000) s"))
        }
    }

    private func finish() {
        isDone = true
        tickTimer?.cancel()
        abortTimer?.cancel()
        stream.close()
        reactor.driverFinished(self)
        pn_connection_driver_destroy(driver)
        driver.deinitialize(count: 1)
        driver.deallocate()
    }
}

/// A driver the stream's callbacks may outlive.
private struct WeakDriver: Sendable {
    weak var driver: StreamDriver?
    init(_ driver: StreamDriver) { self.driver = driver }
}
