// QueueWorkers: the skeleton the job runner and the webhook dispatcher share. Worker threads each claim
// one item of a PostgreSQL queue at a time and handle it; when the queue is empty they sleep until a
// NOTIFY on the queue's channel (one LISTEN connection per process) or the poll interval, whichever comes
// first. `stop` lets each worker finish its item and claim no more.
import CPosix
import Foundation
import Store

final class QueueWorkers<Item>: @unchecked Sendable {
    let name: String
    let workers: Int
    private let conninfo: String
    private let channel: String
    private let pollSeconds: Double
    private let stackSize: Int?
    /// Claims an item for worker `index`, or nil when none is due (a database error counts as none).
    private let claim: (Int) throws -> Item?
    private let handle: (Item) -> Void
    private let cond = NSCondition()
    private var stopping = false
    private var wakeups = 0
    private let done = DispatchGroup()

    init(name: String, conninfo: String, channel: String, workers: Int, pollSeconds: Double, stackSize: Int? = nil,
         claim: @escaping (Int) throws -> Item?, handle: @escaping (Item) -> Void) {
        self.name = name; self.conninfo = conninfo; self.channel = channel; self.workers = workers
        self.pollSeconds = pollSeconds; self.stackSize = stackSize; self.claim = claim; self.handle = handle
    }

    func start() {
        guard workers > 0 else { return }
        let listenerName = "r3-\(name)-listen"
        let listener = Thread { [self] in
            r3_name_this_thread(listenerName)
            PGConnection.listenLoop(conninfo: conninfo, channel: channel, stopping: { self.isStopping }) {
                self.cond.lock(); self.wakeups += 1; self.cond.broadcast(); self.cond.unlock()
            }
        }
        listener.name = listenerName
        listener.start()
        for i in 0..<workers {
            done.enter()
            let threadName = "r3-\(name)-\(i)"
            let t = Thread { [self] in r3_name_this_thread(threadName); work(i); done.leave() }
            t.name = threadName
            if let stackSize { t.stackSize = stackSize }
            t.start()
        }
    }

    func stop() { cond.lock(); stopping = true; cond.broadcast(); cond.unlock() }
    func waitUntilStopped() { done.wait() }
    var isStopping: Bool { cond.lock(); defer { cond.unlock() }; return stopping }

    private func work(_ index: Int) {
        while !isStopping {
            cond.lock(); let seen = wakeups; cond.unlock()
            guard let item = (try? claim(index)) ?? nil else {
                // nothing due: sleep until a NOTIFY came after the claim looked, or the poll interval
                cond.lock()
                if !stopping && wakeups == seen { _ = cond.wait(until: Date().addingTimeInterval(pollSeconds)) }
                cond.unlock()
                continue
            }
            handle(item)
        }
    }
}
