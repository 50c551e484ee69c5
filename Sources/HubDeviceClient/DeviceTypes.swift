import FieldgateCore
import IoTHub
import ProtonAMQP

/// A link the device client can attach. Names are unique per connection: `<role>-<device>`.
public enum LinkSpec: Sendable {
    case telemetry(String)
    case cloudToDevice(String, credit: Int)
    case methodRequests(String, channel: String, apiVersion: String?)
    case methodResponses(String, channel: String, apiVersion: String?)
    case twinRequests(String, channel: String, apiVersion: String?)
    case twinResponses(String, channel: String, apiVersion: String?)
    /// Anything else (negative tests): our role, address, properties.
    case custom(name: String, sender: Bool, address: String, properties: [AMQPValue: AMQPValue], credit: Int)

    public var name: String {
        switch self {
        case .telemetry(let d): "telemetry-\(d)"
        case .cloudToDevice(let d, _): "c2d-\(d)"
        case .methodRequests(let d, _, _): "methods-rx-\(d)"
        case .methodResponses(let d, _, _): "methods-tx-\(d)"
        case .twinRequests(let d, _, _): "twin-tx-\(d)"
        case .twinResponses(let d, _, _): "twin-rx-\(d)"
        case .custom(let name, _, _, _, _): name
        }
    }

    var deviceId: String? {
        switch self {
        case .telemetry(let d), .cloudToDevice(let d, _), .methodRequests(let d, _, _), .methodResponses(let d, _, _),
             .twinRequests(let d, _, _), .twinResponses(let d, _, _): d
        case .custom: nil
        }
    }

    /// (we send?, address, properties, credit)
    var shape: (sender: Bool, address: String, properties: [AMQPValue: AMQPValue], credit: Int) {
        func props(_ channel: String, _ api: String?) -> [AMQPValue: AMQPValue] {
            var p: [AMQPValue: AMQPValue] = [.symbol(IoTHubAMQP.channelCorrelationIDProperty): .string(channel)]
            if let api { p[.symbol(IoTHubAMQP.apiVersionProperty)] = .string(api) }
            return p
        }
        let client: [AMQPValue: AMQPValue] = [.symbol(IoTHubAMQP.clientVersionProperty): "fieldgate-hub-testdevice/0.1"]
        switch self {
        case .telemetry(let d):
            return (true, DeviceAddress(deviceID: d, endpoint: .events).canonical, client, 0)
        case .cloudToDevice(let d, let credit):
            return (false, DeviceAddress(deviceID: d, endpoint: .deviceBound).canonical, client, credit)
        case .methodRequests(let d, let c, let a):
            return (false, DeviceAddress(deviceID: d, endpoint: .methods).canonical, props(c, a), 10)
        case .methodResponses(let d, let c, let a):
            return (true, DeviceAddress(deviceID: d, endpoint: .methods).canonical, props(c, a), 0)
        case .twinRequests(let d, let c, let a):
            return (true, DeviceAddress(deviceID: d, endpoint: .twin).canonical, props(c, a), 0)
        case .twinResponses(let d, let c, let a):
            return (false, DeviceAddress(deviceID: d, endpoint: .twin).canonical, props(c, a), 10)
        case .custom(_, let sender, let address, let properties, let credit):
            return (sender, address, properties, credit)
        }
    }
}

/// What the hub pushed to the device client.
public enum DeviceEvent: Sendable {
    case cloudToDevice(ReceivedCloudToDevice)
    case methodRequest(MethodRequest)
    case desiredUpdate(deviceId: String, patch: JSONValue, version: Int64?)
    case linkDetached(name: String, condition: AMQPCondition?)
    case connectionClosed(AMQPError?)
}

public struct ReceivedCloudToDevice: Sendable {
    public var deviceId: String
    public var message: AMQPMessage
    /// The delivery tag (the hub's lock token).
    public var lockToken: [UInt8]
    let token: Int
}

public struct MethodRequest: Sendable {
    public var deviceId: String
    public var requestID: AMQPUUID
    public var name: String
    public var payload: JSONValue
}

public struct TwinResponse: Sendable {
    public var status: Int
    public var version: Int64?
    public var body: JSONValue?
}
