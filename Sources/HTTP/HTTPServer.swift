// HTTPServer: HTTP/1.1 on POSIX sockets with one epoll event loop. Slow or idle clients cost a file
// descriptor and a buffer, never a thread: requests are parsed on the loop and handed to a bounded
// worker pool; responses go back out in one writev with TCP_NODELAY. Deadlines answer 408, idle
// keep-alive connections are closed, a connection cap answers 503, and shutdown stops accepting and
// lets in-flight requests finish.
import CPosix
import Foundation
#if canImport(Glibc)
import Glibc
#endif

private let EPOLLIN = UInt32(R3_EPOLLIN), EPOLLOUT = UInt32(R3_EPOLLOUT), EPOLLERR = UInt32(R3_EPOLLERR)
private let EPOLLHUP = UInt32(R3_EPOLLHUP), EPOLLRDHUP = UInt32(R3_EPOLLRDHUP)

public struct HTTPServerConfig: Sendable {
    public var host = "127.0.0.1"
    public var port: UInt16 = 8080
    public var limits = HTTPLimits()
    public var headerTimeout: Double = 10      // first byte → end of head
    public var bodyTimeout: Double = 120       // end of head → end of body
    public var idleTimeout: Double = 60        // keep-alive connection with no request
    public var maxConnections = 1024
    public var handlerThreads = 8
    public var shutdownGrace: Double = 30
    /// Streamed responses (SSE) open at once; more get 503.
    public var maxStreams = 64
    public init() {}
}

public typealias HTTPHandler = @Sendable (HTTPRequest) -> HTTPResponse

public final class HTTPServer: @unchecked Sendable {
    public let config: HTTPServerConfig
    let handler: HTTPHandler
    let pool: WorkerPool
    private var listenFD: Int32 = -1
    private var epfd: Int32 = -1
    private var wakeFD: Int32 = -1
    private var conns: [Int32: Connection] = [:]
    private let lock = NSLock()
    private var completions: [(Connection, HTTPResponse)] = []
    private var stopRequested = false
    private var streams = 0
    private var loopThread: Thread?
    private let stopped = DispatchSemaphore(value: 0)
    public private(set) var boundPort: UInt16 = 0

    public init(config: HTTPServerConfig, handler: @escaping HTTPHandler) {
        self.config = config
        self.handler = handler
        pool = WorkerPool(threads: config.handlerThreads, name: "r3-http")
    }

    /// Binds and starts the event loop on its own thread; returns the bound port (useful with port 0).
    @discardableResult
    public func start() throws -> UInt16 {
        listenFD = try sys("socket") { r3_tcp_socket() }
        var one: Int32 = 1
        try sys("setsockopt") { setsockopt(listenFD, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size)) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = config.port.bigEndian
        guard inet_pton(AF_INET, config.host, &addr.sin_addr) == 1 else {
            throw SyscallError(call: "inet_pton(\(config.host))", errno: EINVAL)
        }
        try withUnsafePointer(to: &addr) { p in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sp in
                try sys("bind \(config.host):\(config.port)") { bind(listenFD, sp, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
        try sys("listen") { listen(listenFD, 1024) }
        var bound = sockaddr_in(), len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listenFD, $0, &len) } }
        boundPort = UInt16(bigEndian: bound.sin_port)
        epfd = try sys("epoll_create1") { r3_epoll_create() }
        wakeFD = try sys("eventfd") { r3_eventfd() }
        try watch(listenFD, events: EPOLLIN, add: true)
        try watch(wakeFD, events: EPOLLIN, add: true)
        let t = Thread { [self] in self.loop() }
        t.name = "r3-http-loop"
        loopThread = t
        t.start()
        return boundPort
    }

    /// Stops accepting, lets in-flight requests finish (up to `shutdownGrace`), then closes everything.
    public func shutdown() {
        lock.lock(); stopRequested = true; lock.unlock()
        wake()
    }

    public func waitUntilStopped() { stopped.wait(); stopped.signal() }

    public var connectionCount: Int { lock.lock(); defer { lock.unlock() }; return conns.count }
    public var isStopping: Bool { lock.lock(); defer { lock.unlock() }; return stopRequested }

    // MARK: event loop

    private func loop() {
        var fds = [Int32](repeating: 0, count: 256), evs = [UInt32](repeating: 0, count: 256)
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
                if ev & EPOLLIN != 0 && !c.closed { readable(c) }
            }
            drainCompletions()
            expireDeadlines()
            lock.lock(); let stop = stopRequested; lock.unlock()
            if stop {
                if shutdownStarted == nil {
                    shutdownStarted = .now
                    if listenFD >= 0 { _ = r3_epoll_ctl(epfd, 2, listenFD, 0); Glibc.close(listenFD); listenFD = -1 }
                }
                for c in Array(conns.values) where !c.handling && c.out.isEmpty && !c.parser.inBody && c.buffered == 0 { close(c) }
                let grace = ContinuousClock.now - shutdownStarted! > .milliseconds(Int(config.shutdownGrace * 1000))
                if conns.isEmpty || grace { break }
            }
        }
        for c in Array(conns.values) { close(c) }
        pool.stop()
        Glibc.close(epfd); Glibc.close(wakeFD)
        stopped.signal()
    }

    private func acceptAll() {
        while listenFD >= 0 {
            let fd = r3_accept(listenFD)
            if fd < 0 { if errno == EINTR { continue }; return }
            _ = r3_set_nodelay(fd)
            let c = Connection(fd: fd, limits: config.limits)
            if conns.count >= config.maxConnections {
                let r = HTTPResponse.problem(503, detail: "the server is at its connection limit (\(config.maxConnections))", close: true)
                c.out = [UInt8](r.head(keepAlive: false, date: httpDate()) + r.body)
                c.closeAfterWrite = true
                conns[fd] = c
                try? watch(fd, events: EPOLLIN, add: true)
                flush(c)
                continue
            }
            lock.lock(); conns[fd] = c; lock.unlock()
            c.deadline = .now + .milliseconds(Int(config.idleTimeout * 1000))
            try? watch(fd, events: EPOLLIN | EPOLLRDHUP, add: true)
        }
    }

    private func readable(_ c: Connection) {
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                if c.buffered == 0 && !c.parser.inBody { c.requestStart = .now }
                c.append(chunk[0..<n])
                if c.buffered > config.limits.maxHeaderBytes + 256 * 1024 && !c.parser.inBody && !c.handling { break }
                if n < chunk.count { break }
                continue
            }
            if n == 0 { c.peerClosed = true; break }
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK { break }
            close(c); return
        }
        process(c)
        if c.peerClosed && !c.handling && c.out.isEmpty { close(c) }
    }

    /// Parses buffered bytes while the connection is free to take a request.
    private func process(_ c: Connection) {
        while !c.handling && !c.closed && !c.closeAfterWrite && c.buffered > 0 {
            let (used, ev) = c.withUnread { c.parser.next($0) }
            c.consume(used)
            switch ev {
            case .needMore:
                setReadDeadline(c)
                return
            case .sendContinue:
                queue(c, Array("HTTP/1.1 100 Continue\r\n\r\n".utf8))
            case let .request(head, body):
                c.handling = true
                c.deadline = nil
                c.keepAlive = head.keepAlive
                let req = HTTPRequest(method: head.method, target: head.target, version: head.version, headers: head.headers,
                                      body: Data(body), keepAlive: head.keepAlive)
                let handler = self.handler
                pool.submit { [weak self] in
                    let resp = handler(req)
                    self?.complete(c, resp)
                }
            case let .error(e):
                respond(c, HTTPResponse.problem(e.status, detail: e.message, close: true))
                return
            }
        }
        if !c.handling { setReadDeadline(c) }
    }

    private func setReadDeadline(_ c: Connection) {
        if c.buffered == 0 && !c.parser.inBody {
            c.deadline = .now + .milliseconds(Int(config.idleTimeout * 1000)); c.deadlineStatus = nil
        } else if c.parser.inBody {
            if c.deadlineStatus != 408 || c.bodyPhase == false {
                c.deadline = .now + .milliseconds(Int(config.bodyTimeout * 1000)); c.deadlineStatus = 408; c.bodyPhase = true
            }
        } else if c.deadlineStatus == nil || c.bodyPhase {
            c.deadline = c.requestStart + .milliseconds(Int(config.headerTimeout * 1000)); c.deadlineStatus = 408; c.bodyPhase = false
        }
    }

    private func complete(_ c: Connection, _ r: HTTPResponse) {
        lock.lock(); completions.append((c, r)); lock.unlock()
        wake()
    }

    private func drainCompletions() {
        lock.lock(); let done = completions; completions.removeAll(); lock.unlock()
        for (c, r) in done where !c.closed {
            c.handling = false
            respond(c, r)
            if !c.closed && !c.closeAfterWrite {
                try? watch(c.fd, events: EPOLLIN | EPOLLRDHUP | (c.out.isEmpty ? 0 : EPOLLOUT), add: false)
                process(c)
                if c.peerClosed && !c.handling && c.out.isEmpty { close(c) }
            }
        }
    }

    private func respond(_ c: Connection, _ r: HTTPResponse) {
        lock.lock(); let stopping = stopRequested; lock.unlock()
        if let body = r.stream {
            lock.lock(); let full = streams >= config.maxStreams; if !full { streams += 1 }; lock.unlock()
            if full || stopping {
                return respond(c, .problem(503, detail: "too many open streams; retry later", close: true))
            }
            // The stream owns the socket from here: off the event loop, blocking, with a send timeout.
            let fd = c.fd
            c.closed = true
            _ = r3_epoll_ctl(epfd, 2, fd, 0)
            lock.lock(); conns[fd] = nil; lock.unlock()
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
            var tv = timeval(tv_sec: 10, tv_usec: 0)
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            let writer = HTTPStreamWriter(fd: fd, server: self)
            let head = r.head(keepAlive: false, date: httpDate())
            let t = Thread { [self] in
                if writer.write(head) { body(writer) }
                Glibc.close(fd)
                lock.lock(); streams -= 1; lock.unlock()
            }
            t.name = "r3-http-stream"
            t.start()
            return
        }
        let keep = c.keepAlive && !r.close && !c.peerClosed && !stopping
        if !keep { c.closeAfterWrite = true }
        let head = [UInt8](r.head(keepAlive: keep, date: httpDate()))
        if c.out.isEmpty {
            // one writev for head and body: no Nagle / delayed-ACK stall between them
            var iov = [iovec](repeating: iovec(), count: 2)
            let written: Int = head.withUnsafeBytes { h in
                r.body.withUnsafeBytes { b in
                    iov[0] = iovec(iov_base: UnsafeMutableRawPointer(mutating: h.baseAddress), iov_len: h.count)
                    iov[1] = iovec(iov_base: UnsafeMutableRawPointer(mutating: b.baseAddress), iov_len: b.count)
                    var n = -1
                    repeat { n = writev(c.fd, &iov, b.count > 0 ? 2 : 1) } while n < 0 && errno == EINTR
                    return n
                }
            }
            if written < 0 && errno != EAGAIN && errno != EWOULDBLOCK { close(c); return }
            let w = max(0, written)
            if w < head.count { c.out = Array(head[w...]) + [UInt8](r.body) } else if w < head.count + r.body.count {
                c.out = [UInt8](r.body[(r.body.startIndex + w - head.count)...])
            }
        } else {
            c.out += head + [UInt8](r.body)
        }
        if c.out.isEmpty {
            if c.closeAfterWrite { close(c) }
        } else {
            try? watch(c.fd, events: EPOLLIN | EPOLLOUT | EPOLLRDHUP, add: false)
        }
    }

    private func queue(_ c: Connection, _ bytes: [UInt8]) {
        c.out += bytes
        flush(c)
    }

    private func flush(_ c: Connection) {
        while !c.out.isEmpty && !c.closed {
            let n = c.out.withUnsafeBytes { send(c.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 { c.out.removeFirst(n); continue }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                try? watch(c.fd, events: EPOLLIN | EPOLLOUT | EPOLLRDHUP, add: false)
                return
            }
            close(c); return
        }
        if c.closed { return }
        if c.closeAfterWrite { close(c); return }
        try? watch(c.fd, events: (c.handling ? 0 : EPOLLIN) | EPOLLRDHUP, add: false)
    }

    private func expireDeadlines() {
        let now = ContinuousClock.now
        for c in Array(conns.values) where !c.handling && !c.closed {
            guard let d = c.deadline, now >= d else { continue }
            if let status = c.deadlineStatus, c.out.isEmpty {
                c.deadline = nil
                respond(c, HTTPResponse.problem(status, detail: c.bodyPhase ? "request body not received in time" : "request head not received in time", close: true))
            } else {
                close(c)
            }
        }
    }

    private func close(_ c: Connection) {
        if c.closed { return }
        c.closed = true
        _ = r3_epoll_ctl(epfd, 2, c.fd, 0)
        Glibc.close(c.fd)
        lock.lock(); conns[c.fd] = nil; lock.unlock()
    }

    private func watch(_ fd: Int32, events: UInt32, add: Bool) throws {
        try sys("epoll_ctl") { r3_epoll_ctl(epfd, add ? 0 : 1, fd, events) }
    }

    private func wake() { var one: UInt64 = 1; _ = write(wakeFD, &one, 8) }

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

/// One client connection's state, owned by the event loop thread.
final class Connection: @unchecked Sendable {
    let fd: Int32
    var parser: HTTPParser
    private var buf: [UInt8] = []
    private var start = 0
    var out: [UInt8] = []
    var handling = false
    var closed = false
    var closeAfterWrite = false
    var peerClosed = false
    var keepAlive = true
    var requestStart = ContinuousClock.now
    var deadline: ContinuousClock.Instant?
    var deadlineStatus: Int?
    var bodyPhase = false

    init(fd: Int32, limits: HTTPLimits) { self.fd = fd; parser = HTTPParser(limits: limits) }

    var buffered: Int { buf.count - start }
    func append(_ bytes: ArraySlice<UInt8>) {
        if start > 0 && start == buf.count { buf.removeAll(keepingCapacity: true); start = 0 }
        buf += bytes
    }
    func consume(_ n: Int) {
        start += n
        if start > 1 << 20 && start * 2 > buf.count { buf.removeFirst(start); start = 0 }
        if start == buf.count { buf.removeAll(keepingCapacity: true); start = 0 }
    }
    func withUnread<T>(_ body: (UnsafeRawBufferPointer) -> T) -> T {
        buf.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[start...])) }
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
