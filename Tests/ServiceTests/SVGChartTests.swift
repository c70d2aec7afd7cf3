// SVGChartTests: the page charts' axis and numbers: ticks at whole steps, values to significant digits,
// an all-zero series drawn on a non-negative axis, and alarm markers where the alarm's step is.
import Foundation
import Testing
@testable import Service

struct SVGChartTests {
    @Test func ticksAreWholeStepsAtMostAboutSix() {
        #expect(SVGChart.stepTicks(0, 3) == [0, 1, 2, 3])
        #expect(SVGChart.stepTicks(0, 29) == [0, 5, 10, 15, 20, 25])
        #expect(SVGChart.stepTicks(3, 11) == [4, 6, 8, 10])
        #expect(SVGChart.stepTicks(0.5, 0.9) == [])
        for hi in [7, 19, 50, 999, 12_345] { #expect(SVGChart.stepTicks(0, Double(hi)).count <= 8, "\(hi)") }
    }

    @Test func valuesKeepSignificantDigitsOnly() {
        #expect(SVGChart.sig(0.1 + 0.2) == "0.3")
        #expect(SVGChart.sig(1e-6) == "1e-06")
        #expect(SVGChart.sig(0.0020468) == "0.002047")
        #expect(SVGChart.sig(1.5501234) == "1.55")
        #expect(SVGChart.sig(12_345_678) == "1.235e+07")
        #expect(SVGChart.sig(.nan) == "NaN")
        #expect(SVGChart.sig(0) == "0")
    }

    @Test func anAllZeroSeriesHasNoNegativeAxisAndAlarmsAreMarkedAtTheirStep() {
        let zeros = SVGChart.Series(name: "f", color: "#000", points: (0..<10).map { (Double($0), 0.0) })
        let svg = SVGChart(title: "extreme_frac_tau2", series: [zeros], markers: [SVGChart.Marker(x: 4, label: "extreme_frac_tau2")]).render()
        #expect(!svg.contains(">-"), "no negative tick label")
        #expect(svg.contains(">1.00</text>") || svg.contains(">1.0</text>") || svg.contains(">1</text>"))
        #expect(svg.components(separatedBy: "class=\"alarm-marker\"").count == 2)
        let positive = SVGChart.Series(name: "g", color: "#000", points: (0..<4).map { (Double($0), 2.0) })
        #expect(!SVGChart(title: "g", series: [positive]).render().contains(">-"), "a constant positive series stays above zero")
    }
}
