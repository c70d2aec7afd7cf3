// Metrics: request counts and latency histograms by route and status, in Prometheus text format.
import Foundation

public final class Metrics: @unchecked Sendable {
    static let buckets: [Double] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
    private let lock = NSLock()
    private var counts: [String: Int] = [:]                     // "route|method|status"
    private var hist: [String: (buckets: [Int], sum: Double, count: Int)] = [:]   // "route|method"

    public init() {}

    public func observe(route: String, method: String, status: Int, seconds: Double) {
        lock.lock(); defer { lock.unlock() }
        counts["\(route)|\(method)|\(status)", default: 0] += 1
        var h = hist["\(route)|\(method)"] ?? (Array(repeating: 0, count: Metrics.buckets.count), 0, 0)
        for (i, b) in Metrics.buckets.enumerated() where seconds <= b { h.buckets[i] += 1 }
        h.sum += seconds; h.count += 1
        hist["\(route)|\(method)"] = h
    }

    public func render(extra: [(String, String, Double)]) -> String {
        lock.lock(); defer { lock.unlock() }
        var s = "# HELP r3_http_requests_total HTTP requests by route, method and status.\n# TYPE r3_http_requests_total counter\n"
        for (k, v) in counts.sorted(by: { $0.key < $1.key }) {
            let p = k.split(separator: "|", omittingEmptySubsequences: false)
            s += "r3_http_requests_total{route=\"\(p[0])\",method=\"\(p[1])\",status=\"\(p[2])\"} \(v)\n"
        }
        s += "# HELP r3_http_request_duration_seconds Request latency by route and method.\n# TYPE r3_http_request_duration_seconds histogram\n"
        for (k, h) in hist.sorted(by: { $0.key < $1.key }) {
            let p = k.split(separator: "|", omittingEmptySubsequences: false)
            let l = "route=\"\(p[0])\",method=\"\(p[1])\""
            for (i, b) in Metrics.buckets.enumerated() { s += "r3_http_request_duration_seconds_bucket{\(l),le=\"\(b)\"} \(h.buckets[i])\n" }
            s += "r3_http_request_duration_seconds_bucket{\(l),le=\"+Inf\"} \(h.count)\n"
            s += "r3_http_request_duration_seconds_sum{\(l)} \(h.sum)\nr3_http_request_duration_seconds_count{\(l)} \(h.count)\n"
        }
        for (name, help, v) in extra { s += "# HELP \(name) \(help)\n# TYPE \(name) gauge\n\(name) \(v)\n" }
        return s
    }
}
