// Tests of the built-in tokenizer, tasks and rewards.
import MoE
import XCTest
@testable import RL

final class TaskTests: XCTestCase {
    func testTokenizerRoundTripsPrintableASCIIAndRejectsOthers() throws {
        let tok = CharTokenizer()
        let ids = try tok.encode("sort 3142= ~")
        XCTAssertEqual(ids.first, CharTokenizer.bos)
        XCTAssertTrue(ids.allSatisfy { $0 >= 1 && Int($0) < CharTokenizer.vocabSize })
        XCTAssertEqual(tok.decode(ids), "sort 3142= ~")
        XCTAssertEqual(tok.decode(ids + [CharTokenizer.eos] + (try tok.encode("junk", bos: false))), "sort 3142= ~")
        XCTAssertThrowsError(try tok.encode("é")) { XCTAssertTrue("\($0)".contains("printable ASCII")) }
        XCTAssertEqual(CharTokenizer.vocabSize, 98)
    }

    func testProblemsAreCorrectAndDeterministicPerSeedAndStep() throws {
        for kind in Task.Kind.allCases {
            let task = try Task(kind: kind, difficulty: 3)
            let a = task.problems(count: 20, seed: 7, step: 3, stream: 1)
            XCTAssertEqual(a, task.problems(count: 20, seed: 7, step: 3, stream: 1))
            XCTAssertNotEqual(a, task.problems(count: 20, seed: 7, step: 4, stream: 1))
            for p in a {
                XCTAssertTrue(p.prompt.hasSuffix("="))
                XCTAssertLessThanOrEqual(p.answer.count, task.maxAnswerLength, "\(p)")
                let body = String(p.prompt.dropLast())
                switch kind {
                case .addition:
                    let parts = body.split(separator: "+").map { Int($0)! }
                    XCTAssertEqual(Int(p.answer), parts[0] + parts[1])
                    XCTAssertTrue(parts.allSatisfy { $0 < 1000 })
                case .sort: XCTAssertEqual(p.answer, String(body.dropFirst(5).sorted()))
                case .reverse: XCTAssertEqual(p.answer, String(body.dropFirst(4).reversed()))
                }
            }
        }
        XCTAssertThrowsError(try Task(kind: .addition, difficulty: 9)) { XCTAssertTrue("\($0)".contains("1...6")) }
    }

    func testRewardIsOneOnlyWhenExactAndPartialOtherwise() {
        XCTAssertEqual(Task.reward(response: "125", answer: "125"), 1)
        XCTAssertEqual(Task.reward(response: "124", answer: "125"), 2.0 / 3.0, accuracy: 1e-12)
        XCTAssertEqual(Task.reward(response: "1250", answer: "125"), 0.75, accuracy: 1e-12)
        XCTAssertEqual(Task.reward(response: "", answer: "125"), 0)
        XCTAssertEqual(Task.reward(response: "x", answer: "125"), 0)
    }
}
