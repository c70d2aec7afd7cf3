// RoutesBench: `r3 bench routes`: the routes service end to end on loopback: ingest MB/s of a large
// base64-int32 payload, fetch latency as .npy (int32 and uint8), stored bytes per index, and
// small-request throughput under wrk. It starts its own service on the embedded PostgreSQL (or
// DATABASE_URL) in a temporary data directory.
import ArgumentParser
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Log
import HTTP
import Routes
import Service
import Store

struct RoutesBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "routes", abstract: "Routes service benchmark; one JSON object per case.")
    /// Each ingest case is the median of this many requests (all are printed): on a fresh cluster the first one
    /// or two are the slowest (the routes table and its TOAST table grow page by page), and with five the
    /// median was at the mercy of one more slow request.
    static let ingestRuns = 11

    @Option var tokens = 32_768
    @Option var layers = 48
    @Option(name: .customLong("top-k")) var topK = 8
    @Option var experts = 128
    @Option(help: "Fetches per format for the latency percentiles.") var fetches = 50
    @Option(help: "wrk duration in seconds (0 skips wrk).") var wrkSeconds = 5
    @Option(help: "Sequences in the SGLang batch ingested in one request (0 skips it).") var batch = 64
    @Option(help: "Rollouts in the NDJSON batch (POST /v1/rollouts:batchCreate) sent with curl.") var batchRollouts = 4
    @Flag(help: "Small payload and few fetches (smoke test).") var quick = false

    func run() throws {
        let T = quick ? 1024 : tokens, n = quick ? 10 : fetches
        let svc = try BenchService(name: "routes")
        defer { svc.stop() }
        let (config, pool, port, client, label) = (svc.config, svc.pool, svc.port, svc.client, svc.label)
        let auth = "Authorization: Bearer \(svc.key)"
        let base: [String: Any] = ["tokens": T, "layers": layers, "top_k": topK, "experts": experts, "database": label, "log_level": config.logLevel.rawValue]

        // payload: int32 routes [T, L, K] as {dtype, shape, data}
        var rng = SystemRandomNumberGenerator()
        var ids = [Int32](repeating: 0, count: T * layers * topK)
        for r in 0..<(T * layers) {
            var chosen = Set<Int32>()
            for j in 0..<topK {
                var e: Int32
                repeat { e = Int32.random(in: 0..<Int32(experts), using: &rng) } while chosen.contains(e)
                chosen.insert(e); ids[r * topK + j] = e
            }
        }
        let raw = ids.withUnsafeBufferPointer { Data(buffer: $0) }
        // the text Python's json.dumps makes of the documented literal {"model": …, "routed_experts": {"dtype",
        // "shape", "data"}}: keys in that order in every run (JSONSerialization would order a dictionary's keys
        // differently in each process, and data before shape or dtype takes another path in the server), '/'
        // not escaped, ", " and ": " separators
        let body = Data(("{\"model\": \"bench\", \"token_ids\": [" + Array(repeating: "1", count: T).joined(separator: ", ")
            + "], \"prompt_length\": 0, \"num_experts\": \(experts), \"routed_experts\": {\"dtype\": \"int32\", \"shape\": [\(T), \(layers), \(topK)], "
            + "\"data\": \"" + raw.base64EncodedString() + "\"}}").utf8)
        var ingest: [Double] = []
        var rid = ""
        for _ in 0..<(quick ? 2 : Self.ingestRuns) {
            let t0 = Date()
            let r = try client.request("POST", "/v1/rollouts", headers: [auth, "Content-Type: application/json"], body: body)
            ingest.append(Date().timeIntervalSince(t0))
            guard r.status == 201, let o = try JSONSerialization.jsonObject(with: r.body) as? [String: Any], let id = o["id"] as? String else {
                throw ValidationError("ingest failed: HTTP \(r.status)")
            }
            rid = id
        }
        let ti = median(ingest)
        try printJSON(["case": "ingest", "config": base.merging(["encoding": "base64 int32 JSON"]) { $1 },
                       "payload_mb": Double(body.count) / 1e6, "int32_mb": Double(raw.count) / 1e6,
                       "mb_per_s": Double(body.count) / ti / 1e6, "route_input_mb_per_s": Double(raw.count) / ti / 1e6, "seconds_p50": ti,
                       "seconds_all": ingest])
        if batch > 0 { try sglangBatch(client: client, auth: auth, ids: ids, T: T, base: base) }

        for (name, query) in [("fetch_npy_int32", "format=npy"), ("fetch_npy_uint8", "format=npy&dtype=uint8"), ("fetch_raw_int32", "format=raw")] {
            var lat: [Double] = []
            var bytes = 0
            for _ in 0..<n {
                let t0 = Date()
                let r = try client.request("GET", "/v1/rollouts/\(rid)/routes?\(query)", headers: [auth], body: nil)
                lat.append(Date().timeIntervalSince(t0))
                guard r.status == 200 else { throw ValidationError("fetch failed: HTTP \(r.status)") }
                bytes = r.body.count
            }
            lat.sort()
            try printJSON(["case": name, "config": base.merging(["fetches": n]) { $1 }, "bytes": bytes,
                           "p50_ms": lat[lat.count / 2] * 1000, "p99_ms": lat[min(lat.count - 1, Int(Double(lat.count) * 0.99))] * 1000])
        }

        try externalFetches(port: port, key: svc.key, rid: rid, n: n, base: base)
        try externalClients(port: port, key: svc.key, rid: rid, body: body, ids: ids, T: T, n: n, base: base)

        let stored = try pool.with { try $0.query("SELECT octet_length(data) AS b FROM routes WHERE rollout_id = \(rid)::uuid").intOrNil(0, "b") } ?? 0   // once: every partition may be probed
        try printJSON(["case": "stored_bytes", "config": base, "bytes": stored, "bytes_per_index": Double(stored) / Double(ids.count)])

        if wrkSeconds > 0 && !quick {
            let small = try client.request("POST", "/v1/rollouts", headers: [auth, "Content-Type: application/json"],
                                           body: Data(#"{"model": "small", "token_ids": [1, 2, 3], "prompt_length": 1}"#.utf8))
            let sid = ((try? JSONSerialization.jsonObject(with: small.body)) as? [String: Any])?["id"] as? String ?? ""
            let cases = [("small_get_livez", "/livez", [String]()), ("small_get_whoami", "/v1/whoami", [auth]),
                         ("small_get_rollout", "/v1/rollouts/\(sid)", [auth])]
            var livez = 0.0
            for (name, path, headers) in cases {
                if let rps = runWrk(port: port, path: path, headers: headers, seconds: wrkSeconds) {
                    if name == "small_get_livez" { livez = rps }
                    try printJSON(["case": name, "config": ["wrk": "-t2 -c64 -d\(wrkSeconds)s", "path": path.hasPrefix("/v1/rollouts") ? "/v1/rollouts/{id}" : path,
                                                            "log_level": config.logLevel.rawValue],
                                   "requests_per_s": rps, "fraction_of_livez": livez > 0 ? rps / livez as Any : NSNull()])
                } else {
                    try printJSON(["case": name, "config": ["wrk": "not installed (apt-get install wrk)"], "requests_per_s": NSNull()])
                }
            }
        }
    }

    /// POST /v1/rollouts:sglang with `batch` sequences of T tokens as SGLang's /generate answers a batch:
    /// bare base64 int32 routes over every layer, output_ids and output_token_logprobs. The body is
    /// streamed from a few distinct sequences (generating 64 × 12.6M random ids would dominate the run).
    func sglangBatch(client: LoopbackClient, auth: String, ids first: [Int32], T: Int, base: [String: Any]) throws {
        let n = quick ? 4 : batch, distinct = min(n, 4)
        let model = "bench-layout-\(getpid())"
        let cfg: [String: Any] = ["model_type": "qwen3_moe", "num_hidden_layers": layers, "num_experts": experts, "num_experts_per_tok": topK]
        let reg = try client.request("POST", "/v1/models", headers: [auth, "Content-Type: application/json"],
                                     body: try JSONSerialization.data(withJSONObject: ["name": model, "hf_config": cfg]))
        guard reg.status == 201 else { throw ValidationError("model registration failed: HTTP \(reg.status)") }
        let P = 256, O = T - P
        var rng = SystemRandomNumberGenerator()
        var items: [Data] = []
        var routeBytes = 0
        for d in 0..<distinct {
            var ids = first
            if d > 0 {   // another permutation of each row's experts: distinct data, same validity
                for r in 0..<((T - 1) * layers) { let b = r * topK; let s = Int.random(in: 0..<topK, using: &rng); ids.swapAt(b, b + s) }
            }
            let routes = ids[0..<((T - 1) * layers * topK)].withUnsafeBufferPointer { Data(buffer: $0) }
            routeBytes = routes.count
            let out = (0..<O).map { _ in Int.random(in: 0..<32_000, using: &rng) }
            let logprobs = (0..<O).map { i in [Double(-Float.random(in: 0..<4, using: &rng)), Double(out[i]), NSNull()] as [Any] }
            let item: [String: Any] = ["text": "", "output_ids": out, "meta_info": [
                "id": "bench-\(d)", "prompt_tokens": P, "completion_tokens": O, "weight_version": "0", "finish_reason": ["type": "length", "length": O],
                "output_token_logprobs": logprobs, "routed_experts": routes.base64EncodedString()]]
            items.append(try JSONSerialization.data(withJSONObject: item, options: [.withoutEscapingSlashes]))
        }
        let prompts = (0..<n).map { i in (0..<P).map { ($0 * 31 + i) % 32_000 } }
        let head = Data(#"{"model": "\#(model)", "input_ids": "#.utf8) + (try JSONSerialization.data(withJSONObject: prompts))
            + Data(#", "reward": 1.0, "response": ["#.utf8)
        let tail = Data("]}".utf8)
        let length = head.count + tail.count + (0..<n).reduce(0) { $0 + items[$1 % distinct].count } + (n - 1)
        var timings: [Double] = []
        for _ in 0..<(quick ? 1 : 2) {
            var i = -1
            let t0 = Date()
            let r = try client.request("POST", "/v1/rollouts:sglang", headers: [auth, "Content-Type: application/json"], length: length) {
                i += 1
                if i == 0 { return head }
                if i > 2 * n { return nil }
                if i == 2 * n { return tail }
                return i % 2 == 1 ? items[(i / 2) % distinct] : Data(",".utf8)
            }
            timings.append(Date().timeIntervalSince(t0))
            guard r.status == 201 else { throw ValidationError("batch ingest failed: HTTP \(r.status) \(String(decoding: r.body.prefix(300), as: UTF8.self))") }
        }
        let t = timings.min()!
        try printJSON(["case": "ingest_sglang_batch", "config": base.merging(["sequences": n, "encoding": "SGLang /generate list, bare base64 int32, every layer",
                                                                                   "prompt_tokens": P, "runs": timings.count]) { $1 },
                       "payload_mb": Double(length) / 1e6, "route_int32_mb": Double(routeBytes * n) / 1e6,
                       "mb_per_s": Double(length) / t / 1e6, "route_input_mb_per_s": Double(routeBytes * n) / t / 1e6, "seconds_best": t,
                       "seconds_all": timings])
    }

    /// The same ingest from curl in a process of its own (bodies from files, as `curl --data-binary @file`
    /// sends them): the JSON body, the .npy body (PUT), and an NDJSON batch of `batchRollouts` rollouts.
    func externalClients(port: UInt16, key: String, rid: String, body: Data, ids: [Int32], T: Int, n: Int, base: [String: Any]) throws {
        guard let curl = CurlClient(port: port, key: key) else { try printJSON(["case": "ingest_curl", "config": ["curl": "not installed"]]); return }
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("r3-bench-bodies-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = curl.url
        func run(_ args: [String]) throws -> (seconds: Double, output: String) { try curl.run(args, reply: dir.appendingPathComponent("reply")) }
        let int32MB = Double(ids.count * 4) / 1e6
        // the JSON body of the in-process case
        let jsonFile = dir.appendingPathComponent("rollout.json")
        try body.write(to: jsonFile)
        var times: [Double] = []
        for _ in 0..<(quick ? 2 : Self.ingestRuns) {
            times.append(try run(["-H", "Content-Type: application/json", "--data-binary", "@\(jsonFile.path)", "\(url)/v1/rollouts"]).seconds)
        }
        try printJSON(["case": "ingest_curl", "config": base.merging(["encoding": "base64 int32 JSON", "client": "curl, body from a file"]) { $1 },
                       "payload_mb": Double(body.count) / 1e6, "int32_mb": int32MB, "seconds_all": times,
                       "mb_per_s": Double(body.count) / median(times) / 1e6, "route_input_mb_per_s": int32MB / median(times)])
        // binary: the rollout without routes, then PUT its routes as an int32 .npy
        let npyFile = dir.appendingPathComponent("routes.npy")
        try NPY.encode(NPYArray(dtype: .int32, shape: [T, layers, topK], bytes: ids.withUnsafeBufferPointer { Data(buffer: $0) })).write(to: npyFile)
        let tokensFile = dir.appendingPathComponent("tokens.json")
        try Data(#"{"model": "bench", "prompt_length": 0, "token_ids": ["#.utf8 + Data(Array(repeating: "1", count: T).joined(separator: ",").utf8) + Data("]}".utf8)).write(to: tokensFile)
        times = []
        for _ in 0..<(quick ? 2 : Self.ingestRuns) {
            let created = try run(["-H", "Content-Type: application/json", "--data-binary", "@\(tokensFile.path)", "\(url)/v1/rollouts"])
            guard let o = try JSONSerialization.jsonObject(with: Data(created.output.utf8)) as? [String: Any], let id = o["id"] as? String else {
                throw ValidationError("rollout creation failed: \(created.output.prefix(200))")
            }
            let put = try run(["-X", "PUT", "-H", "Content-Type: application/x-npy", "--data-binary", "@\(npyFile.path)",
                               "\(url)/v1/rollouts/\(id)/routes?num_experts=\(experts)"])
            times.append(created.seconds + put.seconds)
        }
        let npyBytes = (try FileManager.default.attributesOfItem(atPath: npyFile.path)[.size] as? Int) ?? 0
        try printJSON(["case": "ingest_npy_curl", "config": base.merging(["encoding": "int32 .npy body (PUT /v1/rollouts/{id}/routes) after a JSON rollout without routes",
                                                                          "client": "curl, bodies from files"]) { $1 },
                       "payload_mb": Double(npyBytes) / 1e6, "int32_mb": int32MB, "seconds_all": times, "route_input_mb_per_s": int32MB / median(times)])
        // a batch: the same rollout `batchRollouts` times as NDJSON lines, in one transaction through binary COPY
        let k = quick ? 2 : batchRollouts
        let ndjson = dir.appendingPathComponent("batch.ndjson")
        FileManager.default.createFile(atPath: ndjson.path, contents: nil)
        let h = try FileHandle(forWritingTo: ndjson)
        for _ in 0..<k { h.write(body); h.write(Data("\n".utf8)) }
        try h.close()
        times = []
        for _ in 0..<(quick ? 1 : 3) {
            times.append(try run(["-H", "Content-Type: application/x-ndjson", "--data-binary", "@\(ndjson.path)", "\(url)/v1/rollouts:batchCreate"]).seconds)
        }
        try printJSON(["case": "ingest_batch_curl", "config": base.merging(["encoding": "NDJSON of base64 int32 JSON rollouts (POST /v1/rollouts:batchCreate)",
                                                                            "rollouts": k, "client": "curl, body from a file"]) { $1 },
                       "payload_mb": Double(body.count * k) / 1e6, "int32_mb": int32MB * Double(k), "seconds_all": times,
                       "route_input_mb_per_s": int32MB * Double(k) / median(times)])
    }

    /// uint8 .npy fetches from clients in processes of their own: curl (to /dev/null), from the route cache and
    /// from the database, then Python requests + np.load (Tests/bench/fetch_requests.py). Run right after the
    /// in-process fetches, before the external ingests leave PostgreSQL writing behind them.
    func externalFetches(port: UInt16, key: String, rid: String, n: Int, base: [String: Any]) throws {
        guard let curl = CurlClient(port: port, key: key) else { try printJSON(["case": "fetch_npy_uint8_curl", "config": ["curl": "not installed"]]); return }
        let url = curl.url
        func run(_ args: [String]) throws -> (seconds: Double, output: String) { try curl.run(args, reply: nil) }
        // fetch: uint8 .npy with curl (to /dev/null), then with Python requests + np.load
        var lat: [Double] = []
        for _ in 0..<n { lat.append(try run(["\(url)/v1/rollouts/\(rid)/routes?format=npy&dtype=uint8"]).seconds) }
        lat.sort()
        try printJSON(["case": "fetch_npy_uint8_curl", "config": base.merging(["fetches": n, "client": "curl -o /dev/null, one process per fetch (time_total)"]) { $1 },
                       "p50_ms": lat[lat.count / 2] * 1000, "p99_ms": lat[min(lat.count - 1, Int(Double(lat.count) * 0.99))] * 1000])
        // the same from the database: as the first read after a restart, or of a rollout another process ingested
        lat = []
        for _ in 0..<n {
            RouteCache.shared.removeAll()
            lat.append(try run(["\(url)/v1/rollouts/\(rid)/routes?format=npy&dtype=uint8"]).seconds)
        }
        lat.sort()
        try printJSON(["case": "fetch_npy_uint8_curl_uncached", "config": base.merging(["fetches": n, "client": "curl -o /dev/null, route cache emptied before each fetch"]) { $1 },
                       "p50_ms": lat[lat.count / 2] * 1000, "p99_ms": lat[min(lat.count - 1, Int(Double(lat.count) * 0.99))] * 1000])
        let script = URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent("Tests/bench/fetch_requests.py")
        guard FileManager.default.fileExists(atPath: script.path) else {
            try printJSON(["case": "fetch_npy_uint8_requests", "config": ["script": "Tests/bench/fetch_requests.py not found: run from the repository"]]); return
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", script.path, "--url", url, "--key", key, "--id", rid, "-n", String(n)]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let text = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0, var o = try? JSONSerialization.jsonObject(with: text) as? [String: Any] else {
            try printJSON(["case": "fetch_npy_uint8_requests", "config": ["script": "failed (needs python3 with requests and numpy: make pydeps)"]]); return
        }
        o["case"] = "fetch_npy_uint8_requests"
        o["config"] = base.merging(["fetches": n, "client": o.removeValue(forKey: "client") ?? ""]) { $1 }
        try printJSON(o)
    }

    func runWrk(port: UInt16, path: String, headers: [String], seconds: Int) -> Double? {
        guard let wrk = ["/usr/bin/wrk", "/usr/local/bin/wrk"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else { return nil }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: wrk)
        p.arguments = ["-t2", "-c64", "-d\(seconds)s"] + headers.flatMap { ["-H", $0] } + ["http://127.0.0.1:\(port)\(path)"]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return nil }
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        for line in text.split(separator: "\n") where line.hasPrefix("Requests/sec:") {
            return Double(line.split(separator: " ").last ?? "")
        }
        return nil
    }
}

/// curl in a process of its own, with the bench's key: each run reports the status and curl's time_total.
struct CurlClient {
    let path: String, key: String, url: String

    init?(port: UInt16, key: String) {
        guard let p = ["/usr/bin/curl", "/usr/local/bin/curl"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else { return nil }
        path = p; self.key = key; url = "http://127.0.0.1:\(port)"
    }

    /// Runs curl with `args`; the body goes to `reply` (read back and returned) or to /dev/null. A status
    /// other than 2xx is an error.
    func run(_ args: [String], reply: URL?) throws -> (seconds: Double, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = ["-sS", "-o", reply?.path ?? "/dev/null", "-w", "%{http_code} %{time_total}", "-H", "Authorization: Bearer \(key)"] + args
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        let parts = text.split(separator: " ")
        let body = reply.flatMap { try? String(contentsOf: $0, encoding: .utf8) } ?? ""
        guard parts.count == 2, parts[0].hasPrefix("20"), let t = Double(parts[1]) else {
            throw ValidationError("curl \(args.last ?? ""): \(text) \(body.prefix(300))")
        }
        return (t, body)
    }
}

/// A keep-alive HTTP/1.1 client over one loopback socket (Content-Length and chunked responses).
final class LoopbackClient {
    let fd: Int32
    init(port: UInt16) throws { fd = try connectLoopback(port: port) }
    deinit { close(fd) }

    func request(_ method: String, _ path: String, headers: [String], body: Data?) throws -> (status: Int, body: Data) {
        var head = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        for h in headers { head += h + "\r\n" }
        if let b = body { head += "Content-Length: \(b.count)\r\n" }
        head += "\r\n"
        try sendAll(Data(head.utf8))
        if let b = body { try sendAll(b) }
        return try request(readOnly: ())
    }

    /// A request whose body of `length` bytes comes from `next` piece by piece (nil ends it).
    func request(_ method: String, _ path: String, headers: [String], length: Int, _ next: () -> Data?) throws -> (status: Int, body: Data) {
        var head = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        for h in headers { head += h + "\r\n" }
        head += "Content-Length: \(length)\r\n\r\n"
        try sendAll(Data(head.utf8))
        var sent = 0
        while let piece = next() { try sendAll(piece); sent += piece.count }
        guard sent == length else { throw ValidationError("sent \(sent) body bytes, declared \(length)") }
        return try request(readOnly: ())
    }

    /// Reads one response: the head through a small buffer, then the body received straight into a buffer
    /// of its Content-Length, or of each chunk's size for a chunked body (as a client that keeps the body in
    /// memory does, with no copies after recv).
    private func request(readOnly: Void) throws -> (status: Int, body: Data) {
        var head = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let n = recv(fd, &chunk, chunk.count, 0)
            guard n > 0 else { throw ValidationError("connection closed") }
            let from = max(0, head.count - 3)
            head.append(contentsOf: chunk[0..<n])
            guard let end = head[from...].firstRange(of: [13, 10, 13, 10]) else { continue }
            let headText = String(decoding: head[..<end.lowerBound], as: UTF8.self)
            let status = Int(headText.split(separator: " ")[1]) ?? 0
            var len = 0, chunked = false
            for l in headText.split(separator: "\r\n") {
                let lower = l.lowercased()
                if lower.hasPrefix("content-length:") { len = Int(l.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) ?? 0 }
                if lower.hasPrefix("transfer-encoding:") && lower.hasSuffix("chunked") { chunked = true }
            }
            var pending = Array(head[end.upperBound...])
            if !chunked { return (status, try receive(len, after: &pending)) }
            var body = Data()
            while true {
                let line = try readLine(&pending)
                guard let size = line.split(separator: ";").first.flatMap({ Int($0, radix: 16) }), size >= 0 else { throw ValidationError("bad chunk size \(line)") }
                if size == 0 { guard try readLine(&pending).isEmpty else { throw ValidationError("trailers are not read here") }; return (status, body) }
                let piece = try receive(size, after: &pending)
                if body.isEmpty { body = piece } else { body.append(piece) }   // one chunk: no copy
                guard try readLine(&pending).isEmpty else { throw ValidationError("a chunk did not end with CRLF") }
            }
        }
    }

    /// `count` bytes: first what `pending` holds, then received straight into the result.
    private func receive(_ count: Int, after pending: inout [UInt8]) throws -> Data {
        var body = Data(count: count)
        let have = min(count, pending.count)
        try body.withUnsafeMutableBytes { dst in
            pending.withUnsafeBytes { src in dst.baseAddress!.copyMemory(from: src.baseAddress!, byteCount: have) }
            var got = have
            while got < count {
                let n = recv(fd, dst.baseAddress! + got, count - got, 0)
                guard n > 0 else { throw ValidationError("connection closed mid-response") }
                got += n
            }
        }
        pending.removeFirst(have)
        return body
    }

    /// One CRLF-terminated line of a chunked body (without the CRLF).
    private func readLine(_ pending: inout [UInt8]) throws -> String {
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            if let r = pending.firstRange(of: [13, 10]) {
                let line = String(decoding: pending[..<r.lowerBound], as: UTF8.self)
                pending.removeFirst(r.upperBound)
                return line
            }
            guard pending.count < 4096 else { throw ValidationError("a chunk line is too long") }
            let n = recv(fd, &buf, buf.count, 0)
            guard n > 0 else { throw ValidationError("connection closed mid-response") }
            pending += buf[0..<n]
        }
    }

    private func sendAll(_ d: Data) throws {
        try d.withUnsafeBytes { raw in
            var off = 0
            while off < raw.count {
                let n = send(fd, raw.baseAddress! + off, raw.count - off, Int32(MSG_NOSIGNAL))
                guard n > 0 else { throw ValidationError("send failed") }
                off += n
            }
        }
    }
}

/// A service for a benchmark: `r3 serve`'s App on a loopback port, on the embedded PostgreSQL in a temporary
/// data directory (or DATABASE_URL), logging as `r3 serve` does, with a key of a fresh project.
final class BenchService {
    let config: ServiceConfig
    let pool: ConnectionPool
    let embedded: EmbeddedPostgres?
    let label: String
    let tmp: URL
    let server: HTTPServer
    let port: UInt16
    let key: String
    let client: LoopbackClient

    init(name: String) throws {
        var config = try ServiceConfig.fromEnvironment()
        R3Log.bootstrap(level: config.logLevel)
        tmp = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("r3-bench-\(name)-\(getpid())")
        if config.databaseURL == nil { config.dataDir = tmp }
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        _ = chmod(tmp.path, 0o755)
        self.config = config
        (pool, embedded, label) = try openDatabase(config)
        let app = try App(config: config, pool: pool)
        var http = config.http
        http.port = 0
        server = HTTPServer(config: http, inline: { app.decideInline($0) }) { app.decide($0) }
        server.logger = R3Log.logger("r3.http")
        port = try server.start()
        key = try KeyRepository(pool: pool).create(project: "bench-\(name)-\(getpid())").key
        client = try LoopbackClient(port: port)
    }

    func stop() {
        server.shutdown(); server.waitUntilStopped()
        if embedded?.startedHere == true { embedded?.stop() }
        try? FileManager.default.removeItem(at: tmp)
    }
}
