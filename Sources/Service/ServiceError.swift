// ServiceError: the Service module's one error type, and the one place where any error becomes an
// HTTP status (RFC 9457 problem+json). Internal details never reach the client.
import Foundation
import HTTP
import JSON
import Routes
import Store

public struct ServiceError: Error, CustomStringConvertible {
    public var status: Int
    public var detail: String
    /// Extra response headers (Allow on a 405, Retry-After, …).
    public var headers: [(String, String)] = []
    public init(_ status: Int, _ detail: String, headers: [(String, String)] = []) { self.status = status; self.detail = detail; self.headers = headers }
    public var description: String { "\(status): \(detail)" }

    public static func badRequest(_ d: String) -> ServiceError { ServiceError(400, d) }
    public static func notFound(_ what: String) -> ServiceError { ServiceError(404, "\(what) not found") }
    public static func unprocessable(_ d: String) -> ServiceError { ServiceError(422, d) }

    /// Maps any error to its response.
    static func response(for error: Error) -> HTTPResponse {
        switch error {
        case let e as ServiceError:
            var r = HTTPResponse.problem(e.status, detail: e.detail)
            for (n, v) in e.headers { r.headers.set(n, v) }
            if e.status == 401 { r.headers.set("WWW-Authenticate", "Bearer realm=\"r3\"") }
            return r
        case let e as JSONError:
            return response(for: e.service)
        case let e as QuotaExceeded:
            return .problem(507, detail: "\(e); nothing was stored")
        case let e as HTTPBodyError:
            switch e {
            case .timeout: return .problem(408, detail: e.description, close: true)
            case .aborted: return .problem(400, detail: e.description, close: true)
            }
        case let e as RoutesError:
            switch e {
            case let .malformed(m): return .problem(400, detail: "routed_experts: \(m)")
            case let .invalid(m): return .problem(422, detail: "routed_experts: \(m)")
            }
        case let e as StoreError:
            switch e {
            case .unavailable: return .problem(503, detail: "the database is unavailable; retry later")
            case let .expired(m): return .problem(410, detail: m)
            case let .query(state, m) where state == "23514" && m.contains("no partition"):
                // a write into a week retention dropped between the partition check and the insert
                return .problem(410, detail: "the routes' week was dropped by this project's retention while they were being stored")
            case let .query(state, _) where state == "22P02" || state == "22003": return .problem(400, detail: "a value is out of range or malformed")
            default: return .problem(500, detail: "internal error")
            }
        default:
            return .problem(500, detail: "internal error")
        }
    }
}
