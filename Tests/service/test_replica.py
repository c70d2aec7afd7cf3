"""A streaming replica (`pg_basebackup -R` from the test's primary) serves route fetches and rollout
listings (DATABASE_URL_READ), bit-exact; a read right after the caller's write sees the write (the
replica once it has replayed it, else the primary), also while the replica's replay is paused; a
server that did not make the write finds it through the primary or waits for R3-Min-LSN; a replica that
is down costs nothing but its speed."""
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import requests

from conftest import Server, free_port, stop_with_cluster


def as_postgres(cmd):
    return ["runuser", "-u", "postgres", "--"] + cmd if os.geteuid() == 0 else cmd


BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]


def psql(socket, port, sql):
    out = subprocess.run(["psql", "-h", str(socket), "-p", str(port), "-U", "r3", "-d", "r3", "-Atc", sql], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def post(s, key, rng, model="replicated"):
    routes = np.stack([np.stack([rng.permutation(128)[:8] for _ in range(4)]) for _ in range(63)]).astype(np.int32)
    r = requests.post(s.url + "/v1/rollouts", headers={"Authorization": "Bearer " + key}, json={
        "model": model, "token_ids": rng.integers(0, 1000, 64).tolist(), "prompt_length": 8, "num_experts": 128,
        "routed_experts": routes.tolist()})
    assert r.status_code == 201, r.text
    return r.json()["id"], routes, r.headers["R3-Write-LSN"]


def fetch(s, key, rid, **headers):
    r = requests.get(s.url + f"/v1/rollouts/{rid}/routes", params={"format": "npy"},
                     headers={"Authorization": "Bearer " + key, **headers})
    assert r.status_code == 200, r.text
    import io
    return np.load(io.BytesIO(r.content)), r.headers["R3-Read-From"]


def test_a_streaming_replica_serves_route_reads_and_every_read_sees_its_callers_writes(tmp_path):
    os.chmod(tmp_path, 0o755)
    data = tmp_path / "primary"
    data.mkdir()
    os.chmod(data, 0o755)
    s = Server(data, R3_READ_REPLICA_WAIT="0.3")
    key = s.key("replicated")                        # initdb and migrations; the cluster stops with the command
    primary_run = data / "pg" / "run"
    s.pg_ctl("-w", "-l", str(data / "pg" / "postgres.log"), "start", "-o",
             f"-c listen_addresses='' -c unix_socket_directories='{primary_run}' -c port=5432")
    replica = tmp_path / "replica"
    replica.mkdir()
    os.chmod(replica, 0o755)
    (replica / "run").mkdir()
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "postgres:postgres", str(replica)], check=True)
    base = subprocess.run(as_postgres([str(BIN / "pg_basebackup"), "-h", str(primary_run), "-p", "5432", "-U", "r3", "-D", str(replica / "data"),
                                       "-R", "-X", "stream", "--no-sync"]), capture_output=True, text=True, timeout=300)
    assert base.returncode == 0, base.stderr
    port = free_port()

    def replica_ctl(*args):
        subprocess.run(as_postgres([str(BIN / "pg_ctl"), "-D", str(replica / "data"), *args]), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    replica_ctl("-w", "-l", str(replica / "postgres.log"), "start", "-o",
                f"-c listen_addresses='' -c unix_socket_directories='{replica / 'run'}' -c port={port}")
    other = None
    try:
        assert psql(replica / "run", port, "SELECT pg_is_in_recovery()") == "t"
        s.env["DATABASE_URL_READ"] = f"host={replica / 'run'} port={port} dbname=r3 user=r3"
        s.start()
        rng = np.random.default_rng(0)
        written = [post(s, key, rng) for _ in range(5)]
        # read right after each write: served by the replica (it replays within the wait), bit-exact
        for rid, routes, _ in written:
            got, source = fetch(s, key, rid)
            assert source == "replica"
            np.testing.assert_array_equal(got, routes)
        listing = requests.get(s.url + "/v1/rollouts", params={"model": "replicated"}, headers={"Authorization": "Bearer " + key})
        assert listing.headers["R3-Read-From"] == "replica" and len(listing.json()["data"]) == 5

        # the replica stops replaying: a read after a write goes to the primary, and sees the write
        psql(replica / "run", port, "SELECT pg_wal_replay_pause()")
        rid, routes, lsn = post(s, key, rng)
        got, source = fetch(s, key, rid)
        assert source == "primary"
        np.testing.assert_array_equal(got, routes)

        # a server that did not make the write: by id it finds it on the primary; a listing is as fresh as the
        # replica unless the caller names the write's position
        other_dir = tmp_path / "other"
        other_dir.mkdir()
        os.chmod(other_dir, 0o755)
        other = Server(other_dir, DATABASE_URL=f"host={primary_run} port=5432 dbname=r3 user=r3", R3_READ_REPLICA_WAIT="0.3",
                       DATABASE_URL_READ=s.env["DATABASE_URL_READ"], R3_WORKERS="0")
        other.start()
        got, source = fetch(other, key, rid)
        assert source == "primary"
        np.testing.assert_array_equal(got, routes)
        H = {"Authorization": "Bearer " + key}
        stale = requests.get(other.url + "/v1/rollouts", params={"model": "replicated"}, headers=H)
        assert stale.headers["R3-Read-From"] == "replica" and len(stale.json()["data"]) == 5
        fresh = requests.get(other.url + "/v1/rollouts", params={"model": "replicated"}, headers={**H, "R3-Min-LSN": lsn})
        assert fresh.headers["R3-Read-From"] == "primary" and len(fresh.json()["data"]) == 6
        bad = requests.get(other.url + "/v1/rollouts", headers={**H, "R3-Min-LSN": "yesterday"})
        assert bad.status_code == 400 and "R3-Min-LSN" in bad.json()["detail"]

        # replay resumes: the replica serves the new rollout again
        psql(replica / "run", port, "SELECT pg_wal_replay_resume()")
        deadline = time.time() + 30
        while fetch(s, key, rid)[1] != "replica":
            assert time.time() < deadline, "the replica did not catch up"
            time.sleep(0.1)

        # the replica goes away: reads still answer, from the primary
        replica_ctl("-m", "immediate", "-w", "stop")
        rid2, routes2, _ = post(s, key, rng)
        for r in (rid, rid2):
            got, source = fetch(s, key, r)
            assert source == "primary"
        np.testing.assert_array_equal(got, routes2)
        assert requests.get(s.url + "/v1/rollouts", params={"model": "replicated"}, headers=H).status_code == 200
    finally:
        if other:
            other.stop()
        stop_with_cluster(s)
        try:
            replica_ctl("-m", "fast", "-w", "stop")
        except subprocess.CalledProcessError:
            pass
