// HTTPBodyStream: a request body flowing from the event loop to a handler thread through a bounded
// queue. The loop stops reading the socket while the queue is full and starts again when the handler
// has drained half of it, so a body of any size costs at most `highWater` bytes here.
import Foundation

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
    private let cond = NSCondition()
    private var chunks: [Data] = []
    private var first = 0          // index of the first unread chunk
    private var offset = 0         // bytes read of chunks[first]
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

    /// A stream over bytes already in memory (tests, in-process callers).
    /// The client sent Expect: 100-continue and the loop has not answered it: the first read asks for it
    /// (through `onContinue`), so a handler that answers without reading never invites the body.
    var continueWanted = false
    var onContinue: @Sendable () -> Void = {}

    public init(data: Data) {
        declaredLength = data.count; highWater = max(1, data.count); stallTimeout = 1; onDrain = {}
        if !data.isEmpty { chunks = [data]; queued = data.count }
        finished = true
    }

    // MARK: handler side

    /// Copies up to `buffer.count` body bytes; returns 0 at the end of the body. Blocks while none are
    /// queued; throws when the client went away or stalled.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        cond.lock()
        if continueWanted {
            continueWanted = false
            cond.unlock(); onContinue(); cond.lock()
        }
        let deadline = Date(timeIntervalSinceNow: stallTimeout)
        while first == chunks.count && !finished && failure == nil {
            if !cond.wait(until: deadline) && first == chunks.count && !finished && failure == nil {
                failure = .timeout(stallTimeout)
            }
        }
        if first == chunks.count {
            let f = failure
            cond.unlock()
            if let f { throw f }
            return 0
        }
        var n = 0
        while n < buffer.count && first < chunks.count {
            let c = chunks[first]
            let take = min(buffer.count - n, c.count - offset)
            c.withUnsafeBytes { src in (buffer.baseAddress! + n).copyMemory(from: src.baseAddress! + offset, byteCount: take) }
            n += take; offset += take
            if offset == c.count { chunks[first] = Data(); first += 1; offset = 0 }
        }
        if first == chunks.count { chunks.removeAll(keepingCapacity: true); first = 0 }
        queued -= n
        bytesRead += n
        let resume = pausedForRoom && queued <= highWater / 2
        if resume { pausedForRoom = false }
        cond.unlock()
        if resume { onDrain() }
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
    public var isComplete: Bool { cond.lock(); defer { cond.unlock() }; return finished && first == chunks.count }

    // MARK: loop side

    /// Bytes the queue can take before the loop must stop reading.
    var room: Int { cond.lock(); defer { cond.unlock() }; return max(0, highWater - queued) }

    func offer(_ bytes: UnsafeRawBufferPointer) {
        cond.lock()
        chunks.append(Data(bytes))
        queued += bytes.count
        cond.signal()
        cond.unlock()
    }

    /// The loop stopped reading because the queue is full; `onDrain` will be called once it half empties.
    func pause() { cond.lock(); pausedForRoom = true; let resume = queued <= highWater / 2; if resume { pausedForRoom = false }; cond.unlock(); if resume { onDrain() } }

    func finish() { cond.lock(); finished = true; cond.broadcast(); cond.unlock() }

    func fail(_ e: HTTPBodyError) { cond.lock(); if !finished && failure == nil { failure = e }; cond.broadcast(); cond.unlock() }
}
