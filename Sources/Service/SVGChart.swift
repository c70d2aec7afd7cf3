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

    /// A vertical mark at a step (a collapse alarm), labelled.
    public struct Marker: Sendable {
        public var x: Double
        public var label: String
        public init(x: Double, label: String) { self.x = x; self.label = label }
    }

    public var title: String
    public var series: [Series]
    public var width = 560
    public var height = 300
    public var logY = false
    public var markers: [Marker] = []
    public init(title: String, series: [Series], logY: Bool = false, markers: [Marker] = []) {
        self.title = title; self.series = series; self.logY = logY; self.markers = markers
    }

    /// `v` to `digits` significant digits (the page's numbers: no float noise).
    public static func sig(_ v: Double, _ digits: Int = 4) -> String {
        guard v.isFinite else { return v.isNaN ? "NaN" : v > 0 ? "Infinity" : "-Infinity" }
        if v == 0 { return "0" }
        let a = abs(v)
        func trim(_ m: String) -> String {
            guard m.contains(".") else { return m }
            var t = m
            while t.hasSuffix("0") { t.removeLast() }
            if t.hasSuffix(".") { t.removeLast() }
            return t
        }
        if a >= 1e6 || a < 1e-3 {
            let parts = String(format: "%.\(max(0, digits - 1))e", v).split(separator: "e")
            return trim(String(parts[0])) + "e" + parts[1]
        }
        return trim(String(format: "%.\(digits)g", v))
    }

    /// Integer steps between x0 and x1 for the axis: every step when few, else multiples of 1, 2 or 5 × 10^n (at most ~6).
    static func stepTicks(_ x0: Double, _ x1: Double) -> [Int] {
        let lo = Int(x0.rounded(.up)), hi = Int(x1.rounded(.down))
        guard hi >= lo else { return [] }
        let span = hi - lo
        var every = 1
        if span > 6 {
            let raw = Double(span) / 6
            let mag = pow(10, floor(log10(raw)))
            every = Int(([1.0, 2, 5, 10].first { $0 * mag >= raw } ?? 10) * mag)
        }
        return Array(stride(from: (lo + every - 1) / every * every, through: hi, by: every))
    }

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
        if y1 - y0 < 1e-12 {   // a constant series: a band around it that does not cross zero when the values do not
            if logY { y0 -= 0.5; y1 += 0.5 } else if y0 == 0 { y1 = 1 } else {
                let pad = abs(y0) * 0.1
                y0 = y0 > 0 ? max(0, y0 - pad) : y0 - pad
                y1 = y1 < 0 ? min(0, y1 + pad) : y1 + pad
            }
        }
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
        for t in SVGChart.stepTicks(x0, x0 + xspan) {   // ticks at real steps
            let x = px(Double(t))
            out += "<line x1=\"\(x)\" x2=\"\(x)\" y1=\"\(top + ph)\" y2=\"\(top + ph + 4)\" stroke=\"#444\"/>"
            out += "<text x=\"\(x)\" y=\"\(top + ph + 14)\" text-anchor=\"middle\" fill=\"#444\">\(t)</text>"
        }
        for m in markers where m.x >= x0 && m.x <= x0 + xspan {   // alarms
            let x = px(m.x)
            out += "<g class=\"alarm-marker\"><line x1=\"\(x)\" x2=\"\(x)\" y1=\"\(top)\" y2=\"\(top + ph)\" stroke=\"#d00\" stroke-width=\"1.5\" stroke-dasharray=\"4,3\"/>"
            out += "<text x=\"\(x + 3)\" y=\"\(top + 11)\" fill=\"#d00\">\(SVGChart.esc(m.label))</text></g>"
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
