import FieldgateCore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#endif

/// tinyproxy from Debian on a free loopback port, with Basic authentication, for one test. Started with
/// posix_spawn (FieldgateCore), not Foundation's Process: Process with FileHandle.nullDevice closed a descriptor
/// twice, which once closed a spool segment of a test running in parallel (pread then failed with ESPIPE).
public struct TestProxy: Sendable {
    public static let user = "fg", password = "proxy-secret"
    public let pid: pid_t
    public let directory: String
    public let url: String

    public static func start() throws -> TestProxy {
        let port = Int.random(in: 30000..<32000)
        let directory = FileManager.default.temporaryDirectory.path + "/fieldgate-proxy-\(port)-\(Int.random(in: 0..<1_000_000))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let conf = """
            Port \(port)
            Listen 127.0.0.1
            Timeout 600
            MaxClients 20
            Allow 127.0.0.1
            BasicAuth \(user) \(password)
            LogLevel Connect
            LogFile "\(directory)/log"

            """
        FileManager.default.createFile(atPath: directory + "/log", contents: nil, attributes: [.posixPermissions: 0o666])
        try conf.write(toFile: directory + "/tinyproxy.conf", atomically: true, encoding: .utf8)
        let pid: pid_t
        switch spawnProcess(["/usr/bin/tinyproxy", "-d", "-c", directory + "/tinyproxy.conf"], searchPath: false) {
        case .success(let p): pid = p
        case .failure(let f): throw TestProxyError(description: "cannot start tinyproxy (errno \(f.errno)); scripts/setup.sh installs it")
        }
        waitForLoopbackListener(port: port)
        return TestProxy(pid: pid, directory: directory, url: "http://127.0.0.1:\(port)")
    }

    public func log() -> String { (try? String(contentsOfFile: directory + "/log", encoding: .utf8)) ?? "" }

    public func stop() {
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        try? FileManager.default.removeItem(atPath: directory)
    }
}

public struct TestProxyError: Error, CustomStringConvertible { public let description: String }

/// Returns once something accepts TCP connections on 127.0.0.1:`port`, or after 5 s (a server started by a test).
public func waitForLoopbackListener(port: Int) {
    for _ in 0..<50 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let ok = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 } }
        close(fd)
        if ok { return }
        usleep(100_000)
    }
}
