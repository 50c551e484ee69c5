// swift-tools-version:6.2
// libFuzzer targets, kept out of the main package: their executables have no main of their own (libFuzzer
// supplies it under --sanitize=fuzzer), so a plain `swift build` of the main package must not see them.
// Run: scripts/fuzz.sh [seconds]
import PackageDescription

let package = Package(
    name: "fieldgate-fuzz",
    platforms: [.macOS(.v15)],
    dependencies: [.package(name: "fieldgate", path: "..")],
    targets: [
        .executableTarget(name: "spool-fuzz", dependencies: [.product(name: "Spool", package: "fieldgate")]),
        .executableTarget(name: "udp-fuzz", dependencies: [.product(name: "UDPAdapter", package: "fieldgate")]),
        .executableTarget(name: "frame-fuzz", dependencies: [.product(name: "FrameCodecs", package: "fieldgate")]),
    ]
)
