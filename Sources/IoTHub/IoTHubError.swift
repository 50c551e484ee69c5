/// The one error type of the IoTHub module.
public struct IoTHubError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        enum Value: Hashable, Sendable { case invalidKey, malformedToken, invalidAddress, twinRule, invalidConnectionString }
        let value: Value
        public static let invalidKey = Code(value: .invalidKey)
        public static let malformedToken = Code(value: .malformedToken)
        public static let invalidAddress = Code(value: .invalidAddress)
        public static let twinRule = Code(value: .twinRule)
        public static let invalidConnectionString = Code(value: .invalidConnectionString)
        public var description: String { "\(value)" }
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// None of these get better by retrying: they are bad input.
    public var isRetriable: Bool { false }
    public var description: String { message }
}
