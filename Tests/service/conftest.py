"""A live `r3 serve` on the embedded PostgreSQL in a temporary data directory, with two projects' keys."""
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
R3 = os.environ.get("R3_BIN", str(ROOT / ".build" / "release" / "r3"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    def __init__(self, data_dir, **env):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, R3_DATA_DIR=str(data_dir), R3_LISTEN=f"127.0.0.1:{self.port}",
                        R3_MAX_BODY_BYTES=str(64 * 1024 * 1024), R3_MIGRATIONS_DIR=str(ROOT / "Migrations"),
                        R3_JOB_POLL_SECONDS="0.5", **env)
        self.proc = None
        self.workers = []
        self.starts = 0

    def start_worker(self):
        log = open(self.data_dir / f"worker{len(self.workers)}.log", "wb")
        w = subprocess.Popen([R3, "worker"], env=self.env, stdout=subprocess.DEVNULL, stderr=log)
        self.workers.append(w)
        return w

    def key(self, project):
        out = subprocess.run([R3, "keys", "create", "--project", project], env=self.env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def start(self):
        # the log (JSON lines, one per request) goes to a file: a pipe nobody reads would fill and stop the server
        self.log = self.data_dir / f"serve{self.starts}.log"
        self.starts += 1
        self.proc = subprocess.Popen([R3, "serve"], env=self.env, stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))
        deadline = time.time() + 60
        while time.time() < deadline and self.proc.poll() is None:
            try:
                if requests.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError("r3 serve did not become ready: " + self.log.read_text())

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        for p in [self.proc, *self.workers]:
            if p and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=60)

    def pg_ctl(self, *args):
        bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
        cmd = [str(bindir / "pg_ctl"), "-D", str(self.data_dir / "pg" / "data"), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        # no pipes: the server pg_ctl starts would inherit them and keep them open
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)


def stop_with_cluster(s):
    """Stops the server, then its embedded PostgreSQL cluster (if it is still up)."""
    s.stop()
    try:
        s.pg_ctl("-m", "fast", "stop")
    except subprocess.CalledProcessError:
        pass


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("r3data")
    os.chmod(d, 0o755)
    s = Server(d, R3_WEBHOOK_ALLOW_PRIVATE="1")   # test receivers listen on loopback
    s.keys = {"a": s.key("project-a"), "b": s.key("project-b")}
    s.start()
    yield s
    stop_with_cluster(s)


@pytest.fixture
def api(server):
    sess = requests.Session()
    sess.headers["Authorization"] = "Bearer " + server.keys["a"]
    sess.base = server.url
    return sess


@pytest.fixture
def private_server(tmp_path):
    """A server of its own (own data directory and cluster), for tests that kill or reconfigure it."""
    made = []

    def make(**env):
        d = tmp_path / f"data{len(made)}"
        d.mkdir()
        os.chmod(tmp_path, 0o755)
        os.chmod(d, 0o755)
        s = Server(d, **env)
        s.keys = {"a": s.key("project-a")}
        made.append(s)
        return s
    yield make
    for s in made:
        stop_with_cluster(s)


@pytest.fixture(scope="module")
def private_server_module(tmp_path_factory):
    """A started server of its own for one test module (own data directory and cluster)."""
    d = tmp_path_factory.mktemp("r3private")
    os.chmod(d, 0o755)
    s = Server(d)
    s.env["R3_MAX_BODY_BYTES"] = str(512 * 2**20)   # the default: buffered bodies up to 512 MiB
    s.keys = {"a": s.key("project-a")}
    s.start()
    yield s
    stop_with_cluster(s)
