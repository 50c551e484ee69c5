// swift-tools-version:6.2
import PackageDescription

// Strict settings for every Swift target of ours (docs/style.md §12).
let strictSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

// glibc's fortified functions in our C code in release builds (Debian's hardening). Only here, not as a
// command-line -Xcc: that reaches Swift's C importer too, where glibc 2.41's fortified poll() is an overload that
// makes every Swift call of poll ambiguous.
let fortifiedC: [CSetting] = [.define("_FORTIFY_SOURCE", to: "2", .when(configuration: .release))]

// The version every binary reports (`--version`); packaging/build-deb.sh builds with its --version here.
let fieldgateVersion = Context.environment["FIELDGATE_VERSION"] ?? "0.1.0"

let package = Package(
    name: "fieldgate",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "fieldgated", targets: ["fieldgated"]),
        .executable(name: "fieldgate-hub", targets: ["fieldgate-hub"]),
        .executable(name: "fieldgate-bench", targets: ["fieldgate-bench"]),
        .library(name: "Spool", targets: ["Spool"]),
        .library(name: "UDPAdapter", targets: ["UDPAdapter"]),
        .library(name: "FrameCodecs", targets: ["FrameCodecs"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        // fieldgate-hub's HTTPS service API (Hummingbird's TLS); fieldgated does not link it.
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        // No default traits: they pull in swift-configuration and full Foundation (~50 MB of ICU data).
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1", traits: []),
        .package(url: "https://github.com/LebJe/TOMLKit.git", from: "0.6.0"),
        // fieldgate-hub's AMQP over WebSockets on its HTTPS port; fieldgated does not link it.
        .package(url: "https://github.com/hummingbird-project/hummingbird-websocket.git", from: "2.8.1"),
    ],
    targets: [
        // C libraries. No pkgConfig for Proton: SwiftPM cannot parse Debian's .pc (docs/toolchain.md §2).
        .systemLibrary(name: "CProton", path: "Sources/CProton", providers: [.apt(["libqpid-proton11-dev"])]),
        .systemLibrary(name: "CModbus", path: "Sources/CModbus", pkgConfig: "libmodbus", providers: [.apt(["libmodbus-dev"])]),
        .systemLibrary(name: "CSystemd", path: "Sources/CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
        // glibc's malloc tuning (malloc.h), for fieldgated's steady memory.
        .systemLibrary(name: "CMalloc", path: "Sources/CMalloc"),
        .systemLibrary(name: "CLibCrypto", path: "Sources/CLibCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .target(name: "MessageAuthentication", dependencies: ["CLibCrypto"], swiftSettings: strictSettings),
        // `fieldgatectl check`'s TLS handshake: OpenSSL, the library Proton's TLS already uses.
        .target(name: "CTLSProbe", cSettings: fortifiedC, linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]),

        // AMQP over WebSockets: RFC 6455 framing and handshake (pure), and the tunnel beneath (libcurl: TCP, the HTTP
        // proxy's CONNECT and authentication, TLS with OpenSSL — the TLS library Proton already uses).
        .target(name: "WebSocketFraming", dependencies: ["MessageAuthentication"], swiftSettings: strictSettings),
        .target(name: "CCurlTunnel", cSettings: fortifiedC, linkerSettings: [.linkedLibrary("crypto")]),  // libcurl: dlopen at first use (curl_common.h)
        .target(
            name: "HubTunnel",
            dependencies: ["CCurlTunnel", "ProtonAMQP", "WebSocketFraming", "MessageAuthentication", "FieldgateCore"],
            swiftSettings: strictSettings
        ),

        .target(name: "CBuildInfo", cSettings: [.define("FIELDGATE_VERSION", to: "\"\(fieldgateVersion)\"")]),
        .target(
            name: "FieldgateCore",
            dependencies: ["CBuildInfo", "CSpawn", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
        .target(
            name: "ProtonAMQP",
            dependencies: ["CProton", "FieldgateCore", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
        // CRC32C with the CPU's instructions (SSE4.2 / ARMv8 CRC); the Spool falls back to tables without them.
        .target(name: "CCRC32C", path: "Sources/CCRC32C", cSettings: fortifiedC),
        // syncfs(2) for the spool (a GNU extension Swift's Glibc module lacks).
        .systemLibrary(name: "CFileSystem", path: "Sources/CFileSystem"),
        .systemLibrary(name: "CSpawn", path: "Sources/CSpawn"),
        // zlib, for gzip files the gateway uploads (logs, backlogs); its owner is Gzip.
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .target(name: "Gzip", dependencies: ["CZlib"], swiftSettings: strictSettings),
        // recvmmsg for UDP ingest (Swift's Glibc module lacks the GNU extensions).
        .target(name: "CSocketBatch", path: "Sources/CSocketBatch", cSettings: fortifiedC),
        .target(
            name: "Spool",
            dependencies: ["CCRC32C", "CFileSystem", "FieldgateCore", .product(name: "Logging", package: "swift-log")],
            exclude: ["Spool.md"],
            swiftSettings: strictSettings
        ),
        .target(
            name: "IoTHub",
            dependencies: ["FieldgateCore", "MessageAuthentication"],
            swiftSettings: strictSettings
        ),
        .target(
            name: "Uplink",
            dependencies: [
                "ProtonAMQP", "HubTunnel", "IoTHub", "Spool", "Gzip", "FieldgateCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        // Southbound, pure: serial framing and frame decoders (shared by the serial and UDP adapters).
        .target(name: "FrameCodecs", dependencies: ["FieldgateCore"], swiftSettings: strictSettings),
        // Southbound: serial ports (termios) as leaves.
        .target(
            name: "SerialAdapter",
            dependencies: [
                "FrameCodecs", "Uplink", "Spool", "FieldgateCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        // Southbound: local UDP senders as leaves.
        .target(
            name: "UDPAdapter",
            dependencies: [
                "Uplink", "Spool", "FieldgateCore", "FrameCodecs", "CSocketBatch",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                "MessageAuthentication",
            ],
            swiftSettings: strictSettings
        ),
        // libmodbus's owner: contexts confined to one bus thread each; errno mapped to ModbusError.
        .target(name: "ModbusIO", dependencies: ["CModbus"], swiftSettings: strictSettings),
        // Southbound: Modbus TCP/RTU buses — register maps and codecs, the bus scheduler, writes from the cloud.
        .target(
            name: "ModbusAdapter",
            dependencies: [
                "ModbusIO", "Uplink", "Spool", "FieldgateCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        // Composition: the gateway's own identity, routing to adapters (the daemon grows here).
        // Software update of fieldgate itself, factory reset and the maintenance window: the daemon's side (from the
        // twin, through downloads to the hand-off) and the privileged helper's (fieldgatectl update apply).
        .target(
            name: "SoftwareUpdate",
            dependencies: ["FieldgateCore", "HubTunnel", "MessageAuthentication", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
        // Device Provisioning Service registration (HTTPS through HubTunnel's libcurl), assignments kept on disk.
        .target(
            name: "Provisioning",
            dependencies: ["FieldgateCore", "IoTHub", "HubTunnel", "MessageAuthentication", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
        .target(
            name: "Gateway",
            dependencies: ["Uplink", "Spool", "Systemd", "Gzip", "FieldgateCore", "SoftwareUpdate", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
        // systemd: notify protocol and the journal (the owner of CSystemd); the daemon's log rules.
        .target(
            name: "Systemd",
            dependencies: ["CSystemd", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
        // The daemon's local control socket (fieldgatectl talks to it).
        .target(
            name: "ControlSocket",
            dependencies: ["FieldgateCore", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
        .target(
            name: "HubEmulator",
            dependencies: [
                "ProtonAMQP", "IoTHub", "FieldgateCore", "MessageAuthentication",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "HubDeviceClient",
            dependencies: ["ProtonAMQP", "IoTHub", "FieldgateCore", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
        .target(
            name: "HubServiceClient",
            dependencies: [
                "IoTHub", "FieldgateCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "fieldgate-hub",
            dependencies: [
                "HubEmulator", "HubDeviceClient", "HubServiceClient", "IoTHub", "FieldgateCore", "HubTunnel",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "GatewayConfig",
            dependencies: [
                "Uplink", "HubTunnel", "Spool", "UDPAdapter", "SerialAdapter", "ModbusAdapter", "ModbusIO", "FrameCodecs", "FieldgateCore",
                "SoftwareUpdate", "Provisioning", .product(name: "TOMLKit", package: "TOMLKit"),
            ],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "fieldgated",
            dependencies: [
                "Gateway", "GatewayConfig", "Systemd", "ControlSocket", "FieldgateCtl", "Uplink", "UDPAdapter", "SerialAdapter", "ModbusAdapter",
                "ModbusIO", "Spool", "FieldgateCore", "CMalloc", "SoftwareUpdate", "HubTunnel", "Provisioning",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        // fieldgatectl's commands: its own executable, and inside fieldgated (run as `fieldgatectl`).
        .target(
            name: "FieldgateCtl",
            dependencies: [
                "ControlSocket", "Gateway", "GatewayConfig", "Uplink", "Spool", "FieldgateCore", "HubDeviceClient", "ProtonAMQP", "IoTHub", "HubTunnel",
                "CTLSProbe", "SoftwareUpdate", "Provisioning",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "fieldgatectl",
            dependencies: ["FieldgateCtl", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: strictSettings
        ),
        .executableTarget(name: "spool-harness", dependencies: ["Spool"], swiftSettings: strictSettings),
        // The memory floor under fieldgated: the same AMQP work in C with Proton and OpenSSL only, alone and on a
        // thread of a Swift program whose runtime idles as a daemon's does (`fieldgate-bench daemon-memory --floor`).
        .target(name: "CProtonFloor", linkerSettings: [.linkedLibrary("qpid-proton"), .linkedLibrary("crypto")]),
        .executableTarget(name: "proton-floor", dependencies: ["CProtonFloor"]),
        .executableTarget(name: "proton-floor-swift", dependencies: ["CProtonFloor"], swiftSettings: strictSettings),
        .executableTarget(
            name: "fieldgate-bench",
            dependencies: [
                "HubDeviceClient", "HubServiceClient", "ProtonAMQP", "IoTHub", "FieldgateCore", "Spool", "Uplink", "UDPAdapter",
                "ModbusAdapter", "ModbusIO", "ControlSocket", "HubTunnel",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),

        // A real fieldgate-hub for tests (shared by the test targets that talk to one).
        .target(
            name: "HubTestSupport",
            dependencies: [
                "HubEmulator", "HubDeviceClient", "ProtonAMQP", "IoTHub", "FieldgateCore", "ControlSocket",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/HubTestSupport",
            swiftSettings: strictSettings
        ),
        .testTarget(name: "UDPAdapterTests", dependencies: ["UDPAdapter", "FrameCodecs", "Uplink", "Spool", "FieldgateCore"], swiftSettings: strictSettings),
        .testTarget(name: "FrameCodecsTests", dependencies: ["FrameCodecs", "FieldgateCore"], swiftSettings: strictSettings),
        .testTarget(name: "SerialAdapterTests", dependencies: ["SerialAdapter", "FrameCodecs", "Uplink", "Spool", "FieldgateCore"], swiftSettings: strictSettings),
        .testTarget(name: "SoftwareUpdateTests", dependencies: ["SoftwareUpdate", "FieldgateCore", "MessageAuthentication", "HubTunnel", "HubEmulator", "HubTestSupport",
                                                    .product(name: "Logging", package: "swift-log")], swiftSettings: strictSettings),
        .testTarget(name: "GatewayTests", dependencies: ["GatewayConfig", "FieldgateCore", "HubTunnel", "Uplink", "Spool", "UDPAdapter", "SerialAdapter", "FrameCodecs", "ModbusAdapter", "ModbusIO", "Provisioning"], swiftSettings: strictSettings),
        .testTarget(name: "ModbusAdapterTests", dependencies: ["ModbusAdapter", "ModbusIO", "HubTestSupport", "Uplink", "Spool", "FieldgateCore"], swiftSettings: strictSettings),
        .testTarget(name: "ProtonAMQPTests", dependencies: ["ProtonAMQP"], swiftSettings: strictSettings),
        .testTarget(name: "WebSocketFramingTests", dependencies: ["WebSocketFraming"], swiftSettings: strictSettings),
        .testTarget(
            name: "DaemonTests",
            dependencies: ["HubTestSupport", "HubEmulator", "HubServiceClient", "ControlSocket", "FieldgateCore", "IoTHub", "ProtonAMQP",
                           .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
        .testTarget(name: "ProvisioningTests", dependencies: ["Provisioning", "IoTHub", "FieldgateCore"], swiftSettings: strictSettings),
        .testTarget(name: "SystemdTests", dependencies: ["Systemd", .product(name: "Logging", package: "swift-log")], swiftSettings: strictSettings),
        .testTarget(name: "FieldgateCoreTests", dependencies: ["FieldgateCore", "HubTestSupport"], swiftSettings: strictSettings),
        .testTarget(name: "IoTHubTests", dependencies: ["IoTHub", "MessageAuthentication"], swiftSettings: strictSettings),
        .testTarget(name: "SpoolTests", dependencies: ["Spool", "FieldgateCore"], swiftSettings: strictSettings),
        .testTarget(
            name: "UplinkTests",
            dependencies: ["Uplink", "HubTunnel", "Gateway", "Gzip", "HubTestSupport", "HubEmulator", "HubServiceClient", "Spool", "ProtonAMQP", "IoTHub", "FieldgateCore"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "HubEmulatorTests",
            dependencies: ["HubTestSupport", "HubEmulator", "HubDeviceClient", "HubServiceClient", "ProtonAMQP", "IoTHub", "FieldgateCore",
                           "HubTunnel", "Provisioning", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
    ]
)
