// r3: the command-line entry point. Every failure is one line on stderr and a non-zero exit.
import ArgumentParser
import Foundation
import MoE

@main
struct R3: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "r3",
        abstract: "Rollout Routing Replay for Mixture-of-Experts RL.",
        subcommands: [ServeCommand.self, WorkerCommand.self, DemoCommand.self, StudyCommand.self, MigrateCommand.self, KeysCommand.self, QuotasCommand.self, ForwardCommand.self, GenerateCommand.self, InitModelCommand.self, BenchCommand.self])
}

/// Parses "3,17,42" into token ids.
func parseIDs(_ text: String, option: String) throws -> [Int32] {
    let parts = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
    guard !parts.isEmpty, !(parts.count == 1 && parts[0].isEmpty) else { throw ValidationError("\(option) is empty") }
    return try parts.enumerated().map { i, p in
        guard let v = Int32(p), v >= 0 else { throw ValidationError("\(option): '\(p)' at position \(i) is not a non-negative integer") }
        return v
    }
}

func parseNumerics(_ name: String) throws -> Numerics {
    guard let n = Numerics(name: name) else { throw ValidationError("--precision must be fp32, bf16, fp8 or deterministic, got '\(name)'") }
    return n
}

func loadModel(_ path: String) throws -> Model {
    try Model.load(directory: URL(fileURLWithPath: path))
}

/// Pretty JSON with stable key order.
func printJSON(_ object: Any) throws {
    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
    FileHandle.standardOutput.write(data)
    FileHandle.standardOutput.write(Data("\n".utf8))
}
