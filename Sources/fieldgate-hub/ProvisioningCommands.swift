import ArgumentParser
import FieldgateCore
import HubTunnel
import IoTHub

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The Device Provisioning Service's enrollment management, as the DPS service API (and `az iot dps enrollment`)
/// does it, against `serve --dps-port`.
struct Provisioning: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dps",
        abstract: "Manage the emulated Device Provisioning Service's enrollments and registrations.",
        subcommands: [Group.self, Enrollment.self, Show.self, Delete.self])

    struct Options: ParsableArguments {
        @Option(help: "The DPS's HTTPS base URL (serve --dps-port).")
        var url = ProcessInfo.processInfo.environment["FIELDGATE_DPS_URL"] ?? "https://localhost:8443"
        @Option(help: "The DPS service connection string. Default: <state-dir>/dps-connection-string.")
        var connectionString: String?
        @Option(help: "CA bundle that signs the hub's certificate. Default: <state-dir>/certs/ca.pem.")
        var caFile: String?
        @Option(help: "The hub's state directory.")
        var stateDir = ProcessInfo.processInfo.environment["FIELDGATE_HUB_STATE"] ?? "/var/lib/fieldgate-hub"

        func call(_ method: String, _ path: String, body: JSONValue? = nil) async throws -> JSONValue {
            var headers = [("Accept", "application/json"), ("Content-Type", "application/json")]
            let cs = connectionString ?? (try? String(contentsOfFile: stateDir + "/dps-connection-string", encoding: .utf8))?
                .split(whereSeparator: \.isWhitespace).first.map(String.init)
            if let cs, !cs.isEmpty {
                let c = try ConnectionString(parsing: cs)
                headers.append(("Authorization", try SASToken.generate(resourceURI: c.hostName, key: c.sharedAccessKey,
                                                                       expiry: WallClock.nowMilliseconds() / 1000 + 3600,
                                                                       keyName: c.sharedAccessKeyName ?? "provisioningserviceowner")))
            }
            var settings = HTTPSSettings()
            settings.caFile = caFile ?? stateDir + "/certs/ca.pem"
            settings.proxy = .direct
            settings.timeoutMilliseconds = 15_000
            let target = url.hasSuffix("/") ? String(url.dropLast()) : url
            let bytes = body?.bytes
            let result = await offCooperativePool { [headers, settings] in HTTPSClient.perform(method, target + path + "?api-version=2021-10-01", headers: headers, body: bytes, settings: settings) }
            switch result {
            case .failure(let e): throw CLIError("cannot reach DPS at \(url): \(e.message)")
            case .success(let r):
                guard (200..<300).contains(r.status) else {
                    throw CLIError("\(method) \(path) failed with HTTP \(r.status): \(r.json?["message"]?.stringValue ?? r.text)")
                }
                return r.json ?? .null
            }
        }
    }

    /// What an enrollment and a group share: keys or a certificate, status, allocation, hubs.
    struct Attestation: ParsableArguments {
        @Option(help: "Primary symmetric key (base64). Default: generated.") var primaryKey: String?
        @Option(help: "Secondary symmetric key (base64). Default: generated.") var secondaryKey: String?
        @Option(help: "X.509 attestation: a PEM file (an enrollment: the device's certificate; a group: the signing CA certificate).")
        var certificate: String?
        @Option(help: "Allocation over the linked hubs: hashed (even, stable) or static (the first of --hub).") var allocation = "hashed"
        @Option(help: "A linked hub this may go to (repeatable). Default: every linked hub.") var hub: [String] = []
        @Flag(help: "Create it disabled: its registrations end as disabled.") var disabled = false

        func body(_ certificateKind: String) throws -> [String: JSONValue] {
            var o: [String: JSONValue] = ["provisioningStatus": .string(disabled ? "disabled" : "enabled"), "allocationPolicy": .string(allocation)]
            if let certificate {
                let pem = try String(contentsOfFile: certificate, encoding: .utf8)
                o["attestation"] = ["type": "x509", "x509": .object([certificateKind: ["primary": ["certificate": .string(pem)]]])]
            } else {
                var keys: [String: JSONValue] = [:]
                if let primaryKey { keys["primaryKey"] = .string(primaryKey) }
                if let secondaryKey { keys["secondaryKey"] = .string(secondaryKey) }
                o["attestation"] = ["type": "symmetricKey", "symmetricKey": .object(keys)]
            }
            if !hub.isEmpty { o["iotHubs"] = .array(hub.map { .string($0) }) }
            return o
        }
    }

    struct Group: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create or replace an enrollment group and print it (with its keys: a device's key is HMAC-SHA256(group key, registration id)).")
        @OptionGroup var options: Options
        @OptionGroup var attestation: Attestation
        @Argument(help: "Enrollment group id.") var name: String
        func run() async throws {
            var body = try attestation.body("signingCertificates")
            body["enrollmentGroupId"] = .string(name)
            printJSON(try await options.call("PUT", "/enrollmentGroups/\(pathComponent(name))", body: .object(body)))
        }
    }

    struct Enrollment: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create or replace an individual enrollment and print it.")
        @OptionGroup var options: Options
        @OptionGroup var attestation: Attestation
        @Argument(help: "Registration id (lowercase letters, digits and - . _ :).") var registrationId: String
        @Option(help: "The device id the hub gets. Default: the registration id.") var deviceId: String?
        func run() async throws {
            var body = try attestation.body("clientCertificates")
            body["registrationId"] = .string(registrationId)
            if let deviceId { body["deviceId"] = .string(deviceId) }
            printJSON(try await options.call("PUT", "/enrollments/\(pathComponent(registrationId))", body: .object(body)))
        }
    }

    enum Kind: String, ExpressibleByArgument, CaseIterable {
        case group, enrollment, registration
        var path: String {
            switch self {
            case .group: "/enrollmentGroups/"
            case .enrollment: "/enrollments/"
            case .registration: "/registrations/"
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show an enrollment group, an enrollment, or a registration's state (its assigned hub).")
        @OptionGroup var options: Options
        @Argument(help: "group, enrollment or registration.") var kind: Kind
        @Argument(help: "Its id.") var id: String
        func run() async throws { printJSON(try await options.call("GET", kind.path + pathComponent(id))) }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete an enrollment group, an enrollment, or a registration (the device then registers anew; its hub identity stays).")
        @OptionGroup var options: Options
        @Argument(help: "group, enrollment or registration.") var kind: Kind
        @Argument(help: "Its id.") var id: String
        func run() async throws {
            _ = try await options.call("DELETE", kind.path + pathComponent(id))
            say("deleted \(kind.rawValue) \(id)")
        }
    }
}

/// The hub's CA certificates (IoT Hub's Certificates): X.509 devices of type certificateAuthority chain to them.
struct CACertificates: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ca", abstract: "Manage the hub's CA certificates for X.509 devices.",
                                                    subcommands: [Add.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a CA certificate (PEM), verified unless --unverified (IoT Hub's proof of possession, or its \"verified on upload\").")
        @OptionGroup var service: ServiceOptions
        @Argument(help: "A name for it.") var name: String
        @Option(help: "The PEM file.") var file: String
        @Flag(help: "Leave it unverified: devices cannot chain to it yet.") var unverified = false
        func run() async throws {
            let pem = try String(contentsOfFile: file, encoding: .utf8)
            let body: JSONValue = ["properties": ["certificate": .string(pem), "isVerified": .bool(!unverified)]]
            let r = try await service.call("PUT", "/certificates/\(pathComponent(name))", body: body)
            say("CA certificate \(name) added (\(r["isVerified"] == .bool(true) ? "verified" : "unverified"))")
        }
    }
}
