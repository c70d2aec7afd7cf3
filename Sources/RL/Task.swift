// Task: the built-in tasks with verifiable rewards, small enough for a tiny MoE on 2 cores.
//   addition  "<bos>57+68=" → "125"       digits: 1 … 6 per operand
//   sort      "<bos>sort 3142=" → "1234"  length: 2 … 12 digits
//   reverse   "<bos>rev abcd=" → "dcba"   length: 2 … 12 letters
// Reward = matching positions / max(|answer|, |response|): 1 exactly when correct, partial credit otherwise
// (a signal a small policy can climb). The response is read up to <eos>.
import MoE

public struct Task: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable { case addition, sort, reverse }
    public var kind: Kind
    /// Operand digits (addition) or sequence length (sort, reverse).
    public var difficulty: Int

    public static func defaultDifficulty(_ k: Kind) -> Int { k == .addition ? 2 : 4 }
    public static let difficultyRange: [Kind: ClosedRange<Int>] = [.addition: 1...6, .sort: 2...12, .reverse: 2...12]

    public init(kind: Kind, difficulty: Int? = nil) throws {
        self.kind = kind
        self.difficulty = difficulty ?? Task.defaultDifficulty(kind)
        let r = Task.difficultyRange[kind]!
        guard r.contains(self.difficulty) else { throw RLError.invalid("difficulty for \(kind.rawValue) must be in \(r.lowerBound)...\(r.upperBound)") }
    }

    public struct Problem: Sendable, Equatable {
        public var prompt: String
        public var answer: String
    }

    /// The longest answer, in characters (plus one for <eos> when sizing max_tokens).
    public var maxAnswerLength: Int { kind == .addition ? difficulty + 1 : difficulty }

    /// A problem drawn from `rng`.
    public func sample(_ rng: inout SeededRandom) -> Problem {
        func draw(_ n: Int) -> Int { Int(rng.next() % UInt64(n)) }
        switch kind {
        case .addition:
            var p = 1; for _ in 0..<difficulty { p *= 10 }
            let a = draw(p), b = draw(p)
            return Problem(prompt: "\(a)+\(b)=", answer: String(a + b))
        case .sort:
            let s = (0..<difficulty).map { _ in Character(String(draw(10))) }
            return Problem(prompt: "sort \(String(s))=", answer: String(s.sorted()))
        case .reverse:
            let letters = Array("abcdefghijklmnopqrstuvwxyz")
            let s = (0..<difficulty).map { _ in letters[draw(26)] }
            return Problem(prompt: "rev \(String(s))=", answer: String(s.reversed()))
        }
    }

    /// The reward of `response` (text up to <eos>) for a problem whose answer is `answer`.
    public static func reward(response: String, answer: String) -> Double {
        let r = Array(response.utf8), a = Array(answer.utf8)
        let n = max(r.count, a.count)
        if n == 0 { return 1 }
        var hits = 0
        for i in 0..<min(r.count, a.count) where r[i] == a[i] { hits += 1 }
        return Double(hits) / Double(n)
    }
}
