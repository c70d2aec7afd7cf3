// Backoff: when a failed job attempt runs again. Exponential with full jitter in [½, 1] of the step,
// capped; a pure value type (the random draw is passed in) so schedules are tested without I/O.
public struct Backoff: Sendable, Equatable {
    public var base: Double = 2          // seconds before the 2nd attempt (at most)
    public var factor: Double = 4
    public var cap: Double = 600
    public init(base: Double = 2, factor: Double = 4, cap: Double = 600) { self.base = base; self.factor = factor; self.cap = cap }

    /// Delay in seconds after failed attempt `attempt` (1-based); `unit` is a uniform draw in [0, 1).
    public func delay(afterAttempt attempt: Int, unit: Double) -> Double {
        var step = base
        for _ in 1..<max(1, attempt) { step *= factor; if step >= cap { break } }
        step = min(step, cap)
        return step * (0.5 + 0.5 * min(max(unit, 0), 1))
    }
}
