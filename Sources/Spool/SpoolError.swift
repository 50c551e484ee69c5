/// The one error type of the Spool module.
public struct SpoolError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        enum Value: Hashable, Sendable { case io, locked, full, tooLarge, readOnly, closed }
        let value: Value
        public static let io = Code(value: .io)
        /// Another process holds the spool.
        public static let locked = Code(value: .locked)
        /// The cap is reached and the policy is reject-new: back-pressure, retry later.
        public static let full = Code(value: .full)
        public static let tooLarge = Code(value: .tooLarge)
        public static let readOnly = Code(value: .readOnly)
        public static let closed = Code(value: .closed)
        public var description: String { "\(value)" }
    }

    public var code: Code
    public var message: String
    /// errno of the failed call, if any.
    public var errno: Int32?

    public init(_ code: Code, _ message: String, errno: Int32? = nil) {
        self.code = code
        self.message = message
        self.errno = errno
    }

    /// `full` clears when the uplink drains; I/O errors (ENOSPC, EIO) may clear when space returns.
    public var isRetriable: Bool { code == .full || code == .io || code == .locked }
    public var description: String { errno.map { "\(message) (errno \($0))" } ?? message }
}
