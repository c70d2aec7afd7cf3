"""Scale-out across machines that share only PostgreSQL. Each "machine" is an `r3 serve` with its own
R3_DATA_DIR (its checkpoint cache and scratch space) on one shared database; a dead machine's data
directory is deleted. Checkpoints live in the database, so another machine runs and resumes the dead
one's work, with the same results as one machine running it all (deterministic numerics)."""
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import R3, Server
from jobs_client import TINY, create_model, download_checkpoint, events, session, submit, wait

CONFIG = dict(TINY, hidden_size=128, num_hidden_layers=4, moe_intermediate_size=64)
SFT = {"type": "sft", "task": "sort", "difficulty": 4, "steps": 6, "batch_size": 8, "seed": 3, "checkpoint_every": 3,
       "precision": "deterministic"}
RL = {"type": "train", "task": "sort", "difficulty": 4, "steps": 14, "batch_size": 8, "n": 4, "seed": 5, "checkpoint_every": 3,
      "precision": "deterministic", "replay": "R3"}
TIMING = ("_seconds",)


class SharedDatabase:
    """A PostgreSQL cluster no machine owns: initialised by `r3 keys create` in a directory of its own (which
    also creates the project's key), then started with pg_ctl; machines reach it through DATABASE_URL."""

    def __init__(self, root):
        self.dir = root / "db"
        self.dir.mkdir()
        os.chmod(root, 0o755)
        os.chmod(self.dir, 0o755)
        boot = Server(self.dir)
        self.key = boot.key("scale")             # initdb, migrations, a key; the cluster stops with the command
        self.run = self.dir / "pg" / "run"
        boot.pg_ctl("-w", "-l", str(self.dir / "pg" / "postgres.log"), "start", "-o",
                    f"-c listen_addresses='' -c unix_socket_directories='{self.run}' -c port=5432")
        self.boot = boot
        self.url = f"host={self.run} port=5432 dbname=r3 user=r3"

    def machine(self, root, name, **env):
        d = root / name
        d.mkdir()
        os.chmod(d, 0o755)
        s = Server(d, DATABASE_URL=self.url, R3_JOB_LEASE_SECONDS="2", **env)
        s.start()
        return s

    def stop(self):
        try:
            self.boot.pg_ctl("-m", "fast", "stop")
        except subprocess.CalledProcessError:
            pass


@pytest.fixture
def shared_db(tmp_path):
    db = SharedDatabase(tmp_path)
    machines = []
    db.machines = machines
    yield db
    for m in machines:
        m.stop()
    db.stop()


def steps(api, jid):
    """A job's per-step metrics without the timings (which differ run to run) and the policy version it
    wrote (a counter of the model's, which two jobs training it at once share)."""
    rows = api.get(api.base + f"/v1/jobs/{jid}/metrics").json()["data"]
    return [{k: v for k, v in r.items() if not k.endswith(TIMING) and k != "policy_version"} for r in rows]


def weights(api, model_id, version, into):
    """SHA-256 of the checkpoint's model and optimizer files (trainer_state.json names the job: left out)."""
    d = download_checkpoint(api, model_id, version, into)
    return {f: hashlib.sha256((d / f).read_bytes()).hexdigest() for f in ("model.safetensors", "optimizer.safetensors", "config.json")
            if (d / f).exists()}


def run_all(api, name):
    m = create_model(api, name, config=CONFIG, seed=7)
    sft = wait(api, submit(api, dict(SFT, model=m["id"]))["id"])
    assert sft["state"] == "succeeded", sft
    return m, sft


def test_another_machine_runs_and_resumes_a_dead_machines_work_with_the_same_results(shared_db, tmp_path):
    # the reference: one machine does it all
    ref = shared_db.machine(tmp_path, "ref")
    shared_db.machines.append(ref)
    api = session(ref.url, shared_db.key)
    ref_model, ref_sft = run_all(api, "ref")
    v = ref_sft["result"]["policy_version"]
    ref_rl = wait(api, submit(api, dict(RL, model=ref_model["id"], policy_version=v))["id"])
    assert ref_rl["state"] == "succeeded", ref_rl
    want_steps = steps(api, ref_rl["id"])
    want_sft = weights(api, ref_model["id"], v, tmp_path / "ref-sft")
    want_rl = weights(api, ref_model["id"], ref_rl["result"]["policy_version"], tmp_path / "ref-rl")
    assert len(want_steps) == RL["steps"] and "optimizer.safetensors" in want_rl
    ref.stop()

    # machine A: registers the model and runs SFT, starts RL and is killed in it after a checkpoint
    a = shared_db.machine(tmp_path, "a")
    shared_db.machines.append(a)
    api = session(a.url, shared_db.key)
    model, sft = run_all(api, "dist")
    assert sft["result"]["policy_version"] == v
    killed = submit(api, dict(RL, model=model["id"], policy_version=v))
    wait(api, killed["id"], until=lambda j: j["progress"].get("step", 0) >= RL["checkpoint_every"] + 1, timeout=300)
    a.kill9()
    shutil.rmtree(a.data_dir)                    # the machine is gone, its disk with it

    # machine B: never saw any of it
    b = shared_db.machine(tmp_path, "b")
    shared_db.machines.append(b)
    api = session(b.url, shared_db.key)
    assert weights(api, model["id"], v, tmp_path / "b-sft") == want_sft
    fresh = submit(api, dict(RL, model=model["id"], policy_version=v))
    for j in (fresh, killed):
        done = wait(api, j["id"], timeout=600)
        assert done["state"] == "succeeded", done
        assert steps(api, j["id"]) == want_steps, j["id"]
        assert weights(api, model["id"], done["result"]["policy_version"], tmp_path / f"b-{j['id']}") == want_rl
    resumed = [json.loads(e["data"])["data"] for e in events(api, killed["id"]) if e["event"] == "job.resumed"]
    assert len(resumed) == 1 and resumed[0]["from_step"] >= 3 and resumed[0]["from_step"] % 3 == 0, resumed
    assert wait(api, killed["id"])["attempts"] == 2


def test_the_checkpoint_cache_stays_under_its_limit_while_five_models_train_in_turn(shared_db, tmp_path):
    probe = shared_db.machine(tmp_path, "probe")
    shared_db.machines.append(probe)
    api = session(probe.url, shared_db.key)
    m = create_model(api, "probe", config=CONFIG, seed=1)
    j = wait(api, submit(api, dict(SFT, model=m["id"], steps=1, checkpoint_every=1))["id"])
    one = api.get(api.base + f"/v1/models/{m['id']}/versions/{j['result']['policy_version']}/checkpoint").json()["bytes"]
    probe.stop()

    limit = int(2.5 * one)                       # two training checkpoints fit, a third does not
    c = shared_db.machine(tmp_path, "c", R3_CHECKPOINT_CACHE_BYTES=str(limit))
    shared_db.machines.append(c)
    api = session(c.url, shared_db.key)
    cache = c.data_dir / "cache" / "checkpoints"
    peak, stop = [0], threading.Event()

    def usage():
        total = 0
        for entry in cache.iterdir() if cache.exists() else []:
            if entry.is_dir():
                total += sum(f.stat().st_size for f in entry.iterdir() if f.name != ".lock")
        return total

    def watch():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], usage())
            except FileNotFoundError:            # an entry evicted while it was being summed
                pass
            time.sleep(0.02)
    t = threading.Thread(target=watch)
    t.start()
    try:
        finals = []
        for i in range(5):
            m = create_model(api, f"cached-{i}", config=CONFIG, seed=10 + i)
            done = wait(api, submit(api, dict(SFT, model=m["id"], steps=4, checkpoint_every=2))["id"])
            assert done["state"] == "succeeded", done
            finals.append((m["id"], done["result"]["policy_version"]))
            assert usage() <= limit
    finally:
        stop.set()
        t.join()
    assert 0 < peak[0] <= limit, (peak[0], limit)
    entries = [e for e in cache.iterdir() if e.is_dir()]
    assert 1 <= len(entries) <= 3, entries          # 5 models × 3 checkpoints (v0 and two trained) went through it
    # evicted checkpoints are still in the database, whole
    first_model, first_version = finals[0]
    got = weights(api, first_model, first_version, tmp_path / "evicted")
    assert set(got) == {"model.safetensors", "optimizer.safetensors", "config.json"}


def test_cookbook_checkpoint_download_with_curl(api, server, tmp_path):
    m = create_model(api, "download", config=CONFIG, seed=2)
    done = wait(api, submit(api, dict(SFT, model=m["id"], steps=2, checkpoint_every=1))["id"])
    v = done["result"]["policy_version"]
    manifest = api.get(api.base + done["result"]["checkpoint_url"]).json()
    assert manifest["version"] == v and manifest["id"] == done["result"]["checkpoint_id"]
    env = dict(os.environ, U=server.url, KEY=server.keys["a"], M=m["id"], V=str(v))
    p = subprocess.run(["bash", str(Path(__file__).parent / "cookbook_checkpoints.sh")], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    printed = {Path(path).name: digest for digest, path in (line.split() for line in p.stdout.splitlines())}
    assert printed == {f["name"]: f["sha256"] for f in manifest["files"]}
    assert set(printed) == {"config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"}
    # the downloaded directory is a checkpoint the engine loads
    out = subprocess.run([R3, "forward", "--model", str(tmp_path / "ckpt"), "--input-ids", "1,2,3", "--output", str(tmp_path / "o.safetensors")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # a file it does not have, a version without a checkpoint, a bad version: named errors
    missing = api.get(api.base + f"/v1/models/{m['id']}/versions/{v}/checkpoint/nope.bin")
    assert missing.status_code == 404 and "model.safetensors" in missing.json()["detail"]
    assert api.get(api.base + f"/v1/models/{m['id']}/versions/999/checkpoint").status_code == 404
    assert api.get(api.base + f"/v1/models/{m['id']}/versions/x/checkpoint").status_code == 422
    # If-None-Match with the ETag: 304, no body
    f = manifest["files"][0]
    again = api.get(api.base + f["url"], headers={"If-None-Match": f'"{f["sha256"]}"'})
    assert again.status_code == 304 and again.content == b""
    # HEAD: the length, no body
    head = api.head(api.base + f["url"])
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == f["size"] and head.content == b""
