// CharTokenizer: the built-in character-level tokenizer: <pad>, <bos>, <eos>, then printable ASCII
// (32 … 126), one token per character. A model needs vocab_size >= 98 to use it.
public struct CharTokenizer: Sendable {
    public static let pad: Int32 = 0, bos: Int32 = 1, eos: Int32 = 2
    static let first: UInt8 = 32, last: UInt8 = 126
    /// Tokens the tokenizer uses: 3 specials + 95 printable characters.
    public static let vocabSize = 3 + Int(last - first) + 1

    public init() {}

    /// `<bos>` followed by one token per character. Throws on a character outside printable ASCII.
    public func encode(_ text: String, bos: Bool = true) throws -> [Int32] {
        var out: [Int32] = bos ? [CharTokenizer.bos] : []
        for (i, b) in text.utf8.enumerated() {
            guard b >= CharTokenizer.first && b <= CharTokenizer.last else {
                throw RLError.invalid("text has a character outside printable ASCII at byte \(i); the built-in tokenizer covers 32...126")
            }
            out.append(Int32(b - CharTokenizer.first) + 3)
        }
        return out
    }

    /// The text of `tokens`: specials are dropped, decoding stops at `<eos>`; ids beyond the tokenizer show as '?'.
    public func decode<S: Sequence>(_ tokens: S, stopAtEOS: Bool = true) -> String where S.Element == Int32 {
        var bytes: [UInt8] = []
        for t in tokens {
            if t == CharTokenizer.eos && stopAtEOS { break }
            if t < 3 { continue }
            bytes.append(Int(t) < CharTokenizer.vocabSize ? UInt8(t - 3) + CharTokenizer.first : UInt8(ascii: "?"))
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
