import FrameCodecs

/// One serial port and the leaves it carries. Owned by the SerialAdapter module; the daemon's config maps onto it.
public struct SerialPortConfiguration: Sendable, Equatable {
    public enum Parity: String, Sendable { case none, even, odd }
    public enum FlowControl: String, Sendable { case none, rtscts, xonxoff }

    public var path: String
    public var baud = 9600
    public var parity: Parity = .none
    public var dataBits = 8
    public var stopBits = 1
    public var flowControl: FlowControl = .none
    public var framing: Framing = .lines()
    public var format: FrameFormat = .json(idField: nil)
    /// The leaf of every frame (one leaf per port); nil = the frame's id field names it, among `leaves`.
    public var leaf: String?
    /// Leaves an id field may name on this port (a frame naming any other is rejected).
    public var leaves: [String] = []
    /// A command that waits for an answer takes the first frame matching this pattern within the timeout
    /// (instead of treating it as a reading). nil = commands complete once written.
    public var replyPattern: String?
    public var replyTimeoutMilliseconds: Int64 = 2000
    /// Reopen attempts after the device disappears, this far apart (ms). Default: 1000.
    public var reopenIntervalMilliseconds: Int64 = 1000

    public init(path: String) { self.path = path }

    /// Every leaf this port may speak for.
    public var allLeaves: [String] { leaf.map { [$0] } ?? leaves }
}
