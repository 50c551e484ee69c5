import HubTestSupport
import FieldgateCore
import HubDeviceClient
import HubEmulator
import IoTHub
import ProtonAMQP
import Testing

func c2dEvent(_ c: DeviceConnection, seconds: Double = 10) async throws -> ReceivedCloudToDevice {
    let e = try await nextEvent(c, seconds: seconds) { if case .cloudToDevice = $0 { true } else { false } }
    guard case .cloudToDevice(let m) = e else { throw HubError(.internalError, "not a C2D event") }
    return m
}

func feedback(_ hub: TestHub, waitMilliseconds: Int = 5000) async throws -> [FeedbackRecord] {
    await withCheckedContinuation { cont in
        hub.core.reactor.execute { [core = hub.core] in core.readFeedback(waitMilliseconds: waitMilliseconds) { cont.resume(returning: $0) } }
    }
}

@Suite("cloud-to-device", .serialized, .timeLimit(.minutes(2)))
struct CloudToDeviceTests {
    @Test("seed 000: C2D with ack=full, messageId 'My Message ID', the device completes → one Success feedback record")
    func seed000() async throws {
        try await withHub { hub in
            let device = try await hub.createDevice("myFirstNodeDevice")
            let c = try await hub.connectDevice("myFirstNodeDevice", tls: true)
            try await c.attachCloudToDevice(deviceId: "myFirstNodeDevice")
            _ = try await hub.core.perform { core in
                try core.sendCloudToDevice("myFirstNodeDevice", message: CloudToDeviceMessage(
                    messageId: "My Message ID", body: Array("Cloud to device message.".utf8), ack: .full), ttlMilliseconds: nil)
            }
            let m = try await c2dEvent(c)
            #expect(m.message.messageID == .string("My Message ID"))
            #expect(m.message.body.bytes == Array("Cloud to device message.".utf8))
            #expect(m.lockToken.count == 16)
            #expect(m.message.to == "/devices/myFirstNodeDevice/messages/deviceBound")
            #expect(m.message.applicationProperties[IoTHubAMQP.ackProperty] == .string("full"))
            #expect(m.message.messageAnnotations[.symbol(IoTHubAMQP.deliveryCountAnnotation)] == .ubyte(0))
            if case .ulong? = m.message.messageAnnotations[.symbol(IoTHubAMQP.sequenceNumberAnnotation)] {} else { Issue.record("x-opt-sequence-number is not a ulong") }
            if case .timestamp? = m.message.messageAnnotations[.symbol(IoTHubAMQP.enqueuedTimeAnnotation)] {} else { Issue.record("iothub-enqueuedtime is not a timestamp") }
            c.settle(m, .accepted)
            let records = try await feedback(hub)
            #expect(records.count == 1)
            #expect(records.first?.originalMessageId == "My Message ID")
            #expect(records.first?.statusCode == "Success")
            #expect(records.first?.deviceId == "myFirstNodeDevice")
            #expect(records.first?.deviceGenerationId == device.generationId)
            c.close()
        }
    }

    @Test("seeds 001/002: message-id, correlation-id, content-type and application properties arrive intact")
    func seeds001and002() async throws {
        try await withHub { hub in
            try await hub.createDevice("MyDevice")
            let c = try await hub.connectDevice("MyDevice")
            try await c.attachCloudToDevice(deviceId: "MyDevice")
            for i in 0..<2 {
                _ = try await hub.core.perform { core in
                    try core.sendCloudToDevice("MyDevice", message: CloudToDeviceMessage(
                        messageId: "message_\(i)", correlationId: "correlation_\(i)",
                        body: Array(#"{"service client sent a message": 12.40}"#.utf8),
                        properties: ["testProperty": "PropMsg_\(i)"], contentType: "application/json"), ttlMilliseconds: nil)
                }
            }
            for i in 0..<2 {
                let m = try await c2dEvent(c)
                #expect(m.message.messageID == .string("message_\(i)"))
                #expect(m.message.correlationID == .string("correlation_\(i)"))
                #expect(m.message.contentType == "application/json")
                #expect(m.message.applicationProperties["testProperty"] == .string("PropMsg_\(i)"))
                #expect(m.message.body.bytes.count == 40)
                c.settle(m, .accepted)
            }
            #expect(try await feedback(hub, waitMilliseconds: 0).isEmpty)  // no ack requested
            c.close()
        }
    }

    @Test("a device queue holds 50 messages; the 51st is refused; 64 KB at most")
    func queueLimits() async throws {
        try await withHub { hub in
            try await hub.createDevice("dev1")
            for i in 0..<50 {
                _ = try await hub.core.perform { try $0.sendCloudToDevice("dev1", message: CloudToDeviceMessage(messageId: "m\(i)", body: [1]), ttlMilliseconds: nil) }
            }
            await #expect(throws: HubError.self) {
                _ = try await hub.core.perform { try $0.sendCloudToDevice("dev1", message: CloudToDeviceMessage(messageId: "m50", body: [1]), ttlMilliseconds: nil) }
            }
            _ = try await hub.core.perform { try $0.purgeCloudToDevice("dev1") }
            await #expect(throws: HubError.self) {
                _ = try await hub.core.perform { try $0.sendCloudToDevice("dev1", message: CloudToDeviceMessage(messageId: "big", body: [UInt8](repeating: 0, count: 65_537)), ttlMilliseconds: nil) }
            }
        }
    }

    @Test("reject → Rejected feedback; abandon → redelivery with the delivery count up; lock expiry → redelivery")
    func dispositions() async throws {
        try await withHub(configure: { $0.hub.cloudToDevice.lockMilliseconds = 1000 }) { hub in
            try await hub.createDevice("dev1")
            let c = try await hub.connectDevice("dev1")
            try await c.attachCloudToDevice(deviceId: "dev1")
            _ = try await hub.core.perform { try $0.sendCloudToDevice("dev1", message: CloudToDeviceMessage(messageId: "r", body: [1], ack: .negative), ttlMilliseconds: nil) }
            c.settle(try await c2dEvent(c), .rejected(nil))
            #expect(try await feedback(hub).map(\.statusCode) == ["Rejected"])

            _ = try await hub.core.perform { try $0.sendCloudToDevice("dev1", message: CloudToDeviceMessage(messageId: "a", body: [2], ack: .full), ttlMilliseconds: nil) }
            let first = try await c2dEvent(c)
            c.settle(first, .released)
            let second = try await c2dEvent(c)
            #expect(second.message.messageID == .string("a"))
            #expect(second.message.messageAnnotations[.symbol(IoTHubAMQP.deliveryCountAnnotation)] == .ubyte(1))
            // Hold the lock: it expires after 1 s and the message comes back.
            let third = try await c2dEvent(c, seconds: 5)
            #expect(third.message.messageID == .string("a"))
            #expect(third.message.messageAnnotations[.symbol(IoTHubAMQP.deliveryCountAnnotation)] == .ubyte(2))
            c.settle(second, .accepted)  // too late: the lock is lost, nothing happens
            c.settle(third, .accepted)
            #expect(try await feedback(hub).map(\.statusCode) == ["Success"])
            c.close()
        }
    }

    @Test("after maxDeliveryCount (10) abandons the message is dead-lettered with DeliveryCountExceeded feedback")
    func maxDeliveries() async throws {
        try await withHub { hub in
            try await hub.createDevice("dev1")
            let c = try await hub.connectDevice("dev1")
            try await c.attachCloudToDevice(deviceId: "dev1")
            _ = try await hub.core.perform { try $0.sendCloudToDevice("dev1", message: CloudToDeviceMessage(messageId: "x", body: [1], ack: .negative), ttlMilliseconds: nil) }
            for _ in 0..<10 { c.settle(try await c2dEvent(c), .released) }
            #expect(try await feedback(hub).map(\.statusCode) == ["DeliveryCountExceeded"])
            await #expect(throws: AMQPError.self) { _ = try await c2dEvent(c, seconds: 1) }
            c.close()
        }
    }

    @Test("TTL expiry dead-letters an undelivered message with Expired feedback")
    func ttlExpiry() async throws {
        try await withHub(configure: { $0.hub.cloudToDevice.defaultTTLMilliseconds = 500 }) { hub in
            try await hub.createDevice("dev1")
            _ = try await hub.core.perform { try $0.sendCloudToDevice("dev1", message: CloudToDeviceMessage(messageId: "old", body: [1], ack: .full), ttlMilliseconds: nil) }
            let records = try await feedback(hub, waitMilliseconds: 3000)
            #expect(records.map(\.statusCode) == ["Expired"])
            #expect(records.first?.originalMessageId == "old")
        }
    }
}
