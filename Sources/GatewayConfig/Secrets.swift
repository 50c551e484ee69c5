import TOMLKit

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#endif

/// The gateway's secrets, never in the main configuration (issue 8): `secrets.toml` from systemd credentials
/// (`$CREDENTIALS_DIRECTORY/secrets.toml`, if an operator adds `LoadCredential=`) or from a file that only its owner
/// can read (0600/0400), or its owner and the service's group (0640/0440 with group `fieldgate`: the packaged unit
/// reads it so, which lets a reload pick up a key added a minute ago). Anything else is refused.
///
///     [keys]        # device keys, base64: a primary, or { primary = "…", secondary = "…" }
///     gw-1 = "…"
///     [policies]    # hub shared access policies with DeviceConnect, by name
///     device = "…"
///     [groups]      # group (enrollment) keys, by name
///     line-a = "…"
///     [hmac]        # UDP leaves' datagram keys (any string), by device id
///     meter-1 = "…"
public struct Secrets: Sendable {
    public struct DeviceKey: Sendable, Equatable { public var primary: String; public var secondary: String? }
    var keys: [String: DeviceKey] = [:]
    var policies: [String: String] = [:]
    var groups: [String: String] = [:]
    var hmac: [String: String] = [:]
    /// `[proxy] password`: the HTTP proxy's password for the user `[hub] proxy` names.
    var proxyPassword: String?
    /// Where they came from, for messages.
    var origin: String

    /// The group that may read the secrets file besides its owner: the service's own.
    public static let serviceGroup = "fieldgate"

    /// `file` is used when systemd passes no credential; `group` is the one group allowed to read it.
    static func load(file: String, credentialsDirectory: String?, group: String = serviceGroup) throws(ConfigError) -> Secrets {
        if let dir = credentialsDirectory, FileManager.default.fileExists(atPath: dir + "/secrets.toml") {
            return try parse(dir + "/secrets.toml")  // systemd made it readable by this service alone
        }
        var st = stat()
        guard stat(file, &st) == 0 else {
            let why = String(cString: strerror(errno))
            throw ConfigError(file: file, errno == EACCES
                ? "cannot read the secrets file (\(why)): the \(group) user must: chgrp \(group) \(file) && chmod 640 \(file)"
                : "cannot read the secrets file (\(why)): create it (fieldgatectl connect does) root:\(group) mode 0640 with the device keys under [keys]")
        }
        guard access(file, R_OK) == 0 else {
            throw ConfigError(file: file, "cannot read the secrets file (\(String(cString: strerror(errno)))): it must be readable by the \(group) group: chgrp \(group) \(file) && chmod 640 \(file)")
        }
        let mode = st.st_mode & 0o777
        let groupID = getgrnam(group)?.pointee.gr_gid
        let readByServiceGroup = mode & 0o077 == 0o040 && groupID == st.st_gid
        guard mode & 0o077 == 0 || readByServiceGroup else {
            let groupName = getgrgid(st.st_gid).map { String(cString: $0.pointee.gr_name) } ?? String(st.st_gid)
            throw ConfigError(file: file, "the secrets file is mode \(String(mode, radix: 8)) (group \(groupName)): \(Self.exposure(mode)); keys must be readable by their owner and at most the group \(group): run chmod 640 \(file) && chgrp \(group) \(file) (or chmod 600 for its owner alone)")
        }
        return try parse(file)
    }

    /// Who besides the owner may touch the file, in words ("readable by its group and others", …).
    static func exposure(_ mode: mode_t) -> String {
        func rights(_ bits: mode_t) -> String? {
            let names = [(mode_t(4), "readable"), (mode_t(2), "writable"), (mode_t(1), "executable")].filter { bits & $0.0 != 0 }.map(\.1)
            return names.isEmpty ? nil : names.joined(separator: " and ")
        }
        let group = rights((mode >> 3) & 7), others = rights(mode & 7)
        switch (group, others) {
        case let (g?, o?) where g == o: return "\(g) by its group and others"
        case let (g?, o?): return "\(g) by its group, \(o) by others"
        case let (g?, nil): return "\(g) by its group"
        case let (nil, o?): return "\(o) by others"
        case (nil, nil): return "private"
        }
    }

    private static func parse(_ path: String) throws(ConfigError) -> Secrets {
        let source = try ConfigSource.read(path)
        defer { ConfigSource.free([source.table]) }
        let schema = Schema(fields: ["keys": .anyTable, "policies": .stringMap, "groups": .stringMap, "hmac": .stringMap,
                                           "proxy": .table(Schema(fields: ["password": .string]))])
        var problems = schema.check(source.table, path: "", in: source)
        var s = Secrets(origin: path)
        for (name, value) in source.table["keys"]?.table.map(Array.init) ?? [] {
            if let k = value.string { s.keys[name] = DeviceKey(primary: k, secondary: nil) }
            else if let t = value.table, let p = t["primary"]?.string { s.keys[name] = DeviceKey(primary: p, secondary: t["secondary"]?.string) }
            else { problems.append(source.problem("keys.\(name)", "keys.\(name) must be a base64 key or { primary = \"…\", secondary = \"…\" }")) }
        }
        func strings(_ table: String) -> [String: String] {
            Dictionary((source.table[table]?.table.map(Array.init) ?? []).compactMap { k, v in v.string.map { (k, $0) } }, uniquingKeysWith: { $1 })
        }
        s.policies = strings("policies")
        s.groups = strings("groups")
        s.hmac = strings("hmac")
        s.proxyPassword = source.table["proxy"]?.table?["password"]?.string
        guard problems.isEmpty else { throw ConfigError(problems) }
        return s
    }
}
