/// Software update, factory reset and the maintenance window (docs/software-update.md). Off unless configured.
public struct UpdateConfiguration: Sendable, Equatable {
    /// A desired `firmware` section in the gateway's twin installs that version of fieldgate. Default: off.
    public var enabled = false
    /// The helper installs an older version than the running one when asked (its own rollback always may).
    /// Default: false, so a compromised daemon cannot bring back a version with known flaws.
    public var allowDowngrade = false
    /// An OpenPGP keyring (root's, e.g. /etc/fieldgate/update-keyring.gpg): when set, a package installs only with
    /// a detached signature (`fwPackageURI` + ".sig", or desired `fwPackageSignatureURI`) by one of its keys,
    /// checked by the daemon and again by the helper with gpgv. nil: the SHA-256 from the twin is the only check.
    public var keyring: String?
    /// The new version must confirm (ready, and its first report taken by the hub or, offline, readings spooled)
    /// within this long after its install, or the previous version is reinstalled. Default: 300 s.
    public var confirmSeconds = 300
    /// A package larger than this is refused while it downloads. Default: 256 MiB.
    public var maxDownloadBytes = 256 << 20
    /// The `factoryReset` method. Default: off (answered 403).
    public var factoryReset = false
    /// What a factory reset clears. Default: the spool and the gateway's state.
    public var factoryResetClears: Set<ResetTarget> = [.spool, .state]
    /// The daemon's own directory (downloads, the hand-off to the helper): `<state dir>/update`.
    public var directory: String
    /// The privileged helper's directory (packages it keeps, its progress and results; root's, readable by all).
    public var helperDirectory = UpdateConfiguration.defaultHelperDirectory

    public static let defaultHelperDirectory = "/var/lib/fieldgate-update"
    public static let confirmRange = 30...3600

    public enum ResetTarget: String, Sendable, CaseIterable {
        /// Every spooled reading (and dead letters, offload files).
        case spool
        /// The state directory's other contents (update records and downloads included).
        case state
        /// /etc/fieldgate/devices.d: the leaves' configuration.
        case devices
    }

    public init(directory: String) {
        self.directory = directory
    }
}
