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
    var directory: String { directoryOf(configPath).isEmpty ? "." : directoryOf(configPath) }
    /// The secrets file the configuration names (`[secrets] file`), as fieldgated reads it.
    let secretsPath: String
    var devicesDirectory: String { directory + "/devices.d" }

    /// What a touched file was before: its text, owner, group and mode (nil text: it did not exist).
    private struct Original {
        var path: String
        var text: String?
        var owner: uid_t
        var group: gid_t
        var mode: mode_t
    }
    private var originals: [Original] = []

    init(configPath: String) {
        self.configPath = configPath
        secretsPath = GatewaySettings.secretsPath(configPath: configPath)
    }

    static func read(_ path: String) -> String? {
        FileManager.default.contents(atPath: path).map { String(decoding: $0, as: UTF8.self) }
    }

    private mutating func remember(_ path: String) {
        guard !originals.contains(where: { $0.path == path }) else { return }
        var st = stat()
        let exists = lstat(path, &st) == 0
        originals.append(Original(path: path, text: exists ? Self.read(path) : nil, owner: exists ? st.st_uid : getuid(),
                                  group: exists ? st.st_gid : getgid(), mode: exists ? st.st_mode & 0o7777 : 0o600))
    }

    /// Writes `text` to `path` as root:fieldgate 0640 (the service reads it as its group), or 0600 where there is no
    /// fieldgate group or the group cannot be set.
    mutating func write(_ path: String, _ text: String) throws(Failure) {
        remember(path)
        let group = getgrnam(Secrets.serviceGroup)?.pointee.gr_gid
        try Self.replace(path, text, owner: getuid(), group: group, mode: group == nil ? 0o600 : 0o640)
    }

    /// Replaces `path` by rename from a new file that only its writer can open until it is complete (O_EXCL and
    /// O_NOFOLLOW: a planted file or symlink at the temporary name is refused, not followed).
    private static func replace(_ path: String, _ text: String, owner: uid_t, group: gid_t?, mode: mode_t) throws(Failure) {
        let temporary = path + ".fieldgatectl-new"
        unlink(temporary)  // a leftover of an interrupted run
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Failure("fieldgatectl: cannot write \(temporary): \(String(cString: strerror(errno)))") }
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        // Group-readable only once the group is the service's: a failed chown keeps the file private.
        let grouped = group.map { fchown(fd, owner, $0) == 0 } ?? false
        fchmod(fd, grouped ? mode : mode & 0o700)
        let synced = fsync(fd) == 0
        close(fd)
        guard written == bytes.count, synced, rename(temporary, path) == 0 else {
            let why = String(cString: strerror(errno))
            unlink(temporary)
            throw Failure("fieldgatectl: cannot write \(path): \(why)")
        }
    }

    mutating func remove(_ path: String) throws(Failure) {
        remember(path)
        guard unlink(path) == 0 || errno == ENOENT else { throw Failure("fieldgatectl: cannot remove \(path): \(String(cString: strerror(errno)))") }
    }

    /// Puts every touched file back as it was (text, owner, group, mode); returns what could not be restored.
    mutating func restore() -> [String] {
        var failed: [String] = []
        for o in originals.reversed() {
            if let text = o.text {
                do throws(Failure) { try Self.replace(o.path, text, owner: o.owner, group: o.group, mode: o.mode) } catch { failed.append("\(error)") }
            } else if unlink(o.path) != 0 && errno != ENOENT {
                failed.append("\(o.path): \(String(cString: strerror(errno)))")
            }
        }
        originals = []
        return failed
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
