import FieldgateCore
import MessageAuthentication

#if canImport(Glibc)
import Glibc
#endif

/// What a .deb says of itself, read with dpkg-deb, and what this machine runs. Blocking: not on the cooperative pool.
public enum PackageInspector {
    public struct Control: Sendable, Equatable {
        public var package: String
        public var version: String
        public var architecture: String
    }

    /// The package's control fields, or why they cannot be read (not a Debian package).
    public static func control(of path: String) -> Result<Control, UpdateError> {
        guard let (status, output) = HostCommand.capture(["dpkg-deb", "--field", path, "Package", "Version", "Architecture"], withStderr: true) else {
            return .failure(UpdateError("dpkg-deb cannot be started"))
        }
        guard status == 0 else { return .failure(UpdateError("not a Debian package: \(output.split(separator: "\n").first ?? "")")) }
        return parseFields(output).map { .success($0) } ?? .failure(UpdateError("the package's control file lacks Package, Version or Architecture"))
    }

    /// `Name: value` lines → the three fields.
    static func parseFields(_ text: String) -> Control? {
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            fields[String(line[..<colon])] = line[line.index(after: colon)...].trimmed()
        }
        guard let p = fields["Package"], let v = fields["Version"], let a = fields["Architecture"] else { return nil }
        return Control(package: p, version: v, architecture: a)
    }

    /// Why `control` is not fieldgate `version` for this machine; nil when it is.
    public static func mismatch(_ control: Control, version: String, architecture: String) -> String? {
        if control.package != "fieldgate" { return "the package is \(control.package), not fieldgate" }
        if control.architecture != architecture { return "the package is for \(control.architecture); this gateway is \(architecture)" }
        if control.version != version { return "the package is version \(control.version), not \(version) as fwVersion says" }
        return nil
    }

    /// dpkg's architecture of this machine (amd64, arm64).
    public static func hostArchitecture() -> String? {
        HostCommand.capture(["dpkg", "--print-architecture"]).flatMap { $0.status == 0 && !$0.output.isEmpty ? $0.output : nil }
    }

    /// The installed version of fieldgate; nil when it is not installed as a package.
    public static func installedVersion() -> String? {
        HostCommand.capture(["dpkg-query", "--show", "--showformat=${Version}", "fieldgate"]).flatMap { $0.status == 0 && !$0.output.isEmpty ? $0.output : nil }
    }

    /// Checks a detached OpenPGP signature of `path` against `keyring` with gpgv (Debian's verifier, the one apt
    /// uses); nil when a key of the keyring made it.
    public static func verifySignature(of path: String, signature: String, keyring: String) -> UpdateError? {
        guard let (status, output) = HostCommand.capture(["gpgv", "--keyring", keyring, "--", signature, path], withStderr: true) else {
            return UpdateError("gpgv cannot be started (apt install gpgv)")
        }
        guard status == 0 else {
            let why = output.split(separator: "\n").last.map(String.init) ?? "exit status \(status)"
            return UpdateError("the package's signature does not verify against \(keyring): \(why)")
        }
        return nil
    }

    /// SHA-256 of the file at `path` (hex); nil when it cannot be read.
    public static func sha256(of path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        return SHA256Digest.hex(ofDescriptor: fd)
    }
}
