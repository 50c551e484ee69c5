/// The one error type of the emulator; codes map onto HTTP statuses of the service API.
public struct HubError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable {
        public let httpStatus: Int
        public static let badRequest = Code(httpStatus: 400)
        public static let unauthorized = Code(httpStatus: 401)
        public static let forbidden = Code(httpStatus: 403)
        public static let notFound = Code(httpStatus: 404)
        public static let conflict = Code(httpStatus: 409)
        public static let preconditionFailed = Code(httpStatus: 412)
        public static let tooLarge = Code(httpStatus: 413)
        public static let throttled = Code(httpStatus: 429)
        public static let internalError = Code(httpStatus: 500)
        public static let gatewayTimeout = Code(httpStatus: 504)
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var isRetriable: Bool { [429, 500, 504].contains(code.httpStatus) }
    public var description: String { message }
}
