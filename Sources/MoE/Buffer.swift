// Buffer: an owned, 64-byte aligned, zero-initialised array of a trivial element type.
// Parameters, gradients, optimiser state and activations all live in Buffers carved by size tables.

public final class Buffer<Element> {
    public let count: Int
    public let base: UnsafeMutablePointer<Element>

    public init(count: Int, zero: Bool = true) {
        precondition(count >= 0)
        self.count = count
        let bytes = max(1, count) * MemoryLayout<Element>.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        if zero { raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes) }
        base = raw.bindMemory(to: Element.self, capacity: max(1, count))
    }

    deinit { UnsafeMutableRawPointer(base).deallocate() }

    public subscript(i: Int) -> Element {
        get { base[i] }
        set { base[i] = newValue }
    }

    public var buffer: UnsafeMutableBufferPointer<Element> { .init(start: base, count: count) }
    public func array() -> [Element] { Array(buffer) }
    public func zero() { UnsafeMutableRawPointer(base).initializeMemory(as: UInt8.self, repeating: 0, count: count * MemoryLayout<Element>.stride) }
    public func copy(from other: Buffer<Element>) {
        precondition(other.count == count)
        base.update(from: other.base, count: count)
    }
}

/// Arena: a bump allocator over one Buffer, for carving activation workspaces once per shape.
struct ArenaPlan {
    private(set) var total = 0
    /// Reserves `count` elements, 16-element aligned (64 bytes for Float), and returns the offset.
    mutating func take(_ count: Int) -> Int {
        let offset = total
        total += (count + 15) & ~15
        return offset
    }
}
