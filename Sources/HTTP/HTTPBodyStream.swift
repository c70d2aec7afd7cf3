// HTTPBodyStream: a request body flowing from the event loop to a handler thread through a bounded
// queue. The loop stops reading the socket while the queue is full and starts again when the handler
// has drained half of it, so a body of any size costs at most `highWater` bytes here, plus under 2 MiB of
// buffer slack: the read part of the first buffer, the free tail of the last, and the spares kept.
//
// The queue is a list of fixed-size buffers that the loop fills in order and the handler empties in order.
// While the framing allows it, the loop `recv`s the socket straight into the free tail of the last buffer
// (`receive`), and a handler that can work on borrowed bytes (`lend`) reads them where they lie: a large
// upload is copied once, by the kernel, instead of into a connection buffer, a queued chunk and the
// handler's own buffer in turn. Emptied buffers go back to a small free list, so a long body does not
// fault in fresh pages for every piece.
import Foundation
import Glibc

/// Why a body could not be read to its end.
public enum HTTPBodyError: Error, Equatable, CustomStringConvertible {
    /// No byte arrived for this many seconds while the handler waited.
    case timeout(Double)
    /// The client closed the connection, or sent a body that broke the framing (the parse error).
    case aborted(String)
    public var description: String {
        switch self {
        case let .timeout(s): return "the request body stalled for \(Int(s)) s"
        case let .aborted(m): return "the request body was cut off: \(m)"
        }
    }
}

public final class HTTPBodyStream: @unchecked Sendable {
    /// One queue buffer: bytes [0, filled) arrived; the handler has read [0, read) of them. Only the loop
    /// writes past `filled` (of the last buffer), only the handler reads below it, and both move the
    /// marks under `cond`.
    private struct Buffer {
        let base: UnsafeMutableRawPointer
        let capacity: Int
        var filled = 0
        var read = 0
    }
    /// Size of a queue buffer; a larger in-memory body (`init(data:)`) gets one buffer of its own size.
    static let bufferBytes = 256 << 10
    /// Emptied standard buffers kept for reuse, at most this many.
    static let spareLimit = 4

    private let cond = NSCondition()
    private var buffers: [Buffer] = []
    private var spares: [UnsafeMutableRawPointer] = []
    private var queued = 0
    private var finished = false
    private var failure: HTTPBodyError?
    private var pausedForRoom = false
    let highWater: Int
    let stallTimeout: Double
    /// Called (off the loop) when the handler drained a full queue: the loop may read again.
    let onDrain: @Sendable () -> Void
    /// Content-Length when the client declared one.
    public let declaredLength: Int?
    /// Bytes handed to the handler so far.
    public private(set) var bytesRead = 0

    init(declaredLength: Int?, highWater: Int, stallTimeout: Double, onDrain: @escaping @Sendable () -> Void) {
        self.declaredLength = declaredLength; self.highWater = highWater; self.stallTimeout = stallTimeout; self.onDrain = onDrain
    }

    /// The client sent Expect: 100-continue and the loop has not answered it: the first read asks for it
    /// (through `onContinue`), so a handler that answers without reading never invites the body.
    var continueWanted = false
    var onContinue: @Sendable () -> Void = {}

    /// A stream over bytes already in memory (tests, in-process callers).
    public init(data: Data) {
        declaredLength = data.count; highWater = max(1, data.count); stallTimeout = 1; onDrain = {}
        if !data.isEmpty {
            let p = UnsafeMutableRawPointer.allocate(byteCount: data.count, alignment: 64)
            data.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: data.count) }
            buffers = [Buffer(base: p, capacity: data.count, filled: data.count)]
            queued = data.count
        }
        finished = true
    }

    deinit {
        for b in buffers { b.base.deallocate() }
        for p in spares { p.deallocate() }
    }

    // MARK: handler side

    /// Waits until a byte is queued, the body ended or failed (called under `cond`, which it still holds
    /// when it returns and has released when it throws); false at the end of the body.
    private func awaitBytes() throws -> Bool {
        if continueWanted {
            continueWanted = false
            cond.unlock(); onContinue(); cond.lock()
        }
        let deadline = Date(timeIntervalSinceNow: stallTimeout)
        while queued == 0 && !finished && failure == nil {
            if !cond.wait(until: deadline) && queued == 0 && !finished && failure == nil {
                failure = .timeout(stallTimeout)
            }
        }
        if queued > 0 { return true }
        if let f = failure { cond.unlock(); throw f }
        return false
    }

    /// Marks `n` bytes of the first buffer read (under `cond`), recycles emptied buffers the loop is done
    /// with, and says whether the loop should be woken.
    private func advance(_ n: Int) -> Bool {
        buffers[0].read += n
        queued -= n
        bytesRead += n
        // an emptied buffer goes unless it is the last one and has room: the loop may be filling its tail
        while let b = buffers.first, b.read == b.filled, buffers.count > 1 || b.filled == b.capacity {
            buffers.removeFirst()
            if b.capacity == Self.bufferBytes && spares.count < Self.spareLimit { spares.append(b.base) } else { b.base.deallocate() }
        }
        let resume = pausedForRoom && queued <= highWater / 2
        if resume { pausedForRoom = false }
        return resume
    }

    /// Copies up to `buffer.count` body bytes; returns 0 at the end of the body. Blocks while none are
    /// queued; throws when the client went away or stalled.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        cond.lock()
        guard try awaitBytes() else { cond.unlock(); return 0 }
        var n = 0, resume = false
        while n < buffer.count && queued > 0 {
            // with bytes queued the first buffer holds some: `advance` drops a read buffer unless it is the
            // last with room, and the loop fills that one before it starts another
            let b = buffers[0]
            let take = min(buffer.count - n, b.filled - b.read)
            (buffer.baseAddress! + n).copyMemory(from: b.base + b.read, byteCount: take)
            n += take
            resume = advance(take) || resume
        }
        cond.unlock()
        if resume { onDrain() }
        return n
    }

    /// Hands the next body bytes (at most `max`, in one piece) to `body` where they lie, without a copy,
    /// and counts them read; returns how many, 0 at the end of the body. The bytes are valid only inside
    /// `body`. Blocks and throws as `read` does.
    public func lend(max: Int, _ body: (UnsafeRawBufferPointer) throws -> Void) throws -> Int {
        cond.lock()
        guard try awaitBytes() else { cond.unlock(); return 0 }
        let b = buffers[0]
        let n = min(max, b.filled - b.read)
        cond.unlock()
        // the loop only writes past `filled`, and only this thread recycles buffers: no lock is needed here
        defer {
            cond.lock()
            let resume = advance(n)
            cond.unlock()
            if resume { onDrain() }
        }
        try body(UnsafeRawBufferPointer(start: b.base + b.read, count: n))
        return n
    }

    /// The whole remaining body (at most `max` bytes, else `nil` after reading max + 1).
    public func readAll(max: Int) throws -> Data? {
        var out = Data()
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = try buf.withUnsafeMutableBytes { try read(into: $0) }
            if n == 0 { return out }
            out.append(contentsOf: buf[0..<n])
            if out.count > max { return nil }
        }
    }

    /// True once every body byte has been handed to the handler.
    public var isComplete: Bool { cond.lock(); defer { cond.unlock() }; return finished && queued == 0 }

    // MARK: loop side

    /// Bytes the queue can take before the loop must stop reading.
    var room: Int { cond.lock(); defer { cond.unlock() }; return max(0, highWater - queued) }

    /// Free space at the end of the queue to write into (under `cond`): the last buffer's tail, else a
    /// spare or new buffer, which `commit` appends.
    private func tail() -> (UnsafeMutableRawPointer, Int, fresh: Bool) {
        if let b = buffers.last, b.filled < b.capacity { return (b.base + b.filled, b.capacity - b.filled, false) }
        let p = spares.popLast() ?? UnsafeMutableRawPointer.allocate(byteCount: Self.bufferBytes, alignment: 64)
        return (p, Self.bufferBytes, true)
    }

    /// Publishes `n` bytes written at `tail()` (under `cond`); a fresh buffer that got none is kept spare.
    private func commit(_ t: (UnsafeMutableRawPointer, Int, fresh: Bool), _ n: Int) {
        if t.fresh {
            if n > 0 { buffers.append(Buffer(base: t.0, capacity: Self.bufferBytes, filled: n)) }
            else if spares.count < Self.spareLimit { spares.append(t.0) } else { t.0.deallocate() }
        } else {
            buffers[buffers.count - 1].filled += n
        }
        if n > 0 { queued += n; cond.signal() }
    }

    /// Queues a copy of `bytes` (body bytes the loop had already read into its connection buffer).
    func offer(_ bytes: UnsafeRawBufferPointer) {
        cond.lock()
        var done = 0
        while done < bytes.count {
            let t = tail()
            let n = min(t.1, bytes.count - done)
            t.0.copyMemory(from: bytes.baseAddress! + done, byteCount: n)
            commit(t, n)
            done += n
        }
        cond.unlock()
    }

    /// Reads at most `max` bytes from the socket straight into the queue: what `recv` returned (with its
    /// errno kept for the caller when negative) and how many bytes it was asked for (≤ `max`: the room in
    /// the queue's tail buffer).
    func receive(from fd: Int32, max: Int) -> (Int, asked: Int) {
        cond.lock()
        let t = tail()
        cond.unlock()
        // the handler never touches bytes past `filled`, so the socket is read without the lock
        let asked = min(max, t.1)
        let n = recv(fd, t.0, asked, 0)
        let err = errno
        cond.lock()
        commit(t, Swift.max(n, 0))
        cond.unlock()
        errno = err
        return (n, asked)
    }

    /// The loop stopped reading because the queue is full; `onDrain` will be called once it half empties.
    func pause() { cond.lock(); pausedForRoom = true; let resume = queued <= highWater / 2; if resume { pausedForRoom = false }; cond.unlock(); if resume { onDrain() } }

    func finish() { cond.lock(); finished = true; cond.broadcast(); cond.unlock() }

    func fail(_ e: HTTPBodyError) { cond.lock(); if !finished && failure == nil { failure = e }; cond.broadcast(); cond.unlock() }
}
