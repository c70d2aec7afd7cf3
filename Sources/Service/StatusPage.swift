// StatusPage: the one renderer of the job page and the run page: what a person needs to judge a run —
// its parameters and times, progress, alarms (table, and a mark on the chart of the metric that fired),
// and a chart of every numeric series, grouped with the train–inference mismatch first, ticks at steps
// and values rounded to significant digits.
import Foundation
import JSON
import RL
import Store

struct StatusPage {
    struct Alarm {
        var step: Int
        var rule: String
        var metric: String
        var value: Double?
        var threshold: Double?
        var action: String
    }

    var heading: String
    /// One line under the heading, HTML already escaped.
    var summary: String
    /// Parameters and times, plain text.
    var facts: [(String, String)]
    var progress: (done: Int, total: Int)?
    var error: String?
    var alarms: [Alarm]
    var rows: [(step: Int, m: [String: Double])]

    /// Chart groups in page order; a metric goes to the first group that claims it, the rest to the last.
    static let groups: [(title: String, claims: @Sendable (String) -> Bool)] = [
        ("Train–inference mismatch", { Mismatch.metricNames.contains($0) || ["replay_live_agreement", "router_gate_entropy"].contains($0) }),
        ("Reward and responses", { $0.hasPrefix("reward") || $0.hasPrefix("response_len") || $0.hasPrefix("eval") }),
        ("Optimisation", { ["loss", "grad_norm", "entropy", "clip_frac", "lr", "learning_rate", "kl", "policy_version"].contains($0) }),
        ("Expert load", { $0.hasPrefix("expert_load") }),
        ("Timing", { $0.hasSuffix("_seconds") }),
        ("Trainer metrics", { _ in true }),
    ]
    static let logScale: Set<String> = ["k3_kl", "grad_norm"]

    /// The metric an alarm's rule watches, as charted.
    static func chartedMetric(_ metric: String) -> String { metric == "reward_mean_5" ? "reward_mean" : metric }

    func render() -> String {
        var body = "<h1>\(SVGChart.esc(heading))</h1><p>\(summary)</p>"
        if let (done, total) = progress {
            let pct = total > 0 ? 100 * done / total : 0
            body += "<div><div class=\"bar\"><div style=\"width:\(pct)%\"></div></div> \(done) / \(total)</div>"
        }
        if let e = error { body += "<p class=\"alarm\">error: \(SVGChart.esc(e))</p>" }
        body += "<h2>Parameters</h2><table id=\"params\">"
        for (k, v) in facts { body += "<tr><th>\(SVGChart.esc(k))</th><td>\(SVGChart.esc(v))</td></tr>" }
        body += "</table>"
        body += "<h2>Collapse alarms</h2>"
        if alarms.isEmpty { body += "<p>none</p>" } else {
            body += "<table id=\"alarms\"><tr><th>step</th><th>rule</th><th>metric</th><th>value</th><th>threshold</th><th>action</th></tr>"
            for a in alarms {
                body += "<tr class=\"alarm\"><td>\(a.step)</td><td>\(SVGChart.esc(a.rule))</td><td>\(SVGChart.esc(a.metric))</td>"
                body += "<td>\(a.value.map { SVGChart.sig($0) } ?? "")</td><td>\(a.threshold.map { SVGChart.sig($0) } ?? "")</td><td>\(SVGChart.esc(a.action))</td></tr>"
            }
            body += "</table>"
        }
        body += "<h2>Metrics</h2>"
        if rows.isEmpty { return body + "<p>no steps yet</p>" }
        var keys = Set(rows.flatMap { $0.m.keys })
        keys.remove("step")
        let order = ["reward_mean", "response_len_mean", "loss", "grad_norm", "entropy", "clip_frac"] + Mismatch.metricNames
        for g in StatusPage.groups {
            let mine = keys.filter(g.claims).sorted { a, b in
                let ia = order.firstIndex(of: a) ?? Int.max, ib = order.firstIndex(of: b) ?? Int.max
                return ia != ib ? ia < ib : a < b
            }
            keys.subtract(mine)
            if mine.isEmpty { continue }
            body += "<h3>\(SVGChart.esc(g.title))</h3><div class=\"charts\">"
            // one chart per metric; the quantiles of a ratio share one (log scale: ratios are positive and span decades)
            var charts: [(title: String, keys: [String])] = []
            for key in mine {
                if let fam = ["token_ratio", "seq_ratio"].first(where: { key.hasPrefix($0 + "_") }) {
                    if let i = charts.firstIndex(where: { $0.title == fam }) { charts[i].keys.append(key) } else { charts.append((fam, [key])) }
                } else {
                    charts.append((key, [key]))
                }
            }
            for (title, ks) in charts {
                let series = ks.enumerated().map { i, k in
                    SVGChart.Series(name: k, color: SVGChart.palette[i % SVGChart.palette.count], points: rows.map { (Double($0.step), $0.m[k]) })
                }
                var c = SVGChart(title: title, series: series, logY: StatusPage.logScale.contains(title) || ks.count > 1,
                                 markers: alarms.filter { ks.contains(StatusPage.chartedMetric($0.metric)) }.map { SVGChart.Marker(x: Double($0.step), label: $0.rule) })
                c.width = 440; c.height = ks.count > 1 ? 290 : 250
                body += c.render()
            }
            body += "</div>"
        }
        return body
    }
}

extension App {
    /// The alarms of a job's or run's collapse events.
    func pageAlarms(_ events: [JobEvent]) -> [StatusPage.Alarm] {
        events.compactMap { e in
            guard let d = parseJSON(e.dataJSON) as? [String: Any], let step = d["step"] as? Int else { return nil }
            return StatusPage.Alarm(step: step, rule: d["rule"] as? String ?? "", metric: d["metric"] as? String ?? "",
                                    value: (d["value"] as? NSNumber)?.doubleValue, threshold: (d["threshold"] as? NSNumber)?.doubleValue,
                                    action: d["action"] as? String ?? "")
        }
    }

    /// "key: value" facts of a JSON object's scalars (lists shown by their length), sorted by key.
    static func facts(_ text: String, skip: Set<String> = []) -> [(String, String)] {
        guard let o = (try? JSONReader.parse(Array(text.utf8)))?.objectValue else { return [] }
        return facts(o, skip: skip)
    }

    static func facts(_ o: JSONObject, skip: Set<String> = []) -> [(String, String)] {
        o.keys.filter { !skip.contains($0) }.sorted().compactMap { k in
            guard let v = o[k] else { return nil }
            return (k, fact(v))
        }
    }

    static func fact(_ v: JSONValue) -> String {
        switch v {
        case .null: return "null"
        case let .bool(b): return b ? "true" : "false"
        case let .int(i): return String(i)
        case let .double(d): return SVGChart.sig(d, 6)
        case let .string(s): return s
        case let .array(l): return "\(l.count) items"
        case let .object(d): return d.count == 0 ? "{}" : d.keys.map { "\($0)=\(fact(d[$0]!))" }.joined(separator: ", ")
        }
    }
}
