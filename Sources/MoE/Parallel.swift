// Parallel: the engine's own fork-join over a fixed number of workers. OpenBLAS runs single-threaded
// inside each worker, so the engine, not BLAS, decides how the cores are shared.
import Dispatch
import Synchronization
import CBLAS

public enum BLASThreads {
    /// The engine splits work itself; OpenBLAS must not spawn its own threads on top (oversubscription).
    public static func useSingleThreadedBLAS() { openblas_set_num_threads(1) }
    public static func set(_ n: Int) { openblas_set_num_threads(Int32(n)) }
    /// The kernel set OpenBLAS chose for this CPU (or OPENBLAS_CORETYPE named): "Haswell", "Zen",
    /// "SkylakeX", "Cooperlake", … fp32 results differ in their last bits between kernel sets.
    public static var coreName: String { openblas_get_corename().map { String(cString: $0) } ?? "unknown" }
}

/// Runs `body(task)` for every task in 0..<tasks on up to `workers` threads; tasks are taken in order
/// from a shared counter, so put the most expensive tasks first.
@inline(__always)
func parallelFor(_ tasks: Int, workers: Int, _ body: (Int) -> Void) {
    parallelFor(tasks, workers: workers) { task, _ in body(task) }
}

/// As above, also passing the worker index (0..<workers) for per-worker scratch.
func parallelFor(_ tasks: Int, workers: Int, _ body: (_ task: Int, _ worker: Int) -> Void) {
    let w = min(workers, tasks)
    if w <= 1 {
        for i in 0..<tasks { body(i, 0) }
        return
    }
    let next = Atomic<Int>(0)
    DispatchQueue.concurrentPerform(iterations: w) { worker in
        while true {
            let i = next.wrappingAdd(1, ordering: .relaxed).oldValue
            if i >= tasks { break }
            body(i, worker)
        }
    }
}

/// Splits 0..<n into `parts` contiguous ranges whose bounds are multiples of `align`.
@inline(__always)
func chunk(_ n: Int, parts: Int, part: Int, align: Int = 1) -> Range<Int> {
    let units = (n + align - 1) / align
    let lo = units * part / parts * align, hi = min(n, units * (part + 1) / parts * align)
    return min(lo, n)..<hi
}
