// HTTPServer: HTTP/1.1 on POSIX sockets with one epoll event loop. Slow or idle clients cost a file
// descriptor and bounded buffers, never a thread. A request's head goes to the worker pool first: the
// responder authenticates and routes it, and only then says whether the body is read at all (no
// `100 Continue` and no body bytes for a request that will be refused), buffered on the loop, or streamed
// to the handler through a bounded queue. Memory per connection is bounded both ways: the socket is not
// read while a body queue is full or a response is still going out, and responses go out from the
// handler's own buffer (one writev with TCP_NODELAY, no copy). Deadlines answer 408, idle keep-alive
// connections are closed, a connection cap answers 503, a server-wide cap on buffered bodies answers 503,
// and shutdown stops accepting and lets in-flight requests finish.
import CPosix
import Foundation
import Logging
#if canImport(Glibc)
import Glibc
#endif

private let EPOLLIN = UInt32(R3_EPOLLIN), EPOLLOUT = UInt32(R3_EPOLLOUT), EPOLLERR = UInt32(R3_EPOLLERR)
private let EPOLLHUP = UInt32(R3_EPOLLHUP), EPOLLRDHUP = UInt32(R3_EPOLLRDHUP)
private enum EpollOp: Int32 { case add = 0, modify = 1, delete = 2 }

public struct HTTPServerConfig: Sendable {
    public var host = "127.0.0.1"
    public var port: UInt16 = 8080
    public var limits = HTTPLimits()
    public var headerTimeout: Double = 10      // first byte → end of head
    public var bodyTimeout: Double = 120       // longest stall while a body is being received
    public var idleTimeout: Double = 60        // keep-alive connection with no request; a client not reading its response
    public var maxConnections = 1024
    public var handlerThreads = 8
    /// Event loop threads, each with its own listening socket on the port (SO_REUSEPORT) and its own
    /// connections; they answer from memory what needs no worker (see `HTTPInlineResponder`).
    public var eventLoops = max(1, min(ProcessInfo.processInfo.activeProcessorCount, 8))
    public var shutdownGrace: Double = 30
    /// Streamed responses (SSE) open at once; more get 503.
    public var maxStreams = 64
    /// Threads that run handlers reading a streamed request body (uploads). They are apart from
    /// `handlerThreads`, so uploads that stall never hold up other requests.
    public var uploadThreads = 8
    /// Uploads running or waiting for an upload thread; more get 503 before any body byte is read.
    public var maxUploads = 64
    /// Bodies buffered on the loop, all connections together; a request that would pass it gets 503.
    public var maxBufferedBodyBytes = 1 << 30
    /// A streamed body's queue between the loop and its handler.
    public var streamQueueBytes = 4 << 20
    /// Unparsed input a connection may hold (beyond it the socket is not read).
    public var inputBufferBytes = 1 << 20
    public init() {}
}

/// What the responder decides from a request's head (its `body` is empty).
public enum HTTPHeadDecision: Sendable {
    /// Answer now; the body, if any, is never read.
    case respond(HTTPResponse)
    /// Buffer the body on the loop (at most `maxBytes`, else 413), then run `then` on a worker.
    case collect(maxBytes: Int, then: @Sendable (Data) -> HTTPResponse)
    /// Run the handler on a worker now, reading the body as it arrives.
    case stream(@Sendable (HTTPBodyStream) -> HTTPResponse)
}

public typealias HTTPResponder = @Sendable (HTTPRequest) -> HTTPHeadDecision
public typealias HTTPHandler = @Sendable (HTTPRequest) -> HTTPResponse
/// Runs on the event loop thread itself and must never block: it answers a request it can answer from
/// memory (a health check, a key already in the cache) and returns nil for anything else, which then
/// goes to a worker. Code it calls can ask `HTTPInline.isActive` and throw `HTTPInline.WouldBlock`.
public typealias HTTPInlineResponder = @Sendable (HTTPRequest) -> HTTPHeadDecision?

/// Whether this thread is the event loop running an inline responder.
public enum HTTPInline {
    public static var isActive: Bool { r3_in_inline_context() != 0 }
    /// Thrown by code that would have to block (a database read) while `isActive`.
    public struct WouldBlock: Error { public init() {} }
}

public final class HTTPServer: @unchecked Sendable {
    public let config: HTTPServerConfig
    let responder: HTTPResponder
    let inline: HTTPInlineResponder?
    let pool: WorkerPool
    let uploadPool: WorkerPool
    /// Requests the server answers itself (bad framing, limits, timeouts): one line each.
    public var logger = Logger(label: "r3.http", factory: { _ in SwiftLogNoOpLogHandler() })
    private var loops: [EventLoop] = []
    /// Guards what the loops share: the counters below and `stopRequested`.
    let lock = NSLock()
    private var stopRequested = false
    var streams = 0
    var uploads = 0
    /// Open connections, all loops together (the `maxConnections` cap).
    var connections = 0
    /// Body bytes buffered by `.collect`, all loops together.
    private var bufferedBodyBytes = 0
    private var running = 0
    private let stopped = DispatchSemaphore(value: 0)
    public private(set) var boundPort: UInt16 = 0

    public init(config: HTTPServerConfig, inline: HTTPInlineResponder? = nil, responder: @escaping HTTPResponder) {
        self.config = config
        self.inline = inline
        self.responder = responder
        pool = WorkerPool(threads: config.handlerThreads, name: "r3-http")
        uploadPool = WorkerPool(threads: config.uploadThreads, name: "r3-upload")
    }

    /// A handler that takes whole requests: bodies are buffered up to the configured limit.
    public convenience init(config: HTTPServerConfig, handler: @escaping HTTPHandler) {
        let max = config.limits.maxBodyBytes
        self.init(config: config) { req in
            guard req.hasBody else { return .respond(handler(req)) }
            return .collect(maxBytes: max) { body in var r = req; r.body = body; return handler(r) }
        }
    }

    /// Binds and starts the event loops, each on its own thread with its own listening socket on the same
    /// port (SO_REUSEPORT: the kernel spreads new connections over them); returns the bound port (useful
    /// with port 0).
    @discardableResult
    public func start() throws -> UInt16 {
        var port = config.port
        do {
            for i in 0..<max(1, config.eventLoops) {
                let fd = try listenSocket(port: port)
                if i == 0 {
                    var bound = sockaddr_in(), len = socklen_t(MemoryLayout<sockaddr_in>.size)
                    _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
                    boundPort = UInt16(bigEndian: bound.sin_port)
                    port = boundPort
                }
                do { loops.append(try EventLoop(server: self, listenFD: fd, index: i)) } catch { Glibc.close(fd); throw error }
            }
        } catch {
            for l in loops { l.discard() }
            loops = []
            throw error
        }
        lock.lock(); running = loops.count; lock.unlock()
        lock.lock(); let ls = loops; lock.unlock()
        for l in ls { l.start() }
        return boundPort
    }

    private func listenSocket(port: UInt16) throws -> Int32 {
        let fd = try sys("socket") { r3_tcp_socket() }
        do {
            var one: Int32 = 1
            try sys("setsockopt") { setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size)) }
            try sys("setsockopt") { setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size)) }
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = port.bigEndian
            guard inet_pton(AF_INET, config.host, &addr.sin_addr) == 1 else {
                throw SyscallError(call: "inet_pton(\(config.host))", errno: EINVAL)
            }
            try withUnsafePointer(to: &addr) { p in
                try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sp in
                    try sys("bind \(config.host):\(port)") { bind(fd, sp, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                }
            }
            try sys("listen") { listen(fd, 1024) }
            return fd
        } catch { Glibc.close(fd); throw error }
    }

    /// Stops accepting, lets in-flight requests finish (up to `shutdownGrace`), then closes everything.
    public func shutdown() {
        lock.lock(); stopRequested = true; let ls = loops; lock.unlock()
        for l in ls { l.wake() }
    }

    public func waitUntilStopped() { stopped.wait(); stopped.signal() }

    public var connectionCount: Int { lock.lock(); defer { lock.unlock() }; return connections }
    public var isStopping: Bool { lock.lock(); defer { lock.unlock() }; return stopRequested }

    /// Counts `n` more buffered body bytes, or says no past `maxBufferedBodyBytes`.
    func reserveBody(_ n: Int) -> Bool {
        lock.lock(); defer { lock.unlock() }
        if bufferedBodyBytes + n > config.maxBufferedBodyBytes { return false }
        bufferedBodyBytes += n
        return true
    }

    func releaseBody(_ n: Int) { lock.lock(); bufferedBodyBytes -= n; lock.unlock() }

    /// A loop ended; the last one stops the worker pools and lets `waitUntilStopped` return.
    func loopStopped() {
        lock.lock(); running -= 1; let last = running == 0; if last { loops = [] }; lock.unlock()
        if last { pool.stop(); uploadPool.stop(); stopped.signal() }
    }
}

/// One event loop: an epoll set, its listening socket and the connections it accepted, on one thread.
/// A connection stays on the loop that accepted it; workers hand their results back to that loop.
final class EventLoop: @unchecked Sendable {
    /// Strong: a server dropped without `shutdown` keeps running (as a loop thread holding it always did);
    /// the server lets go of its loops once the last one stopped.
    let server: HTTPServer
    let index: Int
    var config: HTTPServerConfig { server.config }
    var logger: Logger { server.logger }
    var pool: WorkerPool { server.pool }
    var uploadPool: WorkerPool { server.uploadPool }
    private var listenFD: Int32
    private let epfd: Int32
    private let wakeFD: Int32
    private var conns: [Int32: Connection] = [:]
    private let lock = NSLock()
    private var completions: [Completion] = []
    /// The loop ended and closed epfd and wakeFD (guarded by `lock`).
    private var fdsClosed = false
    private let inline: HTTPInlineResponder?
    private let responder: HTTPResponder

    enum Completion {
        case decided(Connection, HTTPHeadDecision)
        case responded(Connection, HTTPResponse)
        case drained(Connection)
        case wantsBody(Connection)
    }

    init(server: HTTPServer, listenFD: Int32, index: Int) throws {
        self.server = server; self.listenFD = listenFD; self.index = index
        inline = server.inline; responder = server.responder
        epfd = try sys("epoll_create1") { r3_epoll_create() }
        wakeFD = try sys("eventfd") { r3_eventfd() }
        try sys("epoll_ctl") { r3_epoll_ctl(epfd, EpollOp.add.rawValue, listenFD, EPOLLIN) }
        try sys("epoll_ctl") { r3_epoll_ctl(epfd, EpollOp.add.rawValue, wakeFD, EPOLLIN) }
    }

    /// Closes its descriptors when the server failed to start (the loop never ran).
    func discard() { Glibc.close(listenFD); Glibc.close(epfd); Glibc.close(wakeFD) }

    func start() {
        let name = "r3-http-loop-\(index)"
        // named from inside: corelibs Foundation sets the kernel's thread name only for the current thread
        let t = Thread { [self] in Thread.current.name = name; r3_name_this_thread(name); self.loop() }
        t.start()
    }

    // MARK: event loop

    private func loop() {
        var fds = [Int32](repeating: 0, count: 256), evs = [UInt32](repeating: 0, count: 256)
        var chunk = [UInt8](repeating: 0, count: 256 * 1024)
        var shutdownStarted: ContinuousClock.Instant?
        while true {
            let n = (try? sys("epoll_wait") { r3_epoll_wait(epfd, &fds, &evs, 256, 200) }) ?? 0
            for i in 0..<Int(n) {
                let fd = fds[i], ev = evs[i]
                if fd == listenFD { acceptAll(); continue }
                if fd == wakeFD { var v: UInt64 = 0; _ = read(wakeFD, &v, 8); continue }
                guard let c = conns[fd] else { continue }
                if ev & (EPOLLERR | EPOLLHUP) != 0 && ev & EPOLLIN == 0 { close(c); continue }
                if ev & EPOLLOUT != 0 { flush(c) }
                if ev & EPOLLRDHUP != 0 { c.rdhup = true }   // level-triggered: not asked for again (settle)
                if ev & (EPOLLIN | EPOLLRDHUP) != 0 && !c.closed { readable(c, &chunk) }
                if !c.closed { settle(c) }
            }
            drainCompletions()
            expireDeadlines()
            if server.isStopping {
                if shutdownStarted == nil {
                    shutdownStarted = .now
                    if listenFD >= 0 { _ = r3_epoll_ctl(epfd, EpollOp.delete.rawValue, listenFD, 0); Glibc.close(listenFD); listenFD = -1 }
                }
                for c in Array(conns.values) where c.phase.isIdle && c.out.isEmpty && c.buffered == 0 { close(c) }
                let grace = ContinuousClock.now - shutdownStarted! > .milliseconds(Int(config.shutdownGrace * 1000))
                if conns.isEmpty || grace { break }
            }
        }
        for c in Array(conns.values) { close(c) }
        if listenFD >= 0 { Glibc.close(listenFD); listenFD = -1 }
        lock.lock(); fdsClosed = true; Glibc.close(epfd); Glibc.close(wakeFD); lock.unlock()
        server.loopStopped()
    }

    private func acceptAll() {
        while listenFD >= 0 {
            let fd = r3_accept(listenFD)
            if fd < 0 { if errno == EINTR { continue }; return }
            _ = r3_set_nodelay(fd)
            let c = Connection(fd: fd, limits: config.limits)
            server.lock.lock(); let full = server.connections >= config.maxConnections; server.connections += 1; server.lock.unlock()
            conns[fd] = c
            _ = r3_epoll_ctl(epfd, EpollOp.add.rawValue, fd, EPOLLIN | EPOLLRDHUP)
            c.interest = EPOLLIN | EPOLLRDHUP
            if full {
                c.keepAlive = false
                refuse(c, 503, "the server is at its connection limit (\(config.maxConnections))", nil, level: .warning)
                continue
            }
            c.deadline = .now + .milliseconds(Int(config.idleTimeout * 1000))
        }
    }

    /// Reads what the connection may take now, then moves its request along.
    private func readable(_ c: Connection, _ chunk: inout [UInt8]) {
        // a streamed body with nothing of it in the connection buffer: the bytes the framing says are body
        // go straight from the socket into the handler's queue
        var drained = false   // the socket had no more to give
        if case let .streaming(_, body, false) = c.phase, c.buffered == 0 {
            while wantsInput(c) {
                let due = c.parser.directBodyBytes
                if due == 0 { break }
                let (n, asked) = body.receive(from: c.fd, max: min(due, body.room))
                if n > 0 {
                    c.parser.consumeDirectBody(n)
                    c.lastInput = .now
                    // one wake-up reads at most the queue's room (4 MiB by default, about a millisecond of
                    // copying) before the loop's other connections get their turn
                    if n < asked { drained = true; break }
                    continue
                }
                if n == 0 { c.peerClosed = true; break }
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { drained = true; break }
                close(c); return
            }
        }
        while !drained && c.buffered < config.inputBufferBytes && wantsInput(c) {
            let room = min(chunk.count, config.inputBufferBytes - c.buffered)
            let n = chunk.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, room, 0) }
            if n > 0 {
                if c.buffered == 0 && c.phase.isIdle && !c.parser.inBody { c.requestStart = .now }
                c.append(chunk[0..<n])
                c.lastInput = .now
                if n < room { break }
                continue
            }
            if n == 0 { c.peerClosed = true; break }
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK { break }
            close(c); return
        }
        if !wantsInput(c) && c.buffered < config.inputBufferBytes {
            // not reading on purpose (a decision or handler pending): still notice a client that hung up
            var probe: UInt8 = 0
            if recv(c.fd, &probe, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) == 0 { c.peerClosed = true }
        }
        process(c)   // also ends a body the client stopped sending (after its buffered bytes are used)
        if c.closed { return }
        if c.peerClosed && c.phase.isIdle && c.out.isEmpty { close(c) }
    }

    /// Whether the loop should read this connection's socket now.
    private func wantsInput(_ c: Connection) -> Bool {
        if c.closed || c.closeAfterWrite || c.peerClosed { return false }
        switch c.phase {
        case .idle: return c.out.isEmpty
        case .collecting: return true
        case let .streaming(_, body, done): return !done && body.room > 0
        case .deciding, .handling: return false
        }
    }

    /// Drives the parser as far as the connection's phase allows. Not reentrant: a call made while it runs
    /// for the same connection (an inline answer flushed, a pipelined request behind it) only asks it to go
    /// round again, so a client's pipelined requests never deepen the loop thread's stack.
    private func process(_ c: Connection) {
        if c.processing { c.processAgain = true; return }
        c.processing = true
        defer { c.processing = false }
        repeat {
            c.processAgain = false
            processOnce(c)
        } while c.processAgain && !c.closed
    }

    private func processOnce(_ c: Connection) {
        while !c.closed {
            switch c.phase {
            case .idle:
                guard c.out.isEmpty, !c.closeAfterWrite, c.buffered > 0 else { setReadDeadline(c); return }
                let (used, ev) = c.withUnread { c.parser.next($0, bodyAllowance: 0) }
                c.consume(used)
                switch ev {
                case .needMore: setReadDeadline(c); return
                case let .head(head):
                    c.keepAlive = head.keepAlive
                    c.chunkable = head.version == "HTTP/1.1" && head.method != "HEAD"
                    c.deadline = nil
                    let req = HTTPRequest(head: head)
                    c.phase = .deciding(head)
                    if let inline {
                        r3_set_inline_context(1)
                        let d = inline(req)
                        r3_set_inline_context(0)
                        if let d {   // answered here: no worker, no wake-up, no change of epoll interest
                            decided(c, head, d)
                            continue
                        }
                    }
                    let responder = self.responder
                    pool.submit { [weak self] in self?.complete(.decided(c, responder(req))) }
                    return
                case let .error(e):
                    refuse(c, e.status, e.message, nil); return
                case .body, .end: return   // not in the idle phase
                }
            case let .collecting(head, limit, then):
                var ended = false
                var failure: (Int, String)?
                let (used, _) = c.withUnread { buf -> (Int, Void) in
                    var used = 0
                    while !ended && failure == nil {
                        let (u, ev) = c.parser.next(UnsafeRawBufferPointer(rebasing: buf[used...]))
                        switch ev {
                        case let .body(r):
                            let piece = UnsafeRawBufferPointer(rebasing: buf[(used + r.lowerBound)..<(used + r.upperBound)])
                            if c.body.count + piece.count > limit {
                                failure = (413, "the body exceeds the limit of \(limit) bytes for this request")
                            } else if !server.reserveBody(piece.count) {
                                failure = (503, "the server is buffering too many request bodies; retry later")
                            } else {
                                c.body.append(contentsOf: piece)
                            }
                        case .end: ended = true
                        case let .error(e): failure = (e.status, e.message)
                        case .needMore: return (used + u, ())
                        case .head: break
                        }
                        used += u
                    }
                    return (used, ())
                }
                c.consume(used)
                if let f = failure { releaseBody(c); c.phase = .idle; refuse(c, f.0, f.1, head, level: f.0 == 503 ? .warning : .notice); return }
                if !ended && c.peerClosed { releaseBody(c); c.phase = .idle; close(c); return }   // cut off
                if !ended { setBodyDeadline(c); return }
                let body = Data(c.body)
                releaseBody(c)
                c.phase = .handling(head)
                c.deadline = nil
                pool.submit { [weak self] in self?.complete(.responded(c, then(body))) }
                return
            case let .streaming(head, body, done):
                if done { c.deadline = nil; return }
                var ended = false
                var failure: HTTPParseError?
                let room = body.room
                if room == 0 { body.pause(); c.deadline = nil; return }
                let (used, usedRoom) = c.withUnread { buf -> (Int, Bool) in
                    var used = 0, left = room
                    while !ended && failure == nil && left > 0 {
                        let (u, ev) = c.parser.next(UnsafeRawBufferPointer(rebasing: buf[used...]), bodyAllowance: left)
                        switch ev {
                        case let .body(r):
                            body.offer(UnsafeRawBufferPointer(rebasing: buf[(used + r.lowerBound)..<(used + r.upperBound)]))
                            left -= r.count
                        case .end: ended = true
                        case let .error(e): failure = e
                        case .needMore: return (used + u, false)
                        case .head: break
                        }
                        used += u
                    }
                    return (used, left == 0)
                }
                c.consume(used)
                if let e = failure {
                    body.fail(.aborted(e.message))
                    c.phase = .streaming(head, body, true)
                    c.closeAfterWrite = true
                    return
                }
                if ended { body.finish(); c.phase = .streaming(head, body, true); c.deadline = nil; return }
                if c.peerClosed && c.buffered == 0 {   // the rest of the body can never arrive
                    body.fail(.aborted("the client closed the connection"))
                    c.phase = .streaming(head, body, true)
                    c.closeAfterWrite = true
                    return
                }
                if body.room == 0 { body.pause(); c.deadline = nil; return }
                // the room seen above is used up but the handler has made more meanwhile: go on now (no pause was
                // taken, so no drain would call back, and the client may send nothing more). Also with nothing
                // buffered: the body's last bytes may have filled the room exactly, and its end is still to be seen.
                if usedRoom { continue }
                setBodyDeadline(c)
                return
            case .deciding, .handling:
                return
            }
        }
    }

    private func releaseBody(_ c: Connection) {
        server.releaseBody(c.body.count)
        c.body = []
    }

    /// Sets the connection's epoll interest from what it is waiting for.
    private func settle(_ c: Connection) {
        if c.closed { return }
        var want = c.peerClosed || c.rdhup ? 0 : EPOLLRDHUP
        if wantsInput(c) && c.buffered < config.inputBufferBytes { want |= EPOLLIN }
        if !c.out.isEmpty { want |= EPOLLOUT }
        if want != c.interest {
            _ = r3_epoll_ctl(epfd, EpollOp.modify.rawValue, c.fd, want)
            c.interest = want
        }
    }

    private func setReadDeadline(_ c: Connection) {
        guard c.phase.isIdle else { return }
        if !c.out.isEmpty { return }
        if c.buffered == 0 {
            c.deadline = .now + .milliseconds(Int(config.idleTimeout * 1000)); c.deadlineStatus = nil
        } else if c.deadlineStatus != 408 {
            c.deadline = c.requestStart + .milliseconds(Int(config.headerTimeout * 1000)); c.deadlineStatus = 408
        }
    }

    /// While waiting for body bytes: a stall longer than bodyTimeout ends the request.
    private func setBodyDeadline(_ c: Connection) {
        c.deadline = c.lastInput + .milliseconds(Int(config.bodyTimeout * 1000)); c.deadlineStatus = 408
    }

    private func complete(_ done: Completion) {
        lock.lock(); completions.append(done); lock.unlock()
        wake()
    }

    private func drainCompletions() {
        lock.lock(); let done = completions; completions.removeAll(); lock.unlock()
        for d in done {
            switch d {
            case let .decided(c, decision):
                guard !c.closed, case let .deciding(head) = c.phase else { continue }
                decided(c, head, decision)
                if !c.closed { settle(c) }
            case let .responded(c, r):
                guard !c.closed else { continue }
                if case let .streaming(_, body, done) = c.phase, !done || !body.isComplete {
                    c.closeAfterWrite = true   // the handler did not read the whole body: the rest cannot be skipped safely
                    body.fail(.aborted("the handler answered before the body ended"))
                }
                c.phase = .idle
                respond(c, r)
                if !c.closed { process(c); settle(c) }
            case let .drained(c):
                guard !c.closed else { continue }
                process(c)
                if !c.closed { settle(c) }
            case let .wantsBody(c):
                guard !c.closed, case .streaming = c.phase else { continue }
                sendContinue(c)
            }
        }
    }

    private func decided(_ c: Connection, _ head: HTTPRequestHead, _ decision: HTTPHeadDecision) {
        switch decision {
        case let .respond(r):
            c.phase = .idle
            if head.framing != .none {
                // the body is never read: skip it when it is already here, else close after the answer
                if case let .length(n) = head.framing, c.buffered >= n, n <= config.inputBufferBytes {
                    var left = n
                    while left > 0 {
                        let (u, ev) = c.withUnread { c.parser.next($0, bodyAllowance: left) }
                        c.consume(u)
                        if case let .body(rg) = ev { left -= rg.count } else { break }
                    }
                    if case .end = c.withUnread({ c.parser.next($0) }).event {} else { c.closeAfterWrite = true }
                } else {
                    c.closeAfterWrite = true
                }
            }
            respond(c, r)
            if !c.closed { process(c) }
        case let .collect(limit, then):
            if case let .length(n) = head.framing, n > limit {
                c.phase = .idle; c.closeAfterWrite = true
                refuse(c, 413, "the body of \(n) bytes exceeds the limit of \(limit) bytes for this request", head)
                return
            }
            if head.framing == .none {
                c.phase = .handling(head)
                pool.submit { [weak self] in self?.complete(.responded(c, then(Data()))) }
                return
            }
            if head.expectContinue && c.buffered == 0 { sendContinue(c) }
            c.phase = .collecting(head, limit, then)
            c.lastInput = .now
            process(c)
        case let .stream(handler):
            server.lock.lock(); let full = server.uploads >= config.maxUploads; if !full { server.uploads += 1 }; server.lock.unlock()
            if full {
                c.phase = .idle; c.closeAfterWrite = true
                return refuse(c, 503, "the server is taking \(config.maxUploads) uploads already; retry later", head, level: .warning,
                              headers: [("Retry-After", "5")])
            }
            let declared: Int? = { if case let .length(n) = head.framing { return n }; return head.framing == .none ? 0 : nil }()
            let body = HTTPBodyStream(declaredLength: declared, highWater: config.streamQueueBytes, stallTimeout: config.bodyTimeout + 5) { [weak self] in
                self?.complete(.drained(c))
            }
            if head.framing == .none { body.finish() }
            // 100 Continue when the handler first reads: one that refuses the upload (a quota) never invites it
            if head.expectContinue && c.buffered == 0 {
                body.continueWanted = true
                body.onContinue = { [weak self] in self?.complete(.wantsBody(c)) }
            }
            c.phase = .streaming(head, body, head.framing == .none)
            c.lastInput = .now
            uploadPool.submit { [weak self] in
                let r = handler(body)
                guard let self else { return }
                self.server.lock.lock(); self.server.uploads -= 1; self.server.lock.unlock()
                self.complete(.responded(c, r))
            }
            process(c)
        }
    }

    /// Answers a request the server refuses itself (problem+json, then close) and logs it: status, why,
    /// and the method and path when the head was read (never the query or a header: they may hold secrets).
    private func refuse(_ c: Connection, _ status: Int, _ detail: String, _ head: HTTPRequestHead?, level: Logger.Level = .notice,
                        headers: [(String, String)] = []) {
        var meta: Logger.Metadata = ["status": .stringConvertible(status), "detail": .string(detail)]
        if let h = head {
            meta["method"] = .string(h.method)
            meta["path"] = .string(String(h.target.split(separator: "?", maxSplits: 1).first.map(String.init)?.prefix(200) ?? ""))
        }
        logger.log(level: level, "refused", metadata: meta)
        var r = HTTPResponse.problem(status, detail: detail, close: true)
        for (n, v) in headers { r.headers.set(n, v) }
        respond(c, r)
    }

    private func sendContinue(_ c: Connection) {
        c.out.append(Data("HTTP/1.1 100 Continue\r\n\r\n".utf8))
        flush(c)
    }

    private func respond(_ c: Connection, _ r: HTTPResponse) {
        let stopping = server.isStopping
        if let body = r.stream {
            server.lock.lock(); let full = server.streams >= config.maxStreams; if !full { server.streams += 1 }; server.lock.unlock()
            if full || stopping {
                return refuse(c, 503, "too many open streams; retry later", nil, level: .warning)
            }
            // The stream owns the socket from here: off the event loop, blocking, with a send timeout.
            let fd = c.fd
            c.out.refill()
            let pending = c.out.take()
            c.closed = true
            _ = r3_epoll_ctl(epfd, EpollOp.delete.rawValue, fd, 0)
            conns[fd] = nil
            server.lock.lock(); server.connections -= 1; server.lock.unlock()
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
            var tv = timeval(tv_sec: 10, tv_usec: 0)
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            let writer = HTTPStreamWriter(fd: fd, server: server)
            let head = r.head(keepAlive: false, date: httpDate())
            let t = Thread { [self] in
                r3_name_this_thread("r3-http-stream")
                if pending.allSatisfy({ writer.write($0) }) && writer.write(head) { body(writer) }
                Glibc.close(fd)
                server.lock.lock(); server.streams -= 1; server.lock.unlock()
            }
            t.name = "r3-http-stream"
            t.start()
            return
        }
        // A client that half-closed after pipelining still gets an answer to every request it sent whole:
        // the connection stays open while bytes of a further request are buffered.
        let keep = c.keepAlive && !r.close && (!c.peerClosed || c.buffered > 0) && !stopping && !c.closeAfterWrite
        if !keep { c.closeAfterWrite = true }
        let length = r.source?.length ?? r.body.count
        let chunked = r.oneChunk && c.chunkable && length > 0 && r.headLength == nil
        c.out.append(r.head(keepAlive: keep, date: httpDate(), chunked: chunked))
        if chunked { c.out.append(Data((String(length, radix: 16) + "\r\n").utf8)) }
        if let src = r.source {
            c.out.stream(src, trailer: chunked ? Connection.lastChunk : nil)
        } else if !r.body.isEmpty {
            c.out.append(r.body)
            if chunked { c.out.append(Connection.lastChunk) }
        }
        c.lastOutput = .now
        flush(c)
    }

    /// Writes what the socket takes now (one writev over the queued pieces, from their own buffers).
    private func flush(_ c: Connection) {
        while !c.out.isEmpty && !c.closed {
            c.out.refill()
            if c.out.isEmpty { break }
            let n = c.out.writev(c.fd)
            if n > 0 { c.out.consume(n); c.lastOutput = .now; continue }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { settle(c); return }
            close(c); return
        }
        if c.closed { return }
        if let detail = c.out.broken, c.out.isEmpty {
            logger.error("response body ended wrong: connection closed", metadata: ["detail": .string(detail)])
            close(c); return
        }
        if c.closeAfterWrite && c.phase.isIdle { close(c); return }
        settle(c)
        if c.out.isEmpty && c.phase.isIdle && c.buffered > 0 { process(c); if !c.closed { settle(c) } }   // a pipelined request waiting here
        if !c.closed && c.peerClosed && c.phase.isIdle && c.out.isEmpty { close(c) }   // what is left can never be a whole request
    }

    private func expireDeadlines() {
        let now = ContinuousClock.now
        for c in Array(conns.values) where !c.closed {
            if !c.out.isEmpty {   // a client that does not read its response
                if now - c.lastOutput > .milliseconds(Int(config.idleTimeout * 1000)) { close(c) }
                continue
            }
            guard let d = c.deadline, now >= d else { continue }
            c.deadline = nil
            switch c.phase {
            case .idle:
                if c.deadlineStatus != nil {
                    refuse(c, 408, "request head not received in time", nil, level: .info)
                } else { close(c) }
            case let .collecting(head, _, _):
                releaseBody(c)
                c.phase = .idle
                refuse(c, 408, "the request body stalled for \(Int(config.bodyTimeout)) s", head, level: .info)
            case let .streaming(head, body, _):
                body.fail(.timeout(config.bodyTimeout))
                c.phase = .streaming(head, body, true)
                c.closeAfterWrite = true
            case .deciding, .handling: break
            }
        }
    }

    private func close(_ c: Connection) {
        if c.closed { return }
        c.closed = true
        if case let .streaming(_, body, _) = c.phase { body.fail(.aborted("the connection closed")) }
        if case .collecting = c.phase { releaseBody(c) }
        _ = r3_epoll_ctl(epfd, EpollOp.delete.rawValue, c.fd, 0)
        Glibc.close(c.fd)
        conns[c.fd] = nil
        server.lock.lock(); server.connections -= 1; server.lock.unlock()
    }

    /// Interrupts epoll_wait; never after the loop closed its descriptors (the number may be reused).
    func wake() {
        lock.lock(); defer { lock.unlock() }
        if fdsClosed { return }
        var one: UInt64 = 1; _ = write(wakeFD, &one, 8)
    }

    private var dateCache: (Int, String) = (0, "")
    private func httpDate() -> String {
        var t = time(nil)
        if Int(t) == dateCache.0 { return dateCache.1 }
        var tmv = tm()
        gmtime_r(&t, &tmv)
        var buf = [Int8](repeating: 0, count: 64)
        strftime(&buf, 64, "%a, %d %b %Y %H:%M:%S GMT", &tmv)
        dateCache = (Int(t), String(cString: buf))
        return dateCache.1
    }
}

/// Where a connection's current request is.
enum ConnectionPhase {
    /// Reading a head (or between requests).
    case idle
    /// The head is with the responder on a worker; no body byte is read meanwhile.
    case deciding(HTTPRequestHead)
    /// The body is being buffered on the loop for `then`.
    case collecting(HTTPRequestHead, Int, @Sendable (Data) -> HTTPResponse)
    /// A handler runs and reads the body from `stream`; `done` once the body ended (or failed).
    case streaming(HTTPRequestHead, HTTPBodyStream, Bool)
    /// A handler runs on a complete body.
    case handling(HTTPRequestHead)

    var isIdle: Bool { if case .idle = self { return true }; return false }
    var head: HTTPRequestHead? {
        switch self {
        case .idle: return nil
        case let .deciding(h), let .collecting(h, _, _), let .streaming(h, _, _), let .handling(h): return h
        }
    }
}

/// One client connection's state, owned by the event loop thread.
final class Connection: @unchecked Sendable {
    let fd: Int32
    var parser: HTTPParser
    private var buf: [UInt8] = []
    private var start = 0
    var out = OutputQueue()
    var phase = ConnectionPhase.idle
    /// A `.collect` body so far (grows as bytes arrive, never from the claimed length).
    var body: [UInt8] = []
    var interest: UInt32 = 0
    var closed = false
    var closeAfterWrite = false
    var peerClosed = false
    /// The client shut down its sending side (EPOLLRDHUP seen); recv will return 0 once the bytes before it are read.
    var rdhup = false
    var keepAlive = true
    /// The request may be answered with a chunked body (an HTTP/1.1 request, not HEAD).
    var chunkable = false
    /// The end of a one-chunk body: the chunk's CRLF and the last chunk.
    static let lastChunk = Data("\r\n0\r\n\r\n".utf8)
    var requestStart = ContinuousClock.now
    var lastInput = ContinuousClock.now
    var lastOutput = ContinuousClock.now
    var deadline: ContinuousClock.Instant?
    var deadlineStatus: Int?
    /// `process` is running for this connection / was asked to run again meanwhile.
    var processing = false
    var processAgain = false

    init(fd: Int32, limits: HTTPLimits) { self.fd = fd; parser = HTTPParser(limits: limits) }

    var buffered: Int { buf.count - start }
    func append(_ bytes: ArraySlice<UInt8>) {
        if start > 0 && start == buf.count { buf.removeAll(keepingCapacity: true); start = 0 }
        buf += bytes
    }
    func consume(_ n: Int) {
        start += n
        if start == buf.count { buf.removeAll(keepingCapacity: buf.capacity <= 1 << 20); start = 0 }
        else if start > 1 << 18 && start * 2 > buf.count { buf.removeFirst(start); start = 0 }
    }
    func withUnread<T>(_ body: (UnsafeRawBufferPointer) -> T) -> T {
        buf.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[start...])) }
    }
}

/// Bytes waiting to go out: whole pieces (a response's head and its body) and how much of the first
/// is sent. Nothing is copied to queue a response. A streamed body (`source`) is pulled a piece at a time
/// while less than `lowWater` bytes are queued, so a slow reader holds at most about that much.
struct OutputQueue {
    private var pieces: [Data] = []
    private var sent = 0
    private(set) var source: HTTPBodySource?
    /// Queued when the source ends (a chunked body's last chunk).
    private var trailer: Data?
    /// What the source still owes of its declared length.
    private var owed = 0
    /// Set when the source made fewer or more bytes than its length (what went wrong): what it made up to the
    /// length is sent, then the connection must close (the client sees a short body, never one framed wrong;
    /// no last chunk).
    private(set) var broken: String?
    static let lowWater = 256 * 1024
    var isEmpty: Bool { pieces.isEmpty && source == nil }
    mutating func stream(_ src: HTTPBodySource, trailer: Data?) { source = src; owed = src.length; self.trailer = trailer }
    /// Pulls from the source until `lowWater` bytes are queued or it ends.
    mutating func refill() {
        guard let src = source else { return }
        var queued = count
        while queued < OutputQueue.lowWater {
            guard var d = src.next(maxBytes: OutputQueue.lowWater) else {
                source = nil
                if owed != 0 { broken = "the body's source ended \(owed) of its \(src.length) bytes short"; trailer = nil; return }
                if let t = trailer { pieces.append(t); trailer = nil }
                return
            }
            if d.count > owed {   // more than declared: cut at the length, then close
                d = d.prefix(owed)
                source = nil; trailer = nil; broken = "the body's source made more than its \(src.length) bytes"
            }
            owed -= d.count
            if !d.isEmpty { pieces.append(d); queued += d.count }
            if source == nil { return }
        }
    }
    var count: Int { pieces.reduce(0) { $0 + $1.count } - sent }   // excluding what the source has not made yet
    mutating func append(_ d: Data) { if !d.isEmpty { pieces.append(d) } }
    mutating func take() -> [Data] {
        defer { pieces = []; sent = 0 }
        guard let f = pieces.first else { return [] }
        return [f.subdata(in: (f.startIndex + sent)..<f.endIndex)] + pieces.dropFirst()
    }
    mutating func consume(_ n: Int) {
        var left = n
        while left > 0, let f = pieces.first {
            let rest = f.count - sent
            if left >= rest { left -= rest; pieces.removeFirst(); sent = 0 } else { sent += left; left = 0 }
        }
    }
    /// One writev of up to 8 pieces; returns what writev returned.
    func writev(_ fd: Int32) -> Int {
        let n = min(8, pieces.count)
        var iov = [iovec](repeating: iovec(), count: n)
        func go(_ i: Int) -> Int {
            if i == n {
                return iov.withUnsafeMutableBufferPointer { Glibc.writev(fd, $0.baseAddress, Int32(n)) }
            }
            return pieces[i].withUnsafeBytes { b -> Int in
                let skip = i == 0 ? sent : 0
                iov[i] = iovec(iov_base: UnsafeMutableRawPointer(mutating: b.baseAddress! + skip), iov_len: b.count - skip)
                return go(i + 1)
            }
        }
        return go(0)
    }
}

/// Writes a streamed response body on its own (blocking) socket.
public final class HTTPStreamWriter: @unchecked Sendable {
    let fd: Int32
    weak var server: HTTPServer?
    private var failed = false
    init(fd: Int32, server: HTTPServer) { self.fd = fd; self.server = server }

    /// False once a write failed (the client left) or the server is shutting down.
    public var isOpen: Bool { !failed && !(server?.isStopping ?? true) }

    /// Sends all of `data`; false when the client is gone.
    @discardableResult
    public func write(_ data: Data) -> Bool {
        if failed { return false }
        var off = 0
        while off < data.count {
            let n = data.withUnsafeBytes { send(fd, $0.baseAddress! + off, data.count - off, Int32(MSG_NOSIGNAL)) }
            if n > 0 { off += n; continue }
            if n < 0 && errno == EINTR { continue }
            failed = true
            return false
        }
        return true
    }
    public func write(_ s: String) -> Bool { write(Data(s.utf8)) }
}
