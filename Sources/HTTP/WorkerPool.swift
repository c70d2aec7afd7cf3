// WorkerPool: a fixed set of threads running submitted jobs in order; handlers may block (database
// calls) without starving the event loop or spawning unbounded threads.
import CPosix
import Foundation

public final class WorkerPool: @unchecked Sendable {
    private let cond = NSCondition()
    private var jobs: [@Sendable () -> Void] = []
    private var head = 0
    private var stopping = false
    private var threads: [Thread] = []

    public init(threads n: Int, name: String) {
        for i in 0..<max(1, n) {
            let label = "\(name)-\(i)"
            // named from inside (see EventLoop.start); the thread keeps the pool until `stop` ends it, so a
            // pool released right after `stop` is never read by a thread that had not started yet
            let t = Thread { [self] in Thread.current.name = label; r3_name_this_thread(label); self.run() }
            t.stackSize = 1 << 20
            threads.append(t)
            t.start()
        }
    }

    public func submit(_ job: @escaping @Sendable () -> Void) {
        cond.lock(); jobs.append(job); cond.signal(); cond.unlock()
    }

    /// Lets queued jobs finish, then ends the threads.
    public func stop() {
        cond.lock(); stopping = true; cond.broadcast(); cond.unlock()
    }

    private func run() {
        while true {
            cond.lock()
            while head == jobs.count && !stopping { cond.wait() }
            if head == jobs.count && stopping { cond.unlock(); return }
            let job = jobs[head]
            head += 1
            if head > 1024 && head * 2 > jobs.count { jobs.removeFirst(head); head = 0 }
            cond.unlock()
            job()
        }
    }
}
