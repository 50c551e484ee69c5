import FieldgateCore
import GatewayConfig

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#endif

/// The files under /etc/fieldgate as fieldgatectl changes them: whole-file replacement by rename (a crash leaves the
/// old file or the new, never half), readable by root and the service's group only, and undone as a set when what
/// follows (validation, the checks) fails.
struct ConfigFiles {
    let configPath: String
    var directory: String { configPath.contains("/") ? String(configPath[..<configPath.lastIndex(of: "/")!]) : "." }
    var secretsPath: String { GatewayChecks.secretsPath(configPath) }
    var devicesDirectory: String { directory + "/devices.d" }

    /// What each touched file held before (nil: it did not exist), for `restore`.
    private(set) var originals: [(path: String, text: String?)] = []

    init(configPath: String) { self.configPath = configPath }

    static func read(_ path: String) -> String? {
        FileManager.default.contents(atPath: path).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Writes `text` to `path` as root:fieldgate 0640 (0600 for root alone where there is no fieldgate group).
    mutating func write(_ path: String, _ text: String) throws(Failure) {
        if !originals.contains(where: { $0.path == path }) { originals.append((path, Self.read(path))) }
        let temporary = path + ".fieldgatectl-new"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Failure("fieldgatectl: cannot write \(temporary): \(String(cString: strerror(errno)))") }
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        if let group = getgrnam(Secrets.serviceGroup)?.pointee.gr_gid {
            fchown(fd, getuid(), group)
            fchmod(fd, 0o640)
        }
        let synced = fsync(fd) == 0
        close(fd)
        guard written == bytes.count, synced, rename(temporary, path) == 0 else {
            unlink(temporary)
            throw Failure("fieldgatectl: cannot write \(path): \(String(cString: strerror(errno)))")
        }
    }

    mutating func remove(_ path: String) throws(Failure) {
        if !originals.contains(where: { $0.path == path }) { originals.append((path, Self.read(path))) }
        guard unlink(path) == 0 || errno == ENOENT else { throw Failure("fieldgatectl: cannot remove \(path): \(String(cString: strerror(errno)))") }
    }

    /// Puts every touched file back as it was.
    mutating func restore() {
        for (path, text) in originals.reversed() {
            if let text { try? write(path, text) } else { unlink(path) }
        }
        originals = []
    }

    /// A devices.d file name for a device id (ids may hold characters a file name should not).
    func leafFile(_ deviceID: String) -> String {
        let safe = deviceID.unicodeScalars.map { c -> String in
            (c.properties.isAlphabetic && c.isASCII) || ("0"..."9").contains(c) || c == "-" || c == "_" || c == "." ? String(c)
                : "%" + String(c.value, radix: 16, uppercase: true)
        }.joined()
        return devicesDirectory + "/" + safe + ".toml"
    }
}

/// The minimal main file `connect` writes when there is none (the package ships the full reference).
enum ConfigTemplate {
    static let main = """
        # /etc/fieldgate/fieldgate.toml, written by fieldgatectl connect. Every key is described in fieldgate.toml(5);
        # leaves go in devices.d/*.toml (fieldgatectl leaf add writes them), keys in secrets.toml.

        [hub]

        [gateway]

        """

    static let secrets = """
        # fieldgate's keys (fieldgatectl connect and leaf add write them): root and the fieldgate group may read this
        # file, nobody else. [keys] holds device keys by device id; [policies] hub policy keys by name.

        [keys]

        """
}
