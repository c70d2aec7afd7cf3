// Syscall: one wrapper for every system call the server makes: EINTR retry, errno → a typed error.
#if canImport(Glibc)
import Glibc
#endif

public struct SyscallError: Error, CustomStringConvertible, Equatable {
    public let call: String
    public let errno: Int32
    public var description: String { "\(call): \(String(cString: strerror(errno)))" }
}

/// Runs `body` until it does not fail with EINTR; -1 becomes a SyscallError (EAGAIN included: callers
/// that expect it check `isWouldBlock`).
@discardableResult @inline(__always)
func sys<T: FixedWidthInteger>(_ name: String, _ body: () -> T) throws -> T {
    while true {
        let r = body()
        if r != -1 { return r }
        let e = errno
        if e == EINTR { continue }
        throw SyscallError(call: name, errno: e)
    }
}

extension SyscallError {
    var isWouldBlock: Bool { errno == EAGAIN || errno == EWOULDBLOCK }
}

/// A blocking TCP connection to 127.0.0.1:`port` with TCP_NODELAY (clients in tests and benchmarks).
public func connectLoopback(port: UInt16, receiveTimeout seconds: Int = 0) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    if fd < 0 { throw SyscallError(call: "socket", errno: errno) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET); addr.sin_port = port.bigEndian
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
    let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    if r != 0 { let e = errno; close(fd); throw SyscallError(call: "connect", errno: e) }
    var one: Int32 = 1
    setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    if seconds > 0 {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }
    return fd
}
