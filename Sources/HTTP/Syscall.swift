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
