// LocalService: the service, in this process, on the embedded default under `dataDir`, with one job
// worker: what `r3 demo` and `r3 study` drive through the public API.
import Foundation
import HTTP
import Service
import Store

final class LocalService {
    let api: DemoClient
    let port: UInt16
    let dataDir: URL
    private let embedded: EmbeddedPostgres?
    private let server: HTTPServer
    private let runner: JobRunner

    /// `nativeBLAS` false: 2 engine threads, because the engine splits products by rows over its threads and
    /// a row's bits depend on its place in OpenBLAS's micro-tile: a fixed count keeps the splits, and the
    /// bits, the same on any machine. A key of `project` (created if needed) drives the API.
    init(dataDir: URL, nativeBLAS: Bool, project: String) throws {
        var config = try ServiceConfig.fromEnvironment([:])
        config.dataDir = dataDir
        config.port = 0
        config.workers = 1
        config.engineThreads = nativeBLAS ? nil : 2
        let (pool, embedded, _) = try openDatabase(config)
        self.embedded = embedded
        do {
            let app = try App(config: config, pool: pool)
            var http = config.http; http.port = 0; http.handlerThreads = 4
            server = HTTPServer(config: http, inline: { app.decideInline($0) }) { app.decide($0) }
            port = try server.start()
            let key = try KeyRepository(pool: pool).create(project: project).key
            runner = JobRunner(app: app, config: config.jobRunner)
            runner.start()
            self.dataDir = dataDir
            api = DemoClient(base: "http://127.0.0.1:\(port)", key: key)
        } catch {   // the cluster started for this run stops with it
            if embedded?.startedHere == true { embedded?.stop() }
            throw error
        }
    }

    func stop() {
        server.shutdown(); runner.stop(); runner.waitUntilStopped(); server.waitUntilStopped()
        if embedded?.startedHere == true { embedded?.stop() }
    }
}
