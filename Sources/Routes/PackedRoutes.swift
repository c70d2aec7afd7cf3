// PackedRoutes: the stored form: the MoE layers' rows only, one byte per expert id when the experts fit
// in uint8 (with 0xFF free for "missing"), else two (uint16 little-endian): at most a quarter of int32.
// It remembers which hidden layer each stored layer is, so every reader's layout can be served from it.
// CRC-32C guards the bytes.
import CPosix
import Foundation

public struct PackedRoutes: Sendable, Equatable {
    public var rows: Int
    /// Stored (MoE) layers.
    public var layers: Int
    public var topK: Int
    public var numExperts: Int
    /// 1 (uint8) or 2 (uint16 little-endian).
    public var width: Int
    public var bytes: Data
    public var checksum: UInt32
    /// num_hidden_layers of the model the routes came from, and the hidden index of each stored layer.
    public var hiddenLayers: Int
    public var moeLayers: [Int]

    /// Packs validated routes of a model whose every layer is MoE; uint8 when every id and the missing
    /// marker fit in a byte.
    public init(_ r: RouteArray, numExperts: Int) throws {
        try r.validate(numExperts: numExperts)
        let narrow = numExperts <= 255 || (numExperts == 256 && r.missingRows == 0)
        let dtype: IntDType = narrow ? .uint8 : .uint16
        rows = r.rows; layers = r.layers; topK = r.topK; self.numExperts = numExperts
        width = dtype.size
        bytes = try dtype.encode(r.ids, numExperts: numExperts)
        checksum = CRC32C.checksum(bytes)
        hiddenLayers = r.layers; moeLayers = Array(0..<r.layers)
    }

    /// Already packed bytes; the checksum is computed here.
    public init(rows: Int, layers: Int, topK: Int, numExperts: Int, width: Int, bytes: [UInt8], hiddenLayers: Int, moeLayers: [Int]) {
        self.rows = rows; self.layers = layers; self.topK = topK; self.numExperts = numExperts; self.width = width
        self.bytes = Data(bytes); checksum = CRC32C.checksum(self.bytes)
        self.hiddenLayers = hiddenLayers; self.moeLayers = moeLayers
    }

    /// As read back from the store (`hiddenLayers` / `moeLayers` nil for rows written before layouts).
    public init(rows: Int, layers: Int, topK: Int, numExperts: Int, width: Int, bytes: Data, checksum: UInt32,
                hiddenLayers: Int? = nil, moeLayers: [Int]? = nil) {
        self.rows = rows; self.layers = layers; self.topK = topK; self.numExperts = numExperts
        self.width = width; self.bytes = bytes; self.checksum = checksum
        self.hiddenLayers = hiddenLayers ?? layers; self.moeLayers = moeLayers ?? Array(0..<layers)
    }

    public var layout: RouteLayout {
        get throws { try RouteLayout(hiddenLayers: hiddenLayers, moeLayers: moeLayers, numExperts: numExperts, topK: topK) }
    }
    public var hasDenseLayers: Bool { moeLayers.count < hiddenLayers }

    /// Verifies size and checksum (a corrupted blob is an error, never silently wrong routes).
    public func verify() throws {
        guard width == 1 || width == 2 else { throw RoutesError.malformed("stored routes width \(width) is not 1 or 2") }
        guard bytes.count == rows * layers * topK * width else { throw RoutesError.malformed("stored routes have \(bytes.count) bytes for \(rows * layers * topK) ids") }
        guard CRC32C.checksum(bytes) == checksum else { throw RoutesError.malformed("stored routes fail their checksum") }
    }

    /// Unpacks the MoE layers, verifying size and checksum.
    public func unpack() throws -> RouteArray {
        try verify()
        let dtype: IntDType = width == 1 ? .uint8 : .uint16
        return try RouteArray(rows: rows, layers: layers, topK: topK, ids: dtype.decode(bytes, count: rows * layers * topK, numExperts: numExperts))
    }

    /// The stored rows [start, end).
    public func rows(_ r: Range<Int>) throws -> PackedRoutes {
        guard r.lowerBound >= 0, r.upperBound <= rows else { throw RoutesError.invalid("rows [\(r.lowerBound), \(r.upperBound)) are outside [0, \(rows))") }
        let w = layers * topK * width
        var p = self
        p.rows = r.count
        p.bytes = bytes.subdata(in: (bytes.startIndex + r.lowerBound * w)..<(bytes.startIndex + r.upperBound * w))
        p.checksum = CRC32C.checksum(p.bytes)
        return p
    }

    /// Rows of `other` (same layout) appended after row `at` (rows from `at` on are replaced).
    public func splicing(_ other: PackedRoutes, at: Int) throws -> PackedRoutes {
        guard other.layers == layers, other.topK == topK, other.numExperts == numExperts, other.moeLayers == moeLayers,
              other.hiddenLayers == hiddenLayers else { throw RoutesError.invalid("the new routes' layout differs from the stored routes'") }
        guard at >= 0, at <= rows else { throw RoutesError.invalid("rows start at \(at), past the \(rows) stored") }
        let w = width == other.width ? width : 2
        func widened(_ p: PackedRoutes) -> Data {
            if p.width == w { return p.bytes }
            var d = Data(count: p.bytes.count * 2)
            d.withUnsafeMutableBytes { dst in
                p.bytes.withUnsafeBytes { src in
                    for i in 0..<src.count { let x: UInt16 = src[i] == 0xFF && p.numExperts <= 255 ? 0xFFFF : UInt16(src[i]); dst.storeBytes(of: x.littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
                }
            }
            return d
        }
        var d = widened(self)
        d = d.prefix(at * layers * topK * w)
        d.append(widened(other))
        var p = self
        p.rows = at + other.rows; p.width = w; p.bytes = d; p.checksum = CRC32C.checksum(d)
        return p
    }
}

// MARK: serving

/// How a reader wants the routes: element type, layer axis, which rows, and NeMo-RL's T-th row.
public struct RouteOutput: Sendable, Equatable {
    public enum Layers: String, Sendable { case moeOnly = "moe_only", allLayers = "all_layers" }
    public var dtype: IntDType
    public var layers: Layers
    /// The value of a dense layer's row in `allLayers` (0, as SGLang and vLLM leave them, or -1).
    public var pad: Int32
    /// Stored rows to serve (nil: all).
    public var rows: Range<Int>?
    /// Append one row of `arange(K)` (NeMo-RL's last token, which never went into the model).
    public var finalRow: Bool

    public init(dtype: IntDType = .int32, layers: Layers = .moeOnly, pad: Int32 = 0, rows: Range<Int>? = nil, finalRow: Bool = false) {
        self.dtype = dtype; self.layers = layers; self.pad = pad; self.rows = rows; self.finalRow = finalRow
    }
}

extension PackedRoutes {
    public func shape(_ o: RouteOutput) -> [Int] {
        [(o.rows?.count ?? rows) + (o.finalRow ? 1 : 0), o.layers == .allLayers ? hiddenLayers : layers, topK]
    }

    /// Whether `dtype` can hold every expert id and the missing marker of these routes.
    public func check(_ o: RouteOutput) throws {
        let E = numExperts
        let ok: Bool
        let why: String
        switch o.dtype {
        case .int64, .int32: ok = true; why = ""
        case .int16: ok = E <= 32_768; why = "ids up to \(E - 1) do not fit int16"
        case .int8: ok = E <= 128; why = "ids up to \(E - 1) do not fit int8 (at most 128 experts)"
        case .uint8: ok = E <= 255 || (E == 256 && width == 1 && !(o.layers == .allLayers && o.pad == -1 && hasDenseLayers))
            why = E > 256 ? "ids up to \(E - 1) do not fit uint8" : "uint8 cannot mark missing rows for 256 experts; use int16 or int32"
        case .uint16: ok = E <= 65_535; why = "ids do not fit uint16"
        }
        if !ok { throw RoutesError.invalid(why) }
    }

    /// The routes as little-endian `o.dtype` bytes in `o`'s layout, straight from the packed form (one
    /// pass, no [Int32] in between), verifying the checksum.
    public func encode(_ o: RouteOutput, verified: Bool = false) throws -> Data {
        if !verified { try verify() }
        try check(o)
        let r = o.rows ?? 0..<rows
        guard r.lowerBound >= 0, r.upperBound <= rows else { throw RoutesError.invalid("rows [\(r.lowerBound), \(r.upperBound)) are outside [0, \(rows))") }
        let outLayers = o.layers == .allLayers ? hiddenLayers : layers
        // one byte per id asked of one-byte ids below 255, every output layer a stored one in order: the stored
        // bytes are the output (0xFF is -1 in int8 and 255 in uint8), handed out as a slice that shares them
        if width == 1 && o.dtype.size == 1 && numExperts <= 255 && !o.finalRow && (o.layers != .allLayers || moeLayers.elementsEqual(0..<hiddenLayers)) {
            let start = bytes.startIndex + r.lowerBound * layers * topK
            return bytes[start..<(start + r.count * layers * topK)]
        }
        let n = (r.count + (o.finalRow ? 1 : 0)) * outLayers * topK
        var out = Data(count: n * o.dtype.size)
        // stored layer of each output layer (-1: dense)
        var source = [Int](repeating: -1, count: outLayers)
        if o.layers == .allLayers { for (m, l) in moeLayers.enumerated() { source[l] = m } } else { for m in 0..<layers { source[m] = m } }
        let K = topK, L = layers, w = width
        let missing: Int32 = w == 1 ? (numExperts <= 255 ? 0xFF : -2) : 0xFFFF
        bytes.withUnsafeBytes { src in
            out.withUnsafeMutableBytes { dst in
                switch o.dtype {
                case .int64: PackedRoutes.emit(src, dst.bindMemory(to: Int64.self).baseAddress!, width: w, missing: missing, K: K, L: L, rows: r, source: source, pad: o.pad, finalRow: o.finalRow)
                case .int32: PackedRoutes.emit(src, dst.bindMemory(to: Int32.self).baseAddress!, width: w, missing: missing, K: K, L: L, rows: r, source: source, pad: o.pad, finalRow: o.finalRow)
                case .int16: PackedRoutes.emit(src, dst.bindMemory(to: Int16.self).baseAddress!, width: w, missing: missing, K: K, L: L, rows: r, source: source, pad: o.pad, finalRow: o.finalRow)
                case .int8: PackedRoutes.emit(src, dst.bindMemory(to: Int8.self).baseAddress!, width: w, missing: missing, K: K, L: L, rows: r, source: source, pad: o.pad, finalRow: o.finalRow)
                case .uint8: PackedRoutes.emit(src, dst.bindMemory(to: UInt8.self).baseAddress!, width: w, missing: missing, K: K, L: L, rows: r, source: source, pad: o.pad, finalRow: o.finalRow)
                case .uint16: PackedRoutes.emit(src, dst.bindMemory(to: UInt16.self).baseAddress!, width: w, missing: missing, K: K, L: L, rows: r, source: source, pad: o.pad, finalRow: o.finalRow)
                }
            }
        }
        return out
    }

    /// Writes rows `rows` of the stored ids as T, output layer by output layer (`source`: the stored layer
    /// of each, -1 for a dense layer written as `pad`), then NeMo's arange(K) row when asked. Runs of
    /// consecutive stored layers are converted in one tight loop; one-byte ids of the same width are copied.
    @inline(__always)
    static func emit<T: FixedWidthInteger>(_ src: UnsafeRawBufferPointer, _ dst: UnsafeMutablePointer<T>, width w: Int, missing: Int32,
                                           K: Int, L: Int, rows: Range<Int>, source: [Int], pad: Int32, finalRow: Bool) {
        let s = src.baseAddress!
        var k = 0
        /// n ids from flat stored index `from`.
        @inline(__always) func run(_ from: Int, _ n: Int) {
            if w == 1 {
                let p = s.assumingMemoryBound(to: UInt8.self) + from
                if T.bitWidth == 8 && missing == 0xFF {
                    // 0xFF is -1 in int8 and 255 in uint8: the stored bytes are the output
                    UnsafeMutableRawPointer(dst + k).copyMemory(from: p, byteCount: n)
                } else {
                    for i in 0..<n { let v = Int32(p[i]); dst[k + i] = T(truncatingIfNeeded: v == missing ? -1 : v).littleEndian }
                }
            } else {
                for i in 0..<n {
                    let v = Int32(UInt16(littleEndian: s.loadUnaligned(fromByteOffset: 2 * (from + i), as: UInt16.self)))
                    dst[k + i] = T(truncatingIfNeeded: v == missing ? -1 : v).littleEndian
                }
            }
            k += n
        }
        let outLayers = source.count
        let contiguous = source.enumerated().allSatisfy { $0.element == $0.offset } && outLayers == L
        if contiguous {
            run(rows.lowerBound * L * K, rows.count * L * K)   // MoE layers only: one run over every row
        } else {
            for t in rows {
                var ol = 0
                while ol < outLayers {
                    let m = source[ol]
                    if m < 0 {
                        for i in 0..<K { dst[k + i] = T(truncatingIfNeeded: pad).littleEndian }
                        k += K; ol += 1; continue
                    }
                    var n = 1   // consecutive stored layers
                    while ol + n < outLayers && source[ol + n] == m + n { n += 1 }
                    run((t * L + m) * K, n * K)
                    ol += n
                }
            }
        }
        if finalRow {
            for ol in 0..<outLayers { for j in 0..<K { dst[k] = T(truncatingIfNeeded: source[ol] < 0 ? pad : Int32(j)).littleEndian; k += 1 } }
        }
    }

    /// One little-endian int64 [rows (+1), K] array per stored (MoE) layer, in layer order: Megatron's
    /// RouterReplay input, written in one pass over the packed bytes.
    public func encodeLayersInt64(finalRow: Bool) throws -> [Data] {
        try verify()
        let K = topK, L = layers, T = rows + (finalRow ? 1 : 0)
        let missing: Int32 = width == 1 ? (numExperts <= 255 ? 0xFF : -2) : 0xFFFF
        let buffers = (0..<L).map { _ in UnsafeMutablePointer<Int64>.allocate(capacity: max(1, T * K)) }
        bytes.withUnsafeBytes { src in
            for t in 0..<rows {
                for m in 0..<L {
                    let d = buffers[m] + t * K, from = (t * L + m) * K
                    if width == 1 {
                        for j in 0..<K { let v = Int32(src[from + j]); d[j] = Int64(v == missing ? -1 : v).littleEndian }
                    } else {
                        for j in 0..<K {
                            let v = Int32(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * (from + j), as: UInt16.self)))
                            d[j] = Int64(v == missing ? -1 : v).littleEndian
                        }
                    }
                }
            }
        }
        if finalRow { for m in 0..<L { for j in 0..<K { buffers[m][rows * K + j] = Int64(j).littleEndian } } }
        return buffers.map { Data(bytesNoCopy: $0, count: T * K * 8, deallocator: .custom { p, _ in p.deallocate() }) }
    }

    /// The routes as [Int32] in `o`'s layout (JSON lists; tests).
    public func ids(_ o: RouteOutput) throws -> [Int32] {
        var p = o; p.dtype = .int32
        let d = try encode(p)
        return d.withUnsafeBytes { raw in (0..<(d.count / 4)).map { Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self)) } }
    }
}

/// CRC-32C (Castagnoli): the SSE4.2 instruction, with a table-driven reference twin for tests.
public enum CRC32C {
    public static func checksum(_ data: Data) -> UInt32 {
        data.withUnsafeBytes { r3_crc32c(0, $0.baseAddress, UInt64($0.count)) }
    }

    static let table: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? 0x82F6_3B78 ^ (c >> 1) : c >> 1 }
        return c
    }

    public static func reference(_ data: Data) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        data.withUnsafeBytes { raw in
            table.withUnsafeBufferPointer { t in
                for b in raw { c = t[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
            }
        }
        return c ^ 0xFFFF_FFFF
    }
}
