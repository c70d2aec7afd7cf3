// WebhookSchedule: what happens after a delivery attempt, as a pure value type (tested without I/O).
// Only 2xx is success; 410 Gone disables the endpoint; otherwise retries after about 5 s, 5 min, 30 min,
// 2 h, 5 h, 10 h, 14 h, 20 h and 24 h (±10% jitter), honouring Retry-After on 429 and 503, then fails.
public enum WebhookSchedule {
    public static let delays: [Double] = [5, 300, 1800, 7200, 18_000, 36_000, 50_400, 72_000, 86_400]

    public enum Outcome: Equatable, Sendable {
        case delivered
        case retry(after: Double)
        case failed
        case disableEndpoint
    }

    /// After attempt `n` (1-based, counted from the last redeliver) answered `status` (nil: no response).
    public static func outcome(attempt n: Int, status: Int?, retryAfter: Double?, unit: Double) -> Outcome {
        if let s = status, (200..<300).contains(s) { return .delivered }
        if status == 410 { return .disableEndpoint }
        guard n >= 1, n <= delays.count else { return .failed }
        if let s = status, s == 429 || s == 503, let ra = retryAfter { return .retry(after: min(max(ra, 1), 86_400)) }
        return .retry(after: delays[n - 1] * (0.9 + 0.2 * min(max(unit, 0), 1)))
    }
}
