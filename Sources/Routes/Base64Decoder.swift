// Base64Decoder: standard base64 (RFC 4648 §4, padded) decoded as it arrives, in pieces of any size, so
// that a 67 MB routes string in a request body is never held whole. Strict: any byte outside the
// alphabet, padding before the end, or a length that is not a multiple of 4 is an error.

import CPosix

public struct Base64Decoder {
    static let table: [UInt8] = {
        var t = [UInt8](repeating: 0xFF, count: 256)
        for (i, c) in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8.enumerated() { t[Int(c)] = UInt8(i) }
        return t
    }()

    private var carry: (UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0)
    private var carried = 0
    private var padding = 0     // '=' the final group needs (once the first arrived; then only '=' may follow)
    private var padSeen = 0
    public private(set) var decodedBytes = 0
    private var scratch: [UInt8] = []

    public init() {}

    /// Decodes `input`, handing the bytes it completes to `sink` (possibly none).
    public mutating func feed(_ input: UnsafeRawBufferPointer, _ sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        if input.isEmpty { return }
        if padding > 0 {
            guard input.allSatisfy({ $0 == UInt8(ascii: "=") }), padSeen + input.count <= padding else {
                throw RoutesError.malformed("base64 continues after its '=' padding")
            }
            padSeen += input.count
            return
        }
        let cap = (input.count + 4) / 4 * 3 + 32   // + the bulk decoder's 32-byte stores
        if scratch.count < cap { scratch = [UInt8](repeating: 0, count: max(cap, 4096)) }
        var produced = 0
        try Base64Decoder.table.withUnsafeBufferPointer { t in
            try scratch.withUnsafeMutableBufferPointer { out in
                var i = 0
                let n = input.count
                // finish a group begun in an earlier piece
                while carried > 0 && carried < 4 && i < n {
                    let c = input[i]
                    if c == UInt8(ascii: "=") { break }
                    let v = t[Int(c)]
                    guard v != 0xFF else { throw RoutesError.malformed("base64 has a byte outside its alphabet (0x\(String(c, radix: 16)))") }
                    switch carried { case 1: carry.1 = v; case 2: carry.2 = v; default: carry.3 = v }
                    carried += 1; i += 1
                }
                if carried == 4 {
                    out[produced] = carry.0 << 2 | carry.1 >> 4
                    out[produced + 1] = carry.1 << 4 | carry.2 >> 2
                    out[produced + 2] = carry.2 << 6 | carry.3
                    produced += 3; carried = 0
                }
                // whole groups: 32 characters a step with AVX2, then 4 at a time
                if carried == 0 && n - i >= 32 {
                    var written: UInt64 = 0
                    let used = r3_base64_decode_bulk(input.baseAddress!.assumingMemoryBound(to: UInt8.self) + i, UInt64(n - i),
                                                     out.baseAddress! + produced, UInt64(out.count - produced), &written)
                    i += Int(used); produced += Int(written)
                }
                if carried == 0 {
                    while i + 4 <= n {
                        let a = t[Int(input[i])], b = t[Int(input[i + 1])], c = t[Int(input[i + 2])], d = t[Int(input[i + 3])]
                        if (a | b | c | d) & 0xC0 != 0 { break }   // '=', or a byte outside the alphabet: the slow path below
                        out[produced] = a << 2 | b >> 4
                        out[produced + 1] = b << 4 | c >> 2
                        out[produced + 2] = c << 6 | d
                        produced += 3; i += 4
                    }
                }
                // the tail: a partial group, padding, or an error
                while i < n {
                    let c = input[i]
                    if c == UInt8(ascii: "=") {
                        guard carried >= 2 else { throw RoutesError.malformed("base64 padding '=' in the wrong place") }
                        padding = 4 - carried
                        guard input[i...].allSatisfy({ $0 == UInt8(ascii: "=") }), n - i <= padding else {
                            throw RoutesError.malformed("base64 continues after its '=' padding")
                        }
                        padSeen = n - i
                        out[produced] = carry.0 << 2 | carry.1 >> 4; produced += 1
                        if carried == 3 { out[produced] = carry.1 << 4 | carry.2 >> 2; produced += 1 }
                        carried = 0
                        break
                    }
                    let v = t[Int(c)]
                    guard v != 0xFF else { throw RoutesError.malformed("base64 has a byte outside its alphabet (0x\(String(c, radix: 16)))") }
                    switch carried { case 0: carry.0 = v; case 1: carry.1 = v; case 2: carry.2 = v; default: carry.3 = v }
                    carried += 1; i += 1
                    if carried == 4 {
                        out[produced] = carry.0 << 2 | carry.1 >> 4
                        out[produced + 1] = carry.1 << 4 | carry.2 >> 2
                        out[produced + 2] = carry.2 << 6 | carry.3
                        produced += 3; carried = 0
                    }
                }
                decodedBytes += produced
                try sink(UnsafeRawBufferPointer(start: out.baseAddress, count: produced))
            }
        }
    }

    /// Ends the input: a partial group left over is an error.
    public func finish() throws {
        if carried != 0 || padSeen != padding { throw RoutesError.malformed("base64 length is not a multiple of 4 (is the '=' padding missing?)") }
    }

    /// Decodes a whole string (tests and small inputs).
    public static func decode(_ s: String) throws -> [UInt8] {
        var d = Base64Decoder(), out: [UInt8] = []
        var text = s
        try text.withUTF8 { try d.feed(UnsafeRawBufferPointer($0)) { out.append(contentsOf: $0) } }
        try d.finish()
        return out
    }
}
