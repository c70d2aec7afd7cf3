// RouteBuilder: collects expert ids as they stream in (from base64 int32, nested JSON lists, .npy, raw
// bytes) straight into the packed stored form, one byte per id while every id fits, so a request never
// holds an int32 copy of its routes. `finish` then fixes the shape from the layout and token count,
// checks every row, drops the dense layers' rows, and returns the packed MoE-layer routes.

import CPosix

public struct RouteBuilder: Sendable {
    /// 1 while every value is in -1...254 (0xFF = -1), else 2 (0xFFFF = -1).
    public private(set) var width = 1
    public private(set) var count = 0
    var bytes: [UInt8] = []
    /// 0xFF came from unsigned 8-bit input: it is expert 255 when there are exactly 256 experts.
    var unsignedAllOnes = false
    public let maxValues: Int

    public init(maxValues: Int = 1 << 31 - 1, reserve: Int = 0) {
        self.maxValues = maxValues
        bytes.reserveCapacity(min(reserve, 1 << 28))
    }

    public var storedBytes: Int { bytes.count }

    /// Room for `values` more ids one byte each (a declared shape, before its data), at most `maxValues`
    /// and 16M (a 32K-token × 48 × 8 rollout is 12.6M): the bytes then grow in place instead of being copied
    /// at every doubling. A claim is not trusted further than that before its data arrives.
    public mutating func reserve(values: Int) {
        let want = bytes.count + min(max(0, values), maxValues - count, 1 << 24) * width
        if want > bytes.capacity { bytes.reserveCapacity(min(want, 1 << 31)) }
    }

    private mutating func widen() {
        var w = [UInt8](repeating: 0, count: count * 2)
        for i in 0..<count {
            let v = bytes[i]
            let x: UInt16 = v == 0xFF && !unsignedAllOnes ? 0xFFFF : UInt16(v)
            w[2 * i] = UInt8(x & 0xFF); w[2 * i + 1] = UInt8(x >> 8)
        }
        bytes = w
        width = 2
    }

    private func bad(_ v: Int64) -> RoutesError {
        .invalid("expert id \(v) at flat index \(count) is neither -1 (missing) nor in 0...65534")
    }

    /// One signed value: -1 (missing) or an expert id.
    @inline(__always)
    public mutating func append(_ v: Int64) throws {
        guard count < maxValues else { throw RoutesError.invalid("routes have more than \(maxValues) values") }
        if width == 1 {
            if v >= -1 && v < 255 { bytes.append(UInt8(truncatingIfNeeded: v)); count += 1; return }
            guard v >= 0 && v < 65_535 else { throw bad(v) }
            widen()
        }
        guard v >= -1 && v < 65_535 else { throw bad(v) }
        let x = UInt16(truncatingIfNeeded: v)
        bytes.append(UInt8(x & 0xFF)); bytes.append(UInt8(x >> 8))
        count += 1
    }

    /// Little-endian elements of `dtype`, any number of whole elements.
    public mutating func append(_ raw: UnsafeRawBufferPointer, dtype: IntDType) throws {
        let n = raw.count / dtype.size
        guard count + n <= maxValues else { throw RoutesError.invalid("routes have more than \(maxValues) values") }
        switch dtype {
        case .int32:
            // the common case (SGLang): narrowed in place at the end of the bytes while the ids fit a byte
            var i = 0
            if width == 1 && n > 0 {
                if bytes.capacity < bytes.count + n { bytes.reserveCapacity(max(bytes.count + n, bytes.capacity * 2)) }   // doubling, never exact
                let start = bytes.count
                bytes.append(contentsOf: repeatElement(0, count: n))
                i = bytes.withUnsafeMutableBufferPointer { Int(r3_narrow_i32_u8(raw.baseAddress!, UInt64(n), $0.baseAddress! + start)) }
                if i < n { bytes.removeLast(n - i) }
                count += i
            }
            while i < n { try append(Int64(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self)))); i += 1 }
        case .int64: for i in 0..<n { try append(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self))) }
        case .int16: for i in 0..<n { try append(Int64(Int16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: Int16.self)))) }
        case .int8: for i in 0..<n { try append(Int64(Int8(bitPattern: raw[i]))) }
        case .uint8:
            if width == 1 {
                bytes.append(contentsOf: raw[0..<n])
                if raw[0..<n].contains(0xFF) { unsignedAllOnes = true }
                count += n
            } else {
                for i in 0..<n { try append(raw[i] == 0xFF ? -1 : Int64(raw[i])) }
            }
        case .uint16:
            for i in 0..<n {
                let v = UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                try append(v == 0xFFFF ? -1 : Int64(v))
            }
        }
    }

    /// The id at flat index `i`: -1 for missing; 255 stays 255 (a caller knowing E resolves it).
    @inline(__always) func value(_ i: Int) -> Int32 {
        if width == 1 { let v = bytes[i]; return v == 0xFF && !unsignedAllOnes ? -1 : Int32(v) }
        let v = UInt16(bytes[2 * i]) | UInt16(bytes[2 * i + 1]) << 8
        return v == 0xFFFF ? -1 : Int32(v)
    }

    /// Appends every value of `other` (its rows after this builder's). Both must hold signed input
    /// (vLLM 0.21's prompt and completion lists).
    public mutating func append(contentsOf other: RouteBuilder) throws {
        guard !other.unsignedAllOnes && !unsignedAllOnes else { throw RoutesError.invalid("cannot join routes sent as unsigned 8-bit ids with others") }
        for i in 0..<other.count { try append(Int64(other.value(i))) }
    }

    // MARK: finish

    /// The common case in one pass over bytes: ids stored one per byte, at most 255 experts (so 0xFF is
    /// "missing" whatever the input's signedness). Checks every row as the general path does and returns
    /// the MoE layers' bytes, or nil at the first problem (the general path then reports it). The pass is
    /// `r3_routes_pack_u8` (routes.c): with every layer MoE and top-8, four rows per AVX2 step (a duplicate
    /// is a byte equal to one of its row's byte rotations), and no copy: the stored form is the input.
    func fastPack(rows: Int, L: Int, K: Int, E: Int, moeIndex: [Int], dense: [Int]) -> [UInt8]? {
        let identity = dense.isEmpty && moeIndex.count == L && moeIndex.elementsEqual(0..<L)
        var out = identity ? [] : [UInt8](repeating: 0, count: rows * moeIndex.count * K)
        let moe32 = moeIndex.map { Int32($0) }, dense32 = dense.map { Int32($0) }
        let ok = bytes.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                moe32.withUnsafeBufferPointer { m in
                    dense32.withUnsafeBufferPointer { d in
                        r3_routes_pack_u8(src.baseAddress, UInt64(rows), UInt32(L), UInt32(K), UInt32(E), m.baseAddress, UInt32(m.count),
                                          d.baseAddress, UInt32(d.count), identity ? nil : dst.baseAddress) == 1
                    }
                }
            }
        }
        guard ok else { return nil }
        return identity ? bytes : out   // every layer MoE: the stored form is the input (count = rows × L × K)
    }

    /// What the caller knows of the shape: the three dimensions when the encoding carried them
    /// (.npy, {dtype, shape, data}, nrlre1, nested lists), else nil (SGLang's bare base64).
    /// `rows` are the row counts allowed (T − 1 − start and T − start for a sequence of T tokens).
    public func finish(shape: [Int]?, rows allowed: [Int], layout: RouteLayout) throws -> PackedRoutes {
        let E = layout.numExperts, K = layout.topK
        let hidden = layout.hiddenLayers, moe = layout.moeLayers.count
        let expectedText = allowed.map(String.init).joined(separator: " or ")
        var rows = 0, L = 0
        if let s = shape {
            guard s.count == 3 else { throw RoutesError.invalid("routes must have 3 dimensions [rows, layers, top_k], got \(s.count)") }
            guard RouteShape.count(s) == count else { throw RoutesError.invalid("shape \(s) does not match \(count) values") }
            guard s[2] == K else { throw RoutesError.invalid("routes have top_k \(s[2]); the model routes each token to \(K) experts") }
            guard s[1] == hidden || s[1] == moe else {
                throw RoutesError.invalid(layout.hasDenseLayers
                    ? "routes have \(s[1]) layers; the model has \(hidden) hidden layers, \(moe) of them MoE: send \(hidden) (every layer, dense rows 0) or \(moe) (MoE layers only)"
                    : "routes have \(s[1]) layers; the model has \(hidden) MoE layers")
            }
            guard allowed.contains(s[0]) else { throw RoutesError.invalid("routes have \(s[0]) rows; expected \(expectedText) for this sequence") }
            rows = s[0]; L = s[1]
        } else {
            var found = false
            outer: for l in (hidden == moe ? [hidden] : [hidden, moe]) {
                for r in allowed where r >= 0 && RouteShape.count([r, l, K]) == count { rows = r; L = l; found = true; break outer }
            }
            guard found else {
                let per = allowed.map { r in hidden == moe ? "\(r)×\(hidden)×\(K)" : "\(r)×\(hidden)×\(K) or \(r)×\(moe)×\(K)" }.joined(separator: " or ")
                throw RoutesError.invalid("\(count) expert ids do not fit this sequence: expected \(per) (rows × layers × top_k)")
            }
        }
        let moeIndex: [Int] = L == hidden ? layout.moeLayers : Array(0..<moe)
        if width == 1 && E <= 255, let out = fastPack(rows: rows, L: L, K: K, E: E, moeIndex: moeIndex, dense: L == hidden ? layout.denseLayers : []) {
            return PackedRoutes(rows: rows, layers: moe, topK: K, numExperts: E, width: 1, bytes: out, hiddenLayers: hidden, moeLayers: layout.moeLayers)
        }
        // the general path: any width and expert count; it also names the first error the fast path met
        var anyMissing = false
        var out = [UInt8](repeating: 0, count: rows * moe * K * (E <= 256 ? 1 : 2))
        var isMoE = [Bool](repeating: L == moe, count: L)
        for l in moeIndex { isMoE[l] = true }
        let denseLayers = L == hidden ? layout.denseLayers : []
        var row = [Int32](repeating: 0, count: K)
        var seen: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        for t in 0..<rows {
            // dense layers: all 0 (SGLang, vLLM) or all -1
            for l in denseLayers {
                let base = (t * L + l) * K
                let first = value(base)
                guard first == 0 || first == -1, (1..<K).allSatisfy({ value(base + $0) == first }) else {
                    let got = (0..<K).map { String(value(base + $0)) }.joined(separator: ", ")
                    throw RoutesError.invalid("layer \(l) is dense in this model, but row [\(t), \(l)] holds [\(got)]: a dense layer's row must be all 0 or all -1")
                }
            }
            for (m, l) in moeIndex.enumerated() {
                let base = (t * L + l) * K
                var missing = 0
                seen = (0, 0, 0, 0)
                for j in 0..<K {
                    var e = value(base + j)
                    if e == 255 && unsignedAllOnes && width == 1 && E != 256 { e = -1 }
                    row[j] = e
                    if e == -1 { missing += 1; continue }
                    guard e >= 0 && Int(e) < E else { throw RoutesError.invalid("expert id \(e) at [\(t), \(l), \(j)] is outside [0, \(E))") }
                    if E <= 256 {
                        let bit = UInt64(1) << UInt64(e & 63)
                        let dup: Bool
                        switch e >> 6 {
                        case 0: dup = seen.0 & bit != 0; seen.0 |= bit
                        case 1: dup = seen.1 & bit != 0; seen.1 |= bit
                        case 2: dup = seen.2 & bit != 0; seen.2 |= bit
                        default: dup = seen.3 & bit != 0; seen.3 |= bit
                        }
                        if dup { throw RoutesError.invalid("expert \(e) appears twice at [\(t), \(l)]") }
                    } else {
                        for k in 0..<j where row[k] == e { throw RoutesError.invalid("expert \(e) appears twice at [\(t), \(l)]") }
                    }
                }
                if missing != 0 && missing != K { throw RoutesError.invalid("row [\(t), \(l)] is partly missing: -1 must fill a whole row") }
                if missing == K { anyMissing = true }
                let o = (t * moe + m) * K
                if E <= 256 {
                    for j in 0..<K { out[o + j] = row[j] == -1 ? 0xFF : UInt8(row[j]) }
                } else {
                    for j in 0..<K {
                        let x = row[j] == -1 ? UInt16(0xFFFF) : UInt16(row[j])
                        out[2 * (o + j)] = UInt8(x & 0xFF); out[2 * (o + j) + 1] = UInt8(x >> 8)
                    }
                }
            }
        }
        var width = E <= 256 ? 1 : 2
        if E == 256 && anyMissing {   // 0xFF is expert 255 here: missing rows need two bytes per id
            width = 2
            var w = [UInt8](); w.reserveCapacity(out.count * 2)
            for t in 0..<rows {
                for l in moeIndex {
                    for j in 0..<K {
                        let e = value((t * L + l) * K + j)
                        let x: UInt16 = e == -1 ? 0xFFFF : UInt16(e)
                        w.append(UInt8(x & 0xFF)); w.append(UInt8(x >> 8))
                    }
                }
            }
            out = w
        }
        return PackedRoutes(rows: rows, layers: moe, topK: K, numExperts: E, width: width, bytes: out,
                            hiddenLayers: hidden, moeLayers: layout.moeLayers)
    }
}
