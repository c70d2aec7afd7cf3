// WebhookDispatcher: the delivery workers. Each claims a due delivery from the outbox (SKIP LOCKED, with
// an in-flight lease), checks the URL again, signs it per Standard Webhooks, POSTs it through
// URLSession (FoundationNetworking: libcurl) with a 15 s timeout and no redirects, and records the
// attempt and its outcome (WebhookSchedule). Woken by LISTEN/NOTIFY, polling each second as a fallback.
import Foundation
import Log
import Logging
import MoE
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Store

/// One HTTP POST, synchronously; redirects are answered, never followed.
final class WebhookSender: NSObject, URLSessionTaskDelegate, @unchecked Sendable {
    let timeout: Double
    private var session: URLSession!

    init(timeout: Double) {
        self.timeout = timeout
        super.init()
        let cfg = URLSessionConfiguration.ephemeral
        cfg.timeoutIntervalForRequest = timeout
        cfg.timeoutIntervalForResource = timeout
        cfg.httpShouldSetCookies = false
        cfg.urlCache = nil
        session = URLSession(configuration: cfg, delegate: self, delegateQueue: nil)
    }

    func urlSession(_ session: URLSession, task: URLSessionTask, willPerformHTTPRedirection response: HTTPURLResponse,
                    newRequest request: URLRequest, completionHandler: @escaping (URLRequest?) -> Void) {
        completionHandler(nil)
    }

    struct Result { var status: Int?; var retryAfter: Double?; var error: String?; var milliseconds: Double }

    func post(_ url: URL, headers: [String: String], body: Data) -> Result {
        var req = URLRequest(url: url, cachePolicy: .reloadIgnoringLocalCacheData, timeoutInterval: timeout)
        req.httpMethod = "POST"
        for (k, v) in headers { req.setValue(v, forHTTPHeaderField: k) }
        req.httpBody = body
        final class Box: @unchecked Sendable { var result = Result(status: nil, retryAfter: nil, error: "no response", milliseconds: 0) }
        let box = Box(), done = DispatchSemaphore(value: 0)
        let start = ContinuousClock.now
        let task = session.dataTask(with: req) { _, response, error in
            box.result.milliseconds = seconds(since: start) * 1000
            if let http = response as? HTTPURLResponse {
                box.result.status = http.statusCode
                box.result.error = (200..<300).contains(http.statusCode) ? nil : "HTTP \(http.statusCode)"
                box.result.retryAfter = (http.value(forHTTPHeaderField: "Retry-After")).flatMap(WebhookSender.retryAfter)
            } else {
                box.result.error = error.map { WebhookSender.describe($0) } ?? "no response"
            }
            done.signal()
        }
        task.resume()
        if done.wait(timeout: .now() + timeout + 5) == .timedOut {
            task.cancel()
            return Result(status: nil, retryAfter: nil, error: "timed out after \(Int(timeout)) s", milliseconds: timeout * 1000)
        }
        return box.result
    }

    /// Retry-After as seconds: an integer, or an HTTP date.
    static func retryAfter(_ v: String) -> Double? {
        if let n = Int(v.trimmingCharacters(in: .whitespaces)), n >= 0 { return Double(n) }
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX"); f.timeZone = TimeZone(identifier: "GMT")
        f.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        return f.date(from: v).map { max(0, $0.timeIntervalSinceNow) }
    }

    static func describe(_ e: Error) -> String {
        let n = e as NSError
        switch n.code {
        case NSURLErrorTimedOut: return "timed out"
        case NSURLErrorCannotConnectToHost: return "connection refused"
        case NSURLErrorCannotFindHost: return "host not found"
        case NSURLErrorNetworkConnectionLost: return "connection lost"
        default: return "network error \(n.code)"
        }
    }
}

public final class WebhookDispatcher: @unchecked Sendable {
    let repo: WebhookRepository
    let conninfo: String
    let workers: Int
    let allowPrivate: Bool
    let sender: WebhookSender
    private var queue: QueueWorkers<DueDelivery>!

    public init(pool: ConnectionPool, workers: Int, timeout: Double, allowPrivate: Bool) {
        repo = WebhookRepository(pool: pool)
        conninfo = pool.conninfo
        self.workers = workers
        self.allowPrivate = allowPrivate
        sender = WebhookSender(timeout: timeout)
        queue = QueueWorkers(name: "webhooks", conninfo: conninfo, channel: WebhookRepository.channel, workers: workers, pollSeconds: 1,
                             claim: { [repo, sender] _ in try repo.claimDue(leaseSeconds: sender.timeout + 45) },
                             handle: { [unowned self] d in deliver(d) })
    }

    let logger = R3Log.logger("r3.webhooks")

    public func start() { queue.start() }
    public func stop() { queue.stop() }
    public func waitUntilStopped() { queue.waitUntilStopped() }
    var isStopping: Bool { queue.isStopping }

    func deliver(_ d: DueDelivery) {
        let result: WebhookSender.Result
        do {
            let url = try URLGuard.check(d.url, allowPrivate: allowPrivate)
            let ts = Int(Date().timeIntervalSince1970)
            result = sender.post(url, headers: [
                "Content-Type": "application/json", "User-Agent": "r3-webhooks/1",
                "webhook-id": d.messageID, "webhook-timestamp": String(ts),
                "webhook-signature": WebhookSigner.signature(id: d.messageID, timestamp: ts, body: d.body, secrets: d.secrets),
            ], body: Data(d.body.utf8))
        } catch {
            result = WebhookSender.Result(status: nil, retryAfter: nil, error: "\(error)", milliseconds: 0)
        }
        let outcome = WebhookSchedule.outcome(attempt: d.scheduleAttempt, status: result.status, retryAfter: result.retryAfter,
                                              unit: Double.random(in: 0..<1))
        try? repo.record(d, statusCode: result.status, latencyMs: result.milliseconds, error: result.error, outcome: outcome)
        // the host only: a webhook URL's path or query is often its secret (Slack, Discord)
        var m: Logger.Metadata = ["delivery_id": .string(d.id), "webhook_id": .string(d.endpointID), "message_id": .string(d.messageID),
                                  "host": .string(URLComponents(string: d.url)?.host ?? "?"), "attempt": .stringConvertible(d.attempt),
                                  "latency_ms": .stringConvertible((result.milliseconds * 10).rounded() / 10)]
        if let st = result.status { m["status"] = .stringConvertible(st) }
        if let e = result.error { m["error"] = .string(String(e.prefix(300))) }
        let level: Logger.Level
        switch outcome {
        case .delivered: m["outcome"] = "delivered"; level = .info
        case let .retry(after): m["outcome"] = "retry"; m["retry_in_s"] = .stringConvertible((after * 10).rounded() / 10); level = .warning
        case .failed: m["outcome"] = "failed"; level = .error
        case .disableEndpoint: m["outcome"] = "endpoint_disabled"; level = .error
        }
        logger.log(level: level, "webhook attempt", metadata: m)
    }
}
