import FieldgateCore
import HubEmulator
import HubTestSupport
import HubTunnel
import Logging
import MessageAuthentication
import Synchronization
import Testing
@testable import SoftwareUpdate

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#endif

/// Packages come from a real web server: nginx from Debian, HTTPS with a local CA, on a loopback port; and through
/// a real proxy (tinyproxy) where one is configured.
@Suite("Package download", .serialized)
struct DownloadTests {
    /// nginx serving `root` over HTTPS for one test.
    struct PackageServer {
        let pid: pid_t
        let directory: String
        let port: Int
        let certificates: LocalCertificates.Paths
        var base: String { "https://localhost:\(port)" }

        static func start() throws -> PackageServer {
            let port = Int.random(in: 32000..<34000)
            let directory = FileManager.default.temporaryDirectory.path + "/fieldgate-pkg-\(port)-\(Int.random(in: 0..<1_000_000))"
            try FileManager.default.createDirectory(atPath: directory + "/www", withIntermediateDirectories: true)
            let certificates = try LocalCertificates.create(in: directory + "/certs", dnsNames: ["localhost"])
            let conf = """
                user root;
                worker_processes 1;
                daemon off;
                pid \(directory)/nginx.pid;
                error_log \(directory)/error.log;
                events { worker_connections 64; }
                http {
                  access_log \(directory)/access.log;
                  server {
                    listen 127.0.0.1:\(port) ssl;
                    server_name localhost;
                    ssl_certificate \(certificates.serverCertificate);
                    ssl_certificate_key \(certificates.serverKey);
                    root \(directory)/www;
                    location = /moved { return 302 http://localhost:\(port)/package.deb; }
                  }
                }

                """
            try conf.write(toFile: directory + "/nginx.conf", atomically: true, encoding: .utf8)
            guard case .success(let pid) = spawnProcess(["/usr/sbin/nginx", "-c", directory + "/nginx.conf"], searchPath: false) else {
                throw UpdateError("cannot start nginx (scripts/setup.sh installs it)")
            }
            waitForLoopbackListener(port: port)
            return PackageServer(pid: pid, directory: directory, port: port, certificates: certificates)
        }

        func put(_ name: String, _ bytes: [UInt8]) throws {
            try Data(bytes).write(to: URL(fileURLWithPath: directory + "/www/" + name))
        }

        var accessLog: String { (try? String(contentsOfFile: directory + "/access.log", encoding: .utf8)) ?? "" }

        var settings: HTTPSSettings {
            var s = HTTPSSettings()
            s.caFile = certificates.caCertificate
            s.proxy = .direct
            s.connectHost = "localhost"
            s.connectAddress = "127.0.0.1"
            return s
        }

        func stop() {
            kill(pid, SIGTERM)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    private func bytes(_ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ $0 >> 9) } }

    /// A partial file from an interrupted try is continued with a Range request (206), not fetched again; a cap
    /// stops a package that is too large; http and a redirect to http are refused.
    @Test func resumesCapsAndStaysOnHTTPS() throws {
        let server = try PackageServer.start()
        defer { server.stop() }
        let package = bytes(3 << 20)
        try server.put("package.deb", package)
        let target = server.directory + "/fieldgate.deb.part"
        try Data(package[..<1_000_000]).write(to: URL(fileURLWithPath: target))
        let resumed = HTTPSClient.download(server.base + "/package.deb", to: target, maxBytes: 8 << 20, settings: server.settings)
        guard case .success(let (status, size)) = resumed else { Issue.record("\(resumed)"); return }
        #expect(status == 206 && size == package.count)
        #expect(StateFile.read(target) == package)
        #expect(server.accessLog.contains("\"GET /package.deb HTTP/1.1\" 206 \(package.count - 1_000_000)"), "\(server.accessLog)")
        // Complete already: 416, nothing more written.
        guard case .success(let (again, _)) = HTTPSClient.download(server.base + "/package.deb", to: target, maxBytes: 8 << 20, settings: server.settings) else {
            Issue.record("the second call failed"); return
        }
        #expect(again == 416 && StateFile.read(target) == package)
        unlink(target)
        guard case .failure(let e) = HTTPSClient.download(server.base + "/package.deb", to: target, maxBytes: 1 << 20, settings: server.settings) else {
            Issue.record("a 3 MiB package passed a 1 MiB cap"); return
        }
        #expect(e.message.contains("larger than"), "\(e.message)")
        #expect((StateFile.read(target)?.count ?? 0) <= 1 << 20)
        unlink(target)
        for url in ["http://localhost:\(server.port)/package.deb", server.base + "/moved"] {
            guard case .failure(let e) = HTTPSClient.download(url, to: target, maxBytes: 8 << 20, settings: server.settings) else {
                Issue.record("\(url) was downloaded"); return
            }
            #expect(e.message.lowercased().contains("protocol") || e.message.contains("http"), "\(url): \(e.message)")
        }
    }

    /// Behind a site proxy (tinyproxy with Basic authentication): the package comes through its CONNECT.
    @Test func throughTheConfiguredProxy() throws {
        let server = try PackageServer.start()
        defer { server.stop() }
        let proxy = try TestProxy.start()
        defer { proxy.stop() }
        let package = bytes(500_000)
        try server.put("package.deb", package)
        var settings = server.settings
        settings.connectHost = nil
        settings.connectAddress = nil
        settings.proxy = .url(proxy.url, user: TestProxy.user, password: TestProxy.password)
        let target = server.directory + "/proxied.deb"
        let result = HTTPSClient.download(server.base + "/package.deb", to: target, maxBytes: 1 << 20, settings: settings)
        guard case .success(let (status, size)) = result else { Issue.record("\(result)"); return }
        #expect(status == 200 && size == package.count && StateFile.read(target) == package)
        #expect(proxy.log().contains("CONNECT localhost:\(server.port)"), "\(proxy.log())")
    }

    /// gpgv against a keyring: a signature by its key verifies; one by another key, or of other bytes, does not.
    @Test func signaturesAreCheckedAgainstTheKeyring() throws {
        let dir = FileManager.default.temporaryDirectory.path + "/fieldgate-gpg-\(Int.random(in: 0..<1_000_000))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for home in ["site", "other"] { try FileManager.default.createDirectory(atPath: dir + "/" + home, withIntermediateDirectories: true) }
        chmod(dir + "/site", 0o700)
        chmod(dir + "/other", 0o700)
        func gpg(_ home: String, _ args: [String]) -> Int32? {
            HostCommand.run(["gpg", "--homedir", dir + "/" + home, "--batch", "--quiet", "--passphrase", ""] + args)
        }
        #expect(gpg("site", ["--quick-gen-key", "site <s@site.invalid>", "ed25519", "sign", "never"]) == 0)
        #expect(gpg("other", ["--quick-gen-key", "other <o@other.invalid>", "ed25519", "sign", "never"]) == 0)
        let keyring = dir + "/keyring.gpg"
        #expect(gpg("site", ["--output", keyring, "--export"]) == 0)
        try Data(bytes(10_000)).write(to: URL(fileURLWithPath: dir + "/p.deb"))
        #expect(gpg("site", ["--output", dir + "/p.deb.sig", "--detach-sign", dir + "/p.deb"]) == 0)
        #expect(gpg("other", ["--output", dir + "/p.deb.other", "--detach-sign", dir + "/p.deb"]) == 0)
        #expect(PackageInspector.verifySignature(of: dir + "/p.deb", signature: dir + "/p.deb.sig", keyring: keyring) == nil)
        #expect(PackageInspector.verifySignature(of: dir + "/p.deb", signature: dir + "/p.deb.other", keyring: keyring)?.message.contains("does not verify") == true)
        try Data(bytes(10_001)).write(to: URL(fileURLWithPath: dir + "/p.deb"))
        #expect(PackageInspector.verifySignature(of: dir + "/p.deb", signature: dir + "/p.deb.sig", keyring: keyring) != nil, "other bytes")
    }

    /// The agent, from a desired `firmware` to its verdict on a download whose SHA-256 is not the one named:
    /// `downloading`, `verifying`, `error` with both hashes, each reported in order; the download is removed.
    @Test func aChecksumMismatchEndsInError() async throws {
        let server = try PackageServer.start()
        defer { server.stop() }
        try server.put("fieldgate_0.9.0.deb", bytes(100_000))
        let directory = server.directory + "/state/update"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        final class Reports: Sendable { let patches = Mutex<[JSONValue]>([]) }
        let reports = Reports()
        var environment = UpdateAgent.Environment(
            report: { patch, _ in reports.patches.withLock { $0.append(patch) }; return nil },
            flushSpool: {}, spooledSequence: { 0 }, https: server.settings, reboot: {})
        environment.architecture = "amd64"
        var configuration = UpdateConfiguration(directory: directory)
        configuration.enabled = true
        configuration.helperDirectory = server.directory + "/helper"
        let agent = UpdateAgent(configuration: configuration, currentVersion: "0.1.0", environment: environment, logger: Logger(label: "test.update"))
        let wrong = String(repeating: "0", count: 64)
        let first = agent.desired(["firmware": ["fwVersion": "0.9.0", "fwPackageURI": .string(server.base + "/fieldgate_0.9.0.deb"), "fwPackageCheckValue": .string(wrong)]])
        #expect(first["firmware"]?["fwUpdateStatus"] == "downloading")
        for _ in 0..<100 where agent.record.status != .error { try await Task.sleep(for: .milliseconds(100)) }
        let statuses = reports.patches.withLock { $0.compactMap { $0["firmware"]?["fwUpdateStatus"]?.stringValue } }
        #expect(statuses == ["downloading", "verifying", "error"], "\(statuses)")
        #expect(agent.record.substatus.contains("checksum mismatch") && agent.record.substatus.contains(SHA256Digest.hex(of: bytes(100_000))))
        #expect(!FileManager.default.fileExists(atPath: directory + "/fieldgate_0.9.0.deb.part") && !FileManager.default.fileExists(atPath: directory + "/fieldgate_0.9.0.deb"))
        // The same desired value again: no second attempt.
        _ = agent.desired(["firmware": ["fwVersion": "0.9.0", "fwPackageURI": .string(server.base + "/fieldgate_0.9.0.deb"), "fwPackageCheckValue": .string(wrong)]])
        try await Task.sleep(for: .milliseconds(300))
        #expect(server.accessLog.split(separator: "\n").filter { $0.contains("fieldgate_0.9.0.deb") }.count == 1)
    }
}
