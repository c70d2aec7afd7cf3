// RunMetricsTests: a run's step metrics, computed by the code a step report runs (StepComputation over
// the stored rollouts), equal the metrics the service's own train job computes (Policy.optimise) for the
// same rollouts when the trainer reports the training engine's own log-probs and routes: one
// implementation, to 1e-6. Every replay mode.
import Foundation
import MoE
import RL
import Routes
import Store
import Testing
@testable import Service

struct RunMetricsTests {
    @Test(arguments: [ReplayMode.none, .R2, .R3])
    func runMetricsEqualTheInternalJobs(replay: ReplayMode) throws {
        let cfg = ModelConfig(vocabSize: 98, hiddenSize: 64, intermediateSize: 128, moeIntermediateSize: 32, numLayers: 2, numHeads: 4,
                              numKVHeads: 2, headDim: 16, numExperts: 16, topK: 4, normTopKProb: true)
        let policy = Policy(model: try Model(config: cfg, seed: 3, std: 0.1, routerStd: 0.3), learningRate: 1e-4, workers: 2)
        var rc = RolloutConfig(); rc.promptsPerStep = 4; rc.samplesPerPrompt = 4; rc.seed = 5; rc.maxTokens = 12
        let samples = try policy.rollout(task: try Task(kind: .reverse, difficulty: 4), step: 0, rc).samples
        // what the trainer sees before its update: its log-probs and live routes (R3 replays the recorded routes)
        let view = try policy.trainingView(samples, replay: replay)
        var opt = OptimConfig(); opt.replay = replay
        let job = try policy.optimise(samples, opt)

        // the stored rollouts, as the repository reads them back for a report
        var stored: [String: ReportRollout] = [:]
        var report = StepReport(step: 0)
        report.replay = replay
        for (i, s) in samples.enumerated() {
            let id = String(format: "00000000-0000-0000-0000-%012d", i)
            var r = ReportRollout(id: id, tokens: s.tokens.count, promptLength: s.promptLength, logprobs: s.inferLogprobs)
            var packed = try PackedRoutes(s.routes!, numExperts: cfg.numExperts)
            packed.hiddenLayers = cfg.numLayers; packed.moeLayers = cfg.moeLayers
            let (load, missing) = try ExpertLoad.count(packed)
            r.routeShape = (packed.rows, packed.layers, packed.topK, packed.numExperts, packed.hiddenLayers, packed.moeLayers)
            r.load = load; r.missingRows = missing; r.packed = packed
            stored[id] = r
            var b = RouteBuilder()
            for v in view[i].routes.ids { try b.append(Int64(v)) }
            // the trainer's log-probs: one per response token (the first has no row when the prompt is empty)
            report.rollouts.append(ReportedRollout(id: id, logprobs: view[i].logprobs, routes: IncomingRoutes(builder: b, shape: view[i].routes.shape, encoding: "lists"),
                                                   replay: nil, path: "rollouts[\(i)]"))
        }
        let run = try StepComputation(report, stored: stored, tisCap: opt.loss.tisCap).metrics
        let shared = Set(Mismatch.metricNames).intersection(job.keys)
        #expect(shared.count == Mismatch.metricNames.count, "the job reports every mismatch metric: missing \(Set(Mismatch.metricNames).subtracting(job.keys).sorted())")
        for k in shared.sorted() {
            let a = job[k]!, b = run[k] ?? .nan
            #expect(abs(a - b) <= 1e-6, "\(k): job \(a), run \(b) (tolerance 1e-6)")
        }
    }
}
