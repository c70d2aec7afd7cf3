// swift-tools-version:6.0
// R3: Rollout Routing Replay as a service. See README.md and ../shared/CONVENTIONS.md.
import PackageDescription

// On x86_64, Zen 3 / Haswell-class CPUs (AVX2 + FMA + F16C): vectorised element loops and Float16
// conversion in one instruction instead of a library call per element. Other architectures (aarch64:
// Graviton, Apple silicon under Docker) build for their baseline; the C kernels there take their
// portable paths. The manifest is evaluated on the build machine, so this is the native architecture.
#if arch(x86_64)
let cpu: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "haswell"])]
#else
let cpu: [SwiftSetting] = []
#endif
// The engine's kernels hand raw pointers to fork-join workers over disjoint ranges, which Swift 6's
// Sendable checking cannot express; it builds in the Swift 5 language mode. Everything else is Swift 6.
let engine: [SwiftSetting] = cpu + [.swiftLanguageMode(.v5)]

let package = Package(
    name: "R3",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "r3", targets: ["r3"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // the logging API every server-side Swift library speaks; our handler writes JSON lines (Sources/Log)
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS"),
        .target(name: "MoE", dependencies: ["CBLAS", "CPosix", "JSON", "Routes"], swiftSettings: engine),
        .target(name: "JSON", dependencies: ["CPosix"], swiftSettings: cpu),
        .target(name: "Routes", dependencies: ["CPosix", "JSON"], swiftSettings: cpu),
        .target(name: "CPosix"),
        .systemLibrary(name: "CLibPQ", path: "Sources/CLibPQ"),
        .target(name: "Store", dependencies: ["CLibPQ", "CPosix", "Routes"], swiftSettings: cpu),
        .target(name: "Log", dependencies: [.product(name: "Logging", package: "swift-log")], swiftSettings: cpu),
        .target(name: "HTTP", dependencies: ["CPosix", "JSON", .product(name: "Logging", package: "swift-log")], swiftSettings: cpu),
        .target(name: "RL", dependencies: ["JSON", "MoE", "Routes"], swiftSettings: cpu),
        .target(name: "Service", dependencies: ["HTTP", "Store", "Routes", "RL", "MoE", "JSON", "CPosix", "Log",
                                                .product(name: "Logging", package: "swift-log")], swiftSettings: cpu),
        .executableTarget(
            name: "r3",
            dependencies: ["MoE", "Routes", "RL", "Service", "Store", "HTTP", "Log", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                           .product(name: "Logging", package: "swift-log")],
            swiftSettings: cpu),
        .testTarget(name: "MoETests", dependencies: ["MoE", "Routes"], swiftSettings: engine),
        .testTarget(name: "JSONTests", dependencies: ["JSON", "CPosix"], swiftSettings: cpu),
        .testTarget(name: "RoutesTests", dependencies: ["Routes", "JSON", "CPosix"], swiftSettings: cpu),
        .testTarget(name: "HTTPTests", dependencies: ["HTTP"], swiftSettings: cpu),
        .testTarget(name: "StoreTests", dependencies: ["Store", "CPosix"], swiftSettings: cpu),
        .testTarget(name: "RLTests", dependencies: ["RL", "MoE", "Routes", "JSON"], swiftSettings: cpu),
        .testTarget(name: "ServiceTests", dependencies: ["Service", "RL", "MoE", "Store", "Routes", "JSON", "HTTP", "CPosix", "Log",
                                                     .product(name: "Logging", package: "swift-log")], swiftSettings: cpu),
    ]
)
