import CBuildInfo

/// The version of this build: the package's (`--version` on every binary, `status`, the gateway twin).
public enum FieldgateVersion {
    public static let current = String(cString: fieldgate_build_version())
}
