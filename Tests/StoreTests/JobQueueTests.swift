// JobQueueTests: the queue's guarantees against a real PostgreSQL: concurrent claims never share a job,
// an expired lease is taken over and the zombie's writes are refused, retries wait out their backoff,
// a dead worker's last attempt fails the job, idempotency keys, cancel; plus the pure backoff schedule.
import Foundation
import Testing
@testable import Store

// Nested in StoreTests: one serialized tree, so the restart test never runs beside these.
extension StoreTests { @Suite struct JobQueueTests {
    var pool: ConnectionPool { TestDatabase.shared.1 }
    var jobs: JobRepository { JobRepository(pool: pool) }

    /// A project and a model, so jobs can reference them; each test gets its own project.
    func fixture() throws -> (project: Int, model: String) {
        let name = "queue-\(UUID().uuidString)"
        let p = try pool.with { try $0.query("INSERT INTO projects (name) VALUES (\(name)) RETURNING id").int(0, "id") }
        let m = try ModelRepository(pool: pool).create(project: p, name: "m", configJSON: "{}", source: "random") { _, _ in nil }!
        return (p, m.id)
    }

    func queue(_ f: (project: Int, model: String), count: Int, maxAttempts: Int = 3) throws -> [String] {
        try (0..<count).map { i in
            guard case let .created(j) = try jobs.create(project: f.project, type: "sft", modelID: f.model, paramsJSON: "{\"i\": \(i)}",
                                                         maxAttempts: maxAttempts, idempotencyKey: nil, requestHash: nil) else { throw StoreError.decode("not created") }
            return j.id
        }
    }

    /// Claims until the queue has nothing runnable for this fixture's jobs.
    func drainOthers() throws { while let c = try jobs.claim(worker: "drain", leaseSeconds: 60) { try jobs.finish(c, state: .succeeded, result: [:], event: [:]) } }

    @Test func concurrentClaimsNeverShareAJob() throws {
        try drainOthers()
        let f = try fixture()
        let ids = try queue(f, count: 12)
        final class Claimed: @unchecked Sendable { let lock = NSLock(); var ids: [String] = [] }
        let box = Claimed()
        let jobs = self.jobs
        DispatchQueue.concurrentPerform(iterations: 4) { w in
            while let c = try? jobs.claim(worker: "w\(w)", leaseSeconds: 60) {
                box.lock.lock(); box.ids.append(c.job.id); box.lock.unlock()
                try? jobs.finish(c, state: .succeeded, result: ["by": w], event: [:])
            }
        }
        let claimed = box.ids
        #expect(claimed.count == 12)
        #expect(Set(claimed) == Set(ids))
    }

    @Test func anExpiredLeaseIsTakenOverAndTheZombieCannotWrite() throws {
        try drainOthers()
        let f = try fixture()
        let id = try queue(f, count: 1)[0]
        let zombie = try #require(try jobs.claim(worker: "zombie", leaseSeconds: 0.2))
        #expect(zombie.job.id == id && zombie.job.attempts == 1)
        #expect(try jobs.claim(worker: "other", leaseSeconds: 60) == nil, "a live lease is not claimable")
        Thread.sleep(forTimeInterval: 0.4)
        let rescuer = try #require(try jobs.claim(worker: "rescuer", leaseSeconds: 60))
        #expect(rescuer.job.id == id && rescuer.job.attempts == 2 && rescuer.token != zombie.token)
        #expect(throws: JobRepository.LeaseLost.self) { try jobs.heartbeat(zombie, leaseSeconds: 60) }
        #expect(throws: JobRepository.LeaseLost.self) { try jobs.finish(zombie, state: .succeeded, result: ["zombie": true], event: [:]) }
        #expect(throws: JobRepository.LeaseLost.self) { try jobs.fail(zombie, error: "zombie", retryIn: nil) }
        try jobs.finish(rescuer, state: .succeeded, result: ["ok": true], event: [:])
        let j = try #require(try jobs.get(project: f.project, id: id))
        #expect(j.state == .succeeded && j.resultJSON == "{\"ok\": true}")
    }

    @Test func aFailedAttemptWaitsOutItsBackoffThenRunsAgain() throws {
        try drainOthers()
        let f = try fixture()
        let id = try queue(f, count: 1)[0]
        let first = try #require(try jobs.claim(worker: "a", leaseSeconds: 60))
        try jobs.fail(first, error: "transient", retryIn: 0.5)
        let queued = try #require(try jobs.get(project: f.project, id: id))
        #expect(queued.state == .queued && queued.error == "transient" && queued.attempts == 1)
        #expect(try jobs.claim(worker: "b", leaseSeconds: 60) == nil, "not before run_after")
        Thread.sleep(forTimeInterval: 0.7)
        let second = try #require(try jobs.claim(worker: "b", leaseSeconds: 60))
        #expect(second.job.id == id && second.job.attempts == 2)
        try jobs.fail(second, error: "permanent", retryIn: nil)
        #expect(try jobs.get(project: f.project, id: id)?.state == .failed)
        let types = try jobs.events(job: id, after: 0).map(\.type)
        #expect(types == ["job.queued", "job.retrying", "job.failed"])
    }

    @Test func releaseOnShutdownDoesNotCountTheAttempt() throws {
        try drainOthers()
        let f = try fixture()
        let id = try queue(f, count: 1)[0]
        let c = try #require(try jobs.claim(worker: "a", leaseSeconds: 60))
        try jobs.release(c)
        let j = try #require(try jobs.get(project: f.project, id: id))
        #expect(j.state == .queued && j.attempts == 0)
        let again = try #require(try jobs.claim(worker: "b", leaseSeconds: 60))
        #expect(again.job.attempts == 1)
        try jobs.finish(again, state: .succeeded, result: [:], event: [:])
    }

    @Test func idempotencyKeysReturnTheFirstJobAndRefuseADifferentRequest() throws {
        let f = try fixture()
        let a = try jobs.create(project: f.project, type: "sft", modelID: f.model, paramsJSON: "{}", maxAttempts: 3, idempotencyKey: "k", requestHash: "h1")
        let b = try jobs.create(project: f.project, type: "sft", modelID: f.model, paramsJSON: "{}", maxAttempts: 3, idempotencyKey: "k", requestHash: "h1")
        let c = try jobs.create(project: f.project, type: "sft", modelID: f.model, paramsJSON: "{}", maxAttempts: 3, idempotencyKey: "k", requestHash: "h2")
        guard case let .created(ja) = a, case let .existing(jb) = b, case .conflict = c else { Issue.record("\(a) \(b) \(c)"); return }
        #expect(ja.id == jb.id)
        let other = try fixture()   // keys are per project
        guard case .created = try jobs.create(project: other.project, type: "sft", modelID: other.model, paramsJSON: "{}", maxAttempts: 3,
                                              idempotencyKey: "k", requestHash: "h1") else { Issue.record("same key in another project"); return }
        try drainOthers()
    }

    @Test func cancelEndsAQueuedJobAtOnceAndFlagsARunningOne() throws {
        try drainOthers()
        let f = try fixture()
        let ids = try queue(f, count: 2)
        #expect(try jobs.requestCancel(project: f.project, id: ids[0])?.state == .cancelled)
        let c = try #require(try jobs.claim(worker: "a", leaseSeconds: 60))
        #expect(c.job.id == ids[1], "a cancelled job is never claimed")
        #expect(try jobs.heartbeat(c, leaseSeconds: 60) == false)
        #expect(try jobs.requestCancel(project: f.project, id: ids[1])?.state == .running)
        #expect(try jobs.heartbeat(c, leaseSeconds: 60) == true)
        #expect(try jobs.requestCancel(project: f.project + 999_999, id: ids[1]) == nil, "another project's job is invisible")
        try jobs.finish(c, state: .cancelled, result: [:], event: [:])
    }

    @Test func backoffGrowsExponentiallyWithJitterUpToItsCap() {
        let b = Backoff(base: 2, factor: 4, cap: 600)
        #expect(b.delay(afterAttempt: 1, unit: 1) == 2)
        #expect(b.delay(afterAttempt: 1, unit: 0) == 1)
        #expect(b.delay(afterAttempt: 2, unit: 1) == 8)
        #expect(b.delay(afterAttempt: 3, unit: 0.5) == 32 * 0.75)
        #expect(b.delay(afterAttempt: 10, unit: 1) == 600)
        #expect(b.delay(afterAttempt: 1000, unit: 0) == 300)
    }
}
}
