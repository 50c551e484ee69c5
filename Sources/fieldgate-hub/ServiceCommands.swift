import ArgumentParser
import FieldgateCore
import HubServiceClient
import IoTHub

#if canImport(Glibc)
import Glibc
#endif

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

struct Device: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage device identities.",
        subcommands: [Create.self, List.self, Show.self, Disable.self, Enable.self, Delete.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a device and print its connection string.")
        @OptionGroup var service: ServiceOptions
        @Argument(help: "Device id.") var deviceId: String
        @Option(help: "Primary key (base64). Default: generated.") var primaryKey: String?
        @Option(help: "Secondary key (base64). Default: generated.") var secondaryKey: String?
        @Flag(help: "Create it disabled.") var disabled = false
        @Option(help: "Host name for the printed connection string.") var hostName = "localhost"
        @Option(help: "An X.509 device authenticated by its certificate's thumbprint (SHA-1 or SHA-256 hex; `certs device` prints them).")
        var x509Thumbprint: String?
        @Option(help: "The secondary thumbprint (for a certificate rollover).") var x509SecondaryThumbprint: String?
        @Flag(help: "An X.509 device whose certificate chains to a verified CA certificate of the hub (`ca add`), CN = the device id.")
        var x509Ca = false

        func run() async throws {
            if x509Thumbprint != nil || x509Ca {
                var auth: [String: JSONValue] = ["type": .string(x509Ca ? "certificateAuthority" : "selfSigned")]
                if let x509Thumbprint {
                    var t: [String: JSONValue] = ["primaryThumbprint": .string(x509Thumbprint)]
                    if let x509SecondaryThumbprint { t["secondaryThumbprint"] = .string(x509SecondaryThumbprint) }
                    auth["x509Thumbprint"] = .object(t)
                }
                let body: JSONValue = ["status": .string(disabled ? "disabled" : "enabled"), "authentication": .object(auth)]
                printJSON(try await service.call("PUT", "/devices/\(pathComponent(deviceId))?create=true", body: body))
                return
            }
            var auth: [String: JSONValue] = [:]
            if let primaryKey { auth["primaryKey"] = .string(primaryKey) }
            if let secondaryKey { auth["secondaryKey"] = .string(secondaryKey) }
            let body: JSONValue = ["status": .string(disabled ? "disabled" : "enabled"),
                                   "authentication": ["symmetricKey": .object(auth)]]
            let device = try await service.call("PUT", "/devices/\(pathComponent(deviceId))?create=true", body: body)
            let key = device["authentication"]?["symmetricKey"]?["primaryKey"]?.stringValue ?? ""
            print(ConnectionString(hostName: hostName, deviceID: deviceId, sharedAccessKey: key).description)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List devices.")
        @OptionGroup var service: ServiceOptions
        func run() async throws { printJSON(try await service.call("GET", "/devices")) }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one device, or its connection string.")
        @OptionGroup var service: ServiceOptions
        @Argument(help: "Device id.") var deviceId: String
        @Flag(help: "Print only the device connection string.") var connectionStringOnly = false
        @Option(help: "Host name for the connection string.") var hostName = "localhost"
        func run() async throws {
            let d = try await service.call("GET", "/devices/\(pathComponent(deviceId))")
            if connectionStringOnly {
                print(ConnectionString(hostName: hostName, deviceID: deviceId, sharedAccessKey: d["authentication"]?["symmetricKey"]?["primaryKey"]?.stringValue ?? "").description)
            } else {
                printJSON(d)
            }
        }
    }

    struct Disable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Disable a device (its links are detached at once).")
        @OptionGroup var service: ServiceOptions
        @Argument(help: "Device id.") var deviceId: String
        func run() async throws {
            // The answer holds the device's keys: say what changed, not the keys (`device show` prints them).
            let d = try await service.call("PUT", "/devices/\(pathComponent(deviceId))", body: ["status": "disabled"])
            print("\(deviceId): \(d["status"]?.stringValue ?? "disabled")")
        }
    }

    struct Enable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Enable a device.")
        @OptionGroup var service: ServiceOptions
        @Argument(help: "Device id.") var deviceId: String
        func run() async throws {
            let d = try await service.call("PUT", "/devices/\(pathComponent(deviceId))", body: ["status": "enabled"])
            print("\(deviceId): \(d["status"]?.stringValue ?? "enabled")")
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a device.")
        @OptionGroup var service: ServiceOptions
        @Argument(help: "Device id.") var deviceId: String
        func run() async throws {
            _ = try await service.call("DELETE", "/devices/\(pathComponent(deviceId))")
            print("deleted \(deviceId)")
        }
    }
}

struct CloudToDevice: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "c2d", abstract: "Cloud-to-device messages.", subcommands: [Send.self, Purge.self])

    struct Send: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Send a C2D message to a device.")
        @OptionGroup var service: ServiceOptions
        @Argument(help: "Device id.") var deviceId: String
        @Argument(help: "Message body (text).") var body: String
        @Option(help: "message-id. Default: generated.") var messageId: String?
        @Option(help: "correlation-id.") var correlationId: String?
        @Option(help: "content-type, e.g. application/json.") var contentType: String?
        @Option(help: "content-encoding, e.g. utf-8.") var contentEncoding: String?
        @Option(name: .customLong("property"), help: "Application property key=value (repeatable).") var properties: [String] = []
        @Option(help: "Feedback wanted: none, positive, negative, full.") var ack = "none"
        @Option(help: "Time to live in seconds (60…172800). Default: the hub's 3600.") var ttl: Int?

        func run() async throws {
            var props: [String: JSONValue] = [:]
            for p in properties {
                guard let eq = p.firstIndex(of: "=") else { throw CLIError("--property must be key=value, got '\(p)'") }
                props[String(p[..<eq])] = .string(String(p[p.index(after: eq)...]))
            }
            var body: [String: JSONValue] = ["body": .string(self.body), "ack": .string(ack), "properties": .object(props)]
            if let messageId { body["messageId"] = .string(messageId) }
            if let correlationId { body["correlationId"] = .string(correlationId) }
            if let contentType { body["contentType"] = .string(contentType) }
            if let contentEncoding { body["contentEncoding"] = .string(contentEncoding) }
            if let ttl { body["ttlSeconds"] = .int(Int64(ttl)) }
            printJSON(try await service.call("POST", "/devices/\(pathComponent(deviceId))/messages/deviceBound", body: .object(body)))
        }
    }

    struct Purge: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Purge a device's C2D queue.")
        @OptionGroup var service: ServiceOptions
        @Argument(help: "Device id.") var deviceId: String
        func run() async throws { printJSON(try await service.call("DELETE", "/devices/\(pathComponent(deviceId))/commands")) }
    }
}

struct Feedback: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Read C2D feedback records (they are consumed).")
    @OptionGroup var service: ServiceOptions
    @Option(help: "Wait up to this many seconds for feedback to arrive.") var wait = 0
    func run() async throws {
        printJSON(try await service.call("GET", "/messages/serviceBound/feedback?wait=\(wait * 1000)"))
    }
}

struct MonitorEvents: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print device-to-cloud events as JSON lines, as they arrive.")
    @OptionGroup var service: ServiceOptions
    @Option(help: "Only this device's events.") var device: String?
    @Option(help: "Stop after this many events.") var count: Int?
    @Option(help: "Stop after this many seconds.") var timeout: Int?
    @Flag(help: "Start from the oldest kept event instead of new ones.") var fromStart = false

    func run() async throws {
        var from: Int64? = fromStart ? 1 : nil
        var printed = 0
        let deadline = timeout.map { ContinuousClock.now + .seconds($0) }
        while count.map({ printed < $0 }) ?? true {
            if let deadline, ContinuousClock.now >= deadline { break }
            let query = from.map { "from=\($0)&" } ?? ""
            let page = try await service.call("GET", "/events?\(query)wait=5000")
            if let next = page["next"]?.intValue, next > 0 { from = next }
            guard case .array(let events)? = page["events"] else { continue }
            if from == nil, let last = events.last?["sequenceNumber"]?.intValue { from = last + 1 }
            for e in events where device == nil || e["deviceId"]?.stringValue == device {
                print(e.serialized)
                printed += 1
                if let count, printed >= count { return }
            }
        }
    }
}

struct Method: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Direct methods.", subcommands: [Invoke.self])

    struct Invoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Invoke a direct method and print {status, payload}.")
        @OptionGroup var service: ServiceOptions
        @Argument(help: "Device id.") var deviceId: String
        @Argument(help: "Method name.") var methodName: String
        @Option(help: "JSON payload.") var payload = "null"
        @Option(help: "Response timeout in seconds (5…300).") var timeout = 30

        func run() async throws {
            let body: JSONValue = ["methodName": .string(methodName), "payload": try parseJSONArgument(payload, "--payload"),
                                   "responseTimeoutInSeconds": .int(Int64(timeout))]
            printJSON(try await service.call("POST", "/twins/\(pathComponent(deviceId))/methods", body: body))
        }
    }
}

struct Twin: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Device twins.", subcommands: [Show.self, Patch.self])

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a device twin.")
        @OptionGroup var service: ServiceOptions
        @Argument(help: "Device id.") var deviceId: String
        func run() async throws { printJSON(try await service.call("GET", "/twins/\(pathComponent(deviceId))")) }
    }

    struct Patch: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Patch desired properties and/or tags.")
        @OptionGroup var service: ServiceOptions
        @Argument(help: "Device id.") var deviceId: String
        @Option(help: "Desired properties patch (JSON object).") var desired: String?
        @Option(help: "Tags patch (JSON object).") var tags: String?

        func run() async throws {
            guard desired != nil || tags != nil else { throw CLIError("give --desired and/or --tags") }
            var patch: [String: JSONValue] = [:]
            if let desired { patch["properties"] = ["desired": try parseJSONArgument(desired, "--desired")] }
            if let tags { patch["tags"] = try parseJSONArgument(tags, "--tags") }
            printJSON(try await service.call("PATCH", "/twins/\(pathComponent(deviceId))", body: .object(patch)))
        }
    }
}

struct Fault: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Inject faults.",
        subcommands: [Throttle.self, QuotaExceeded.self, ExpireTokens.self, DropConnections.self, RefuseConnections.self, Device.Disable.self])

    struct QuotaExceeded: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "quota-exceeded",
            abstract: "Spend the hub's daily message quota: telemetry is refused (403002) until 00:00 UTC, or --reset (that midnight's reset, now).")
        @OptionGroup var service: ServiceOptions
        @Flag(help: "Reset the quota instead.") var reset = false
        func run() async throws {
            printJSON(try await service.call("POST", "/faults/quota-exceeded", body: ["reset": .bool(reset)]))
        }
    }

    struct Throttle: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Reject a device's telemetry as throttled for a while.")
        @OptionGroup var service: ServiceOptions
        @Argument(help: "Device id.") var deviceId: String
        @Option(help: "Seconds.") var seconds = 60
        func run() async throws {
            printJSON(try await service.call("POST", "/faults/throttle", body: ["deviceId": .string(deviceId), "seconds": .int(Int64(seconds))]))
        }
    }

    struct ExpireTokens: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Expire CBS tokens now (one device's, or all).")
        @OptionGroup var service: ServiceOptions
        @Option(help: "Only this device's tokens.") var device: String?
        func run() async throws {
            printJSON(try await service.call("POST", "/faults/expire-tokens", body: device.map { ["deviceId": .string($0)] } ?? [:]))
        }
    }

    struct DropConnections: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Drop every device connection at the socket.")
        @OptionGroup var service: ServiceOptions
        func run() async throws { printJSON(try await service.call("POST", "/faults/drop-connections")) }
    }

    struct RefuseConnections: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Refuse AMQP connections for a while (listeners closed).")
        @OptionGroup var service: ServiceOptions
        @Option(help: "Seconds.") var seconds = 10
        func run() async throws {
            printJSON(try await service.call("POST", "/faults/refuse-connections", body: ["seconds": .int(Int64(seconds))]))
        }
    }

}

struct Files: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Files devices uploaded (IoT Hub file upload) into the hub's blob store, and the upload notifications.",
        subcommands: [List.self, Get.self, Notifications.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the stored blobs: name ({device}/{file}), size, last modified.")
        @OptionGroup var service: ServiceOptions
        @Option(help: "Only blobs whose name starts so (e.g. a device id and /).") var prefix = ""
        func run() async throws { printJSON(try await service.call("GET", "/files?prefix=\(PercentEncoding.encode(prefix))")) }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write a blob's bytes to a file (or standard output).")
        @OptionGroup var service: ServiceOptions
        @Argument(help: "The blob's name, as `files list` shows it.") var name: String
        @Option(name: .shortAndLong, help: "Write here instead of standard output.") var output: String?
        func run() async throws {
            let response: HubServiceClient.Response
            do { response = try await service.client().request("GET", "/files/content?name=\(PercentEncoding.encode(name))") } catch let e as CLIError { throw e } catch {
                throw CLIError("cannot reach the hub's service API at \(service.url): \(error)")
            }
            guard response.status == 200 else { throw CLIError("no blob \(name) (HTTP \(response.status)): \(response.text)") }
            if let output {
                guard FileManager.default.createFile(atPath: output, contents: Data(response.body)) else { throw CLIError("cannot write \(output)") }
            } else {
                var written = 0
                while written < response.body.count {
                    let n = response.body[written...].withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
                    guard n > 0 else { throw CLIError("cannot write to standard output") }
                    written += n
                }
            }
        }
    }

    struct Notifications: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Read file-upload notifications (they are consumed), as the service side's filenotifications endpoint.")
        @OptionGroup var service: ServiceOptions
        @Option(help: "Wait up to this many seconds for one to arrive.") var wait = 0
        func run() async throws { printJSON(try await service.call("GET", "/messages/serviceBound/filenotifications?wait=\(wait * 1000)")) }
    }
}
