// SVGChart: line charts as standalone SVG text (no scripts, no external assets), for the job page and
// `r3 demo`. One line per series; missing values break the line; optional log-scale y axis.
import Foundation

public struct SVGChart: Sendable {
    public struct Series: Sendable {
        public var name: String
        public var color: String
        /// (step, value); nil or non-finite values leave a gap.
        public var points: [(x: Double, y: Double?)]
        public init(name: String, color: String, points: [(x: Double, y: Double?)]) { self.name = name; self.color = color; self.points = points }
    }

    public static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]

    public var title: String
    public var series: [Series]
    public var width = 560
    public var height = 300
    public var logY = false
    public init(title: String, series: [Series], logY: Bool = false) { self.title = title; self.series = series; self.logY = logY }

    static func esc(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    /// A tick label with enough digits to tell ticks `step` apart.
    static func label(_ v: Double, step: Double) -> String {
        if v == 0 { return "0" }
        let a = abs(v)
        if a >= 1e4 || a < 1e-2 { return String(format: "%.2e", v) }
        let decimals = step > 0 ? max(0, min(8, Int((-log10(step)).rounded(.up)) + 1)) : 3
        return String(format: "%.\(decimals)f", v)
    }

    public func render() -> String {
        // a log axis only when every value is positive (a zero grad norm is real: all groups tied)
        let logY = self.logY && !series.contains { $0.points.contains { ($0.y ?? 1) <= 0 } }
        let W = Double(width), H = Double(height)
        let left = 64.0, right = 12.0, top = 28.0, bottom = 44.0 + 16.0 * Double((series.count + 2) / 3)
        let pw = W - left - right, ph = H - top - bottom
        func ty(_ y: Double) -> Double? { logY ? (y > 0 ? log10(y) : nil) : y }
        let xs = series.flatMap { $0.points.map(\.x) }
        let ys = series.flatMap { $0.points.compactMap { $0.y }.filter(\.isFinite).compactMap(ty) }
        var out = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(width)\" height=\"\(height)\" viewBox=\"0 0 \(width) \(height)\" font-family=\"sans-serif\" font-size=\"11\">"
        out += "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>"
        out += "<text x=\"\(left)\" y=\"18\" font-size=\"13\" font-weight=\"bold\">\(SVGChart.esc(title))\(logY ? " (log scale)" : "")</text>"
        out += "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(pw)\" height=\"\(ph)\" fill=\"none\" stroke=\"#999\"/>"
        guard let x0 = xs.min(), let x1 = xs.max(), var y0 = ys.min(), var y1 = ys.max() else {
            return out + "<text x=\"\(left + pw / 2)\" y=\"\(top + ph / 2)\" text-anchor=\"middle\" fill=\"#666\">no data yet</text></svg>"
        }
        if y1 - y0 < 1e-12 { let pad = max(abs(y0) * 0.1, logY ? 0.5 : 1e-6); y0 -= pad; y1 += pad }
        let xspan = max(x1 - x0, 1)
        func px(_ x: Double) -> Double { left + (x - x0) / xspan * pw }
        func py(_ y: Double) -> Double { top + ph - (y - y0) / (y1 - y0) * ph }
        for i in 0...4 {   // y grid and labels
            let v = y0 + (y1 - y0) * Double(i) / 4, y = py(v)
            out += "<line x1=\"\(left)\" x2=\"\(left + pw)\" y1=\"\(y)\" y2=\"\(y)\" stroke=\"#eee\"/>"
            let value = logY ? pow(10, v) : v
            let step = logY ? value * (pow(10, (y1 - y0) / 4) - 1) : (y1 - y0) / 4
            out += "<text x=\"\(left - 4)\" y=\"\(y + 4)\" text-anchor=\"end\" fill=\"#444\">\(SVGChart.label(value, step: step))</text>"
        }
        for i in 0...4 {
            let v = x0 + xspan * Double(i) / 4
            out += "<text x=\"\(px(v))\" y=\"\(top + ph + 14)\" text-anchor=\"middle\" fill=\"#444\">\(Int(v.rounded()))</text>"
        }
        out += "<text x=\"\(left + pw / 2)\" y=\"\(top + ph + 28)\" text-anchor=\"middle\" fill=\"#444\">step</text>"
        for s in series {
            var d = "", pen = false
            for p in s.points {
                guard let raw = p.y, raw.isFinite, let y = ty(raw) else { pen = false; continue }
                d += "\(pen ? "L" : "M")\(String(format: "%.1f", px(p.x))),\(String(format: "%.1f", py(y))) "
                pen = true
            }
            out += "<path d=\"\(d)\" fill=\"none\" stroke=\"\(s.color)\" stroke-width=\"2\"/>"
            if s.points.count == 1, let y = s.points[0].y.flatMap(ty) {
                out += "<circle cx=\"\(px(s.points[0].x))\" cy=\"\(py(y))\" r=\"3\" fill=\"\(s.color)\"/>"
            }
        }
        for (i, s) in series.enumerated() {   // legend, three per row
            let lx = left + Double(i % 3) * (pw / 3), ly = top + ph + 44 + 16 * Double(i / 3)
            out += "<rect x=\"\(lx)\" y=\"\(ly - 8)\" width=\"14\" height=\"4\" fill=\"\(s.color)\"/>"
            out += "<text x=\"\(lx + 18)\" y=\"\(ly - 3)\">\(SVGChart.esc(s.name))</text>"
        }
        return out + "</svg>"
    }
}
