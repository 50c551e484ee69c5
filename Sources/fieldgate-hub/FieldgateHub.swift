import ArgumentParser
import FieldgateCore
import HubEmulator
import HubServiceClient
import IoTHub
import Logging
import ProtonAMQP
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

@main
struct FieldgateHub: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fieldgate-hub",
        abstract: "A strict local Azure IoT Hub: the device-facing AMQP surface plus a service API.",
        version: FieldgateVersion.current,
        subcommands: [Serve.self, Certs.self, Device.self, CloudToDevice.self, Feedback.self, MonitorEvents.self,
                      Method.self, Twin.self, Files.self, Fault.self, SimulateDevice.self, Provisioning.self, CACertificates.self])
}

/// Options shared by every command that talks to a running hub's service API.
struct ServiceOptions: ParsableArguments {
    @Option(help: "Service API base URL.")
    var url = "http://127.0.0.1:8080"

    @Option(help: "Service connection string (HostName=…;SharedAccessKeyName=…;SharedAccessKey=…). Default: $FIELDGATE_HUB_CONNECTION_STRING, then <state-dir>/service-connection-string.")
    var connectionString: String?

    @Option(help: "The hub's state directory (to find its service connection string).")
    var stateDir = ProcessInfo.processInfo.environment["FIELDGATE_HUB_STATE"] ?? "/var/lib/fieldgate-hub"

    func client() throws -> HubServiceClient {
        guard let parsed = URLParts(url) else { throw CLIError("--url must look like http://HOST:PORT") }
        let cs = connectionString ?? ProcessInfo.processInfo.environment["FIELDGATE_HUB_CONNECTION_STRING"]
            ?? (try? String(contentsOfFile: stateDir + "/service-connection-string", encoding: .utf8))?.split(whereSeparator: \.isWhitespace).first.map(String.init)
        var authorization: String?
        if let cs, !cs.isEmpty {
            let c = try ConnectionString(parsing: cs)
            guard let keyName = c.sharedAccessKeyName else { throw CLIError("the service connection string needs SharedAccessKeyName") }
            authorization = try SASToken.generate(resourceURI: c.hostName, key: c.sharedAccessKey,
                                                  expiry: WallClock.nowMilliseconds() / 1000 + 3600, keyName: keyName)
        }
        return HubServiceClient(host: parsed.host, port: parsed.port, authorization: authorization)
    }

    /// Performs a request; non-2xx statuses become one clear error line.
    func call(_ method: String, _ path: String, body: JSONValue? = nil) async throws -> JSONValue {
        let response: HubServiceClient.Response
        do { response = try await client().request(method, path, body: body) } catch let e as CLIError { throw e } catch {
            throw CLIError("cannot reach the hub's service API at \(url): \(error)")
        }
        guard (200..<300).contains(response.status) else {
            let message = response.json?["message"]?.stringValue ?? response.json?["error"]?["message"]?.stringValue ?? response.text
            throw CLIError("\(method) \(path) failed with HTTP \(response.status): \(message)")
        }
        return response.json ?? .null
    }
}

struct URLParts {
    var host: String
    var port: Int
    init?(_ url: String) {
        guard url.hasPrefix("http://") else { return nil }
        let rest = url.dropFirst("http://".count).split(separator: "/").first ?? ""
        let parts = rest.split(separator: ":")
        guard parts.count == 2, let p = Int(parts[1]) else { return nil }
        host = String(parts[0])
        port = p
    }
}

struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Prints a line and flushes, so output reaches a pipe (demo logs) even if the process is then killed.
func say(_ line: String) {
    print(line)
    fflush(nil)
}

func printJSON(_ value: JSONValue) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    if let data = try? encoder.encode(value) { print(String(decoding: data, as: UTF8.self)) }
}

func parseJSONArgument(_ text: String, _ what: String) throws -> JSONValue {
    guard let v = JSONValue.parse(text) else { throw CLIError("\(what) is not valid JSON: \(text)") }
    return v
}

func pathComponent(_ s: String) -> String { PercentEncoding.encode(s) }
