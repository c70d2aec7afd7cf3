// JobRunner: this process's job workers. Each worker thread claims a job (woken by LISTEN/NOTIFY, or by
// polling as a fallback), heartbeats its lease from a side thread while it runs, and ends the attempt:
// succeeded, cancelled, queued again with backoff, or failed. Several processes on one database share
// the queue; compute threads are split between workers so BLAS never oversubscribes the cores.
import CPosix
import Foundation
import Log
import Logging
import Store

public struct JobRunnerConfig: Sendable {
    public var workers = 1
    /// Compute threads per worker (default: the cores divided among the workers).
    public var threadsPerWorker = max(1, ProcessInfo.processInfo.activeProcessorCount)
    public var leaseSeconds = 30.0
    public var pollSeconds = 2.0
    public var backoff = Backoff()
    public var name = "\(ProcessInfo.processInfo.hostName):\(getpid())"
    public init() {}
}

/// Why a job stopped between steps.
enum JobInterruption: Error {
    case cancelled
    case leaseLost
    /// This process is shutting down: the job goes back to the queue and resumes elsewhere.
    case shutdown
    /// The executor already wrote the job's end (collapsed, or paused) in its last step's transaction.
    case ended
}

/// What a running job consults between steps.
final class JobControl: @unchecked Sendable {
    private let lock = NSLock()
    private var cancel = false, lost = false
    let stopping: () -> Bool
    init(stopping: @escaping () -> Bool) { self.stopping = stopping }

    func set(cancel c: Bool) { lock.lock(); cancel = cancel || c; lock.unlock() }
    func setLost() { lock.lock(); lost = true; lock.unlock() }

    /// Throws when the job must stop before its next step.
    func check() throws {
        lock.lock(); let (c, l) = (cancel, lost); lock.unlock()
        if l { throw JobInterruption.leaseLost }
        if c { throw JobInterruption.cancelled }
        if stopping() { throw JobInterruption.shutdown }
    }
}

public final class JobRunner: @unchecked Sendable {
    let app: App
    let config: JobRunnerConfig
    let jobs: JobRepository
    private var queue: QueueWorkers<JobClaim>!
    /// One line per job transition: claimed (running), succeeded, cancelled, failed (queued again or not),
    /// released at shutdown, lease lost.
    let logger = R3Log.logger("r3.jobs")

    public init(app: App, config: JobRunnerConfig) {
        self.app = app
        self.config = config
        jobs = JobRepository(pool: app.pool)
        queue = QueueWorkers(name: "job-worker", conninfo: app.pool.conninfo, channel: JobRepository.channel, workers: config.workers,
                             pollSeconds: config.pollSeconds, stackSize: 8 << 20,
                             claim: { [jobs, config] i in try jobs.claim(worker: "\(config.name)/\(i)", leaseSeconds: config.leaseSeconds) },
                             handle: { [unowned self] claim in run(claim) })
    }

    public func start() { queue.start() }

    /// Stops claiming; running jobs stop at their next step boundary and go back to the queue.
    public func stop() { queue.stop() }

    public func waitUntilStopped() { queue.waitUntilStopped() }

    var isStopping: Bool { queue.isStopping }

    private func transition(_ claim: JobClaim, _ state: String, _ level: Logger.Level = .info, _ extra: Logger.Metadata = [:]) {
        var m: Logger.Metadata = ["job_id": .string(claim.job.id), "type": .string(claim.job.type), "project": .stringConvertible(claim.job.projectID),
                                  "attempt": .stringConvertible(claim.job.attempts), "worker": .string(config.name), "state": .string(state)]
        m.merge(extra) { _, b in b }
        logger.log(level: level, "job", metadata: m)
    }

    private func run(_ claim: JobClaim) {
        let control = JobControl(stopping: { [weak self] in self?.isStopping ?? true })
        let heart = Heartbeat(every: config.leaseSeconds / 3) { [jobs, config] in
            do { control.set(cancel: try jobs.heartbeat(claim, leaseSeconds: config.leaseSeconds)) } catch is JobRepository.LeaseLost {
                control.setLost()
            } catch {}   // the database is briefly away: the lease has slack for two more beats
        }
        defer { heart.stop() }

        if claim.job.attempts > claim.job.maxAttempts {
            // a worker died holding this job on its last attempt
            let why = "the worker running the job stopped (attempt \(claim.job.attempts - 1) of \(claim.job.maxAttempts))"
            try? jobs.fail(claim, error: why, retryIn: nil)
            transition(claim, "failed", .warning, ["error": .string(why)])
            return
        }
        do {
            _ = try jobs.fenced(claim) { c in
                try JobRepository.addEvent(c, job: claim.job.id, type: "job.started", data: ["attempt": claim.job.attempts, "worker": config.name])
            }
            transition(claim, "running")
            let result = try JobExecutor(app: app, claim: claim, control: control, threads: config.threadsPerWorker).run()
            try jobs.finish(claim, state: .succeeded, result: result, event: ["state": "succeeded", "result": result])
            transition(claim, "succeeded")
        } catch JobInterruption.cancelled {
            try? jobs.finish(claim, state: .cancelled, result: ["cancelled": true], event: ["state": "cancelled"])
            transition(claim, "cancelled")
        } catch JobInterruption.leaseLost {
            transition(claim, "lease_lost", .warning)   // another worker owns the job now; write nothing
        } catch is JobRepository.LeaseLost {
            transition(claim, "lease_lost", .warning)
        } catch JobInterruption.shutdown {
            try? jobs.release(claim)
            transition(claim, "queued", .info, ["reason": .string("released at shutdown")])
        } catch JobInterruption.ended {
            transition(claim, "ended", .info, ["reason": .string("the job ended elsewhere")])
        } catch {
            let permanent = error is ServiceError || JobExecutor.isPermanent(error)
            let message = JobExecutor.describe(error)
            let retry: Double? = permanent || claim.job.attempts >= claim.job.maxAttempts ? nil
                : config.backoff.delay(afterAttempt: claim.job.attempts, unit: Double.random(in: 0..<1))
            try? jobs.fail(claim, error: message, retryIn: retry)
            transition(claim, retry == nil ? "failed" : "queued", retry == nil ? .error : .warning,
                       ["error": .string(String(message.prefix(500))), "retry_in_s": retry.map { .stringConvertible(($0 * 10).rounded() / 10) } ?? .string("never")])
        }
    }
}

/// Runs `beat` every `every` seconds on its own thread until stopped.
final class Heartbeat: @unchecked Sendable {
    private let cond = NSCondition()
    private var stopped = false

    init(every: Double, beat: @escaping @Sendable () -> Void) {
        let t = Thread { [self] in
            r3_name_this_thread("r3-job-beat")   // "r3-job-heartbeat" is over the kernel's 15 bytes
            cond.lock()
            while !stopped {
                _ = cond.wait(until: Date().addingTimeInterval(every))
                if stopped { break }
                cond.unlock()
                beat()
                cond.lock()
            }
            cond.unlock()
        }
        t.name = "r3-job-heartbeat"
        t.start()
    }

    func stop() { cond.lock(); stopped = true; cond.signal(); cond.unlock() }
}
