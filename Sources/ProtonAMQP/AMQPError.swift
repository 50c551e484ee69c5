/// The one error type of ProtonAMQP.
public struct AMQPError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        enum Value: Hashable, Sendable { case decode, transport, remoteClosed, tls, configuration, closed, timeout }
        let value: Value
        public static let decode = Code(value: .decode)
        public static let transport = Code(value: .transport)
        public static let remoteClosed = Code(value: .remoteClosed)
        public static let tls = Code(value: .tls)
        public static let configuration = Code(value: .configuration)
        public static let closed = Code(value: .closed)
        public static let timeout = Code(value: .timeout)
        public var description: String { "\(value)" }
    }

    public var code: Code
    public var message: String
    /// The AMQP error condition (e.g. `amqp:unauthorized-access`), if the peer sent one.
    public var condition: String?

    public init(_ code: Code, _ message: String, condition: String? = nil) {
        self.code = code
        self.message = message
        self.condition = condition
    }

    /// Transport-level problems (a dropped socket, a timeout) are worth retrying; bad configuration and decode
    /// errors are not.
    public var isRetriable: Bool {
        switch code.value {
        case .transport, .remoteClosed, .timeout, .closed: return true
        case .decode, .tls, .configuration: return false
        }
    }

    public var description: String {
        condition.map { "\(message) [\($0)]" } ?? message
    }
}

/// An AMQP error condition as carried by detach, close and rejected outcomes.
public struct AMQPCondition: Sendable, Equatable {
    public var name: String
    public var description: String
    public var info: [AMQPValue: AMQPValue]

    public init(name: String, description: String = "", info: [AMQPValue: AMQPValue] = [:]) {
        self.name = name
        self.description = description
        self.info = info
    }
}
