// URLGuard: webhook URLs must be http(s), without credentials, and (unless the operator sets
// R3_WEBHOOK_ALLOW_PRIVATE=1) resolve only to public addresses: loopback, private, link-local (cloud
// metadata 169.254.169.254 among them), CGNAT, multicast and reserved ranges are refused. Checked when
// the URL is saved and again before every delivery (the name may resolve elsewhere by then).
import Foundation
#if canImport(Glibc)
import Glibc
#endif

enum URLGuard {
    struct Refused: Error, CustomStringConvertible { let description: String }

    static func check(_ text: String, allowPrivate: Bool) throws -> URL {
        guard text.count <= 2048, let c = URLComponents(string: text), let scheme = c.scheme?.lowercased(), ["http", "https"].contains(scheme),
              let host = c.host, !host.isEmpty, let url = c.url else {
            throw Refused(description: "url must be an absolute http or https URL of at most 2048 characters")
        }
        guard c.user == nil && c.password == nil else { throw Refused(description: "url must not carry credentials") }
        if allowPrivate { return url }
        let addresses = try resolve(host.hasPrefix("[") ? String(host.dropFirst().dropLast()) : host)
        if let bad = addresses.first(where: isPrivate) {
            throw Refused(description: "url resolves to \(bad), a loopback, private, link-local or reserved address (set R3_WEBHOOK_ALLOW_PRIVATE=1 to allow)")
        }
        return url
    }

    /// Every IPv4 / IPv6 address of `host`, as text.
    static func resolve(_ host: String) throws -> [String] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &res) == 0, let first = res else { throw Refused(description: "url host \(host) does not resolve") }
        defer { freeaddrinfo(first) }
        var out: [String] = []
        var p: UnsafeMutablePointer<addrinfo>? = first
        while let a = p {
            var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            if a.pointee.ai_family == AF_INET {
                var sin = a.pointee.ai_addr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee }
                inet_ntop(AF_INET, &sin.sin_addr, &buf, socklen_t(buf.count))
            } else if a.pointee.ai_family == AF_INET6 {
                var sin6 = a.pointee.ai_addr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee }
                inet_ntop(AF_INET6, &sin6.sin6_addr, &buf, socklen_t(buf.count))
            }
            let s = String(decoding: buf.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if !s.isEmpty && !out.contains(s) { out.append(s) }
            p = a.pointee.ai_next
        }
        if out.isEmpty { throw Refused(description: "url host \(host) does not resolve") }
        return out
    }

    /// Whether an address is not a public unicast one.
    static func isPrivate(_ address: String) -> Bool {
        var v4 = in_addr()
        if inet_pton(AF_INET, address, &v4) == 1 { return isPrivateV4(UInt32(bigEndian: v4.s_addr)) }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, address, &v6) == 1 else { return true }
        let b = withUnsafeBytes(of: &v6) { [UInt8]($0) }
        if b[0..<10].allSatisfy({ $0 == 0 }) && b[10] == 0xff && b[11] == 0xff {   // ::ffff:a.b.c.d
            return isPrivateV4(UInt32(b[12]) << 24 | UInt32(b[13]) << 16 | UInt32(b[14]) << 8 | UInt32(b[15]))
        }
        if b[0..<15].allSatisfy({ $0 == 0 }) { return true }                        // :: and ::1
        if b[0] & 0xfe == 0xfc { return true }                                      // fc00::/7 unique local (fd00:ec2::254 metadata)
        if b[0] == 0xfe && b[1] & 0xc0 == 0x80 { return true }                      // fe80::/10 link-local
        if b[0] == 0xff { return true }                                             // multicast
        if b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8 { return true }   // 2001:db8::/32 documentation
        if b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b { return true }   // 64:ff9b::/96 NAT64 (may reach private v4)
        return false
    }

    static func isPrivateV4(_ a: UInt32) -> Bool {
        func inNet(_ net: UInt32, _ bits: UInt32) -> Bool { a >> (32 - bits) == net >> (32 - bits) }
        return inNet(0x0000_0000, 8) || inNet(0x0A00_0000, 8) || inNet(0x7F00_0000, 8) || inNet(0xA9FE_0000, 16)   // 0/8 10/8 127/8 169.254/16
            || inNet(0xAC10_0000, 12) || inNet(0xC0A8_0000, 16) || inNet(0x6440_0000, 10)                       // 172.16/12 192.168/16 100.64/10
            || inNet(0xC000_0000, 24) || inNet(0xC000_0200, 24) || inNet(0xC612_0000, 15)                       // 192.0.0/24 TEST-NET-1 198.18/15
            || inNet(0xC633_6400, 24) || inNet(0xCB00_7100, 24) || inNet(0xE000_0000, 4) || inNet(0xF000_0000, 4)   // TEST-NETs, multicast, reserved
    }
}
