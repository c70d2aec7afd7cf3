"""Migrations keep stored data: an installation that stored log-probs as real[] (before migration 0008)
reads the same values back, NaN and empty arrays included, after upgrading to float32 bytes."""
import contextlib
import os
import shutil
import subprocess

import requests

from conftest import R3, ROOT, Server, stop_with_cluster


@contextlib.contextmanager
def older_installation(tmp_path, before):
    """A server whose schema stops before migration `before` (an installation of an older version),
    and psql on its cluster to write rows as that version did. `upgrade()` restarts it on every migration."""
    old = tmp_path / "migrations"
    old.mkdir()
    for f in (ROOT / "Migrations").glob("*.sql"):
        if f.name < before:
            shutil.copy(f, old / f.name)
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(data, 0o755)
    s = Server(data)
    s.env["R3_MIGRATIONS_DIR"] = str(old)
    s.keys = {"a": s.key("p")}

    def psql(sql):   # the first value a statement returns (RETURNING id), straight into the older schema
        out = subprocess.run(["psql", "-h", str(data / "pg" / "run"), "-p", "5432", "-U", "r3", "-d", "r3", "-Atc", sql],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.split("\n")[0].strip()   # before psql's "INSERT 0 1"

    def upgrade():
        s.stop()
        s.env["R3_MIGRATIONS_DIR"] = str(ROOT / "Migrations")
        s.start()
    s.psql, s.upgrade = psql, upgrade
    try:
        s.start()
        yield s
    finally:
        stop_with_cluster(s)


def test_logprobs_survive_the_move_to_float32_bytes(tmp_path):
    with older_installation(tmp_path, "0008") as s:
        psql, data = s.psql, s.data_dir
        full = psql("INSERT INTO rollouts (project_id, model, token_ids, prompt_length, logprobs, loss_mask) SELECT id, 'm', "
                    "'{1,2,3,4,5}', 1, '{-0.5,-1.25,NaN,-3e-08}'::real[], '\\x01010001'::bytea FROM projects LIMIT 1 RETURNING id")
        empty = psql("INSERT INTO rollouts (project_id, model, token_ids, prompt_length, logprobs) SELECT id, 'm', '{1,2}', 2, "
                     "'{}'::real[] FROM projects LIMIT 1 RETURNING id")
        none = psql("INSERT INTO rollouts (project_id, model, token_ids, prompt_length) SELECT id, 'm', '{1,2}', 1 FROM projects LIMIT 1 RETURNING id")
        s.upgrade()
        H = {"Authorization": "Bearer " + s.keys["a"]}
        got = {i: requests.get(f"{s.url}/v1/rollouts/{i}", headers=H).json()["logprobs"] for i in (full, empty, none)}
        assert got[full] == [-0.5, -1.25, None, -3e-08] and got[empty] == [] and got[none] is None, got


def test_checkpoints_on_disk_move_into_the_database(tmp_path):
    """An installation from before migration 0009 kept policy versions' checkpoints as directories under
    its data directory. Upgraded, it moves them into the store on start (files byte-identical, its own
    copies removed, jobs' checkpoints following); a version whose directory is on no disk it can see says so."""
    import hashlib
    import json as jsonlib
    import sys
    sys.path.insert(0, str(ROOT / "Tests" / "service"))
    from jobs_client import TINY, download_checkpoint, session, submit, wait

    with older_installation(tmp_path, "0009") as s:
        psql, data = s.psql, s.data_dir
        config = tmp_path / "config.json"
        config.write_text(jsonlib.dumps(dict(TINY, architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe")))
        model = psql(f"INSERT INTO models (project_id, name, config, source) SELECT id, 'old', '{jsonlib.dumps(TINY)}', 'random' "
                     "FROM projects LIMIT 1 RETURNING id")
        dirs = {v: data / "models" / model / f"v{v}" for v in (0, 1)}
        originals = {}
        for v, d in dirs.items():   # what the older server wrote: our layout, under its data directory
            out = subprocess.run([R3, "init-model", "--config", str(config), "--seed", str(v + 3), "--out", str(d)], capture_output=True, text=True)
            assert out.returncode == 0, out.stderr
            originals[v] = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in d.iterdir()}
        job = psql(f"INSERT INTO jobs (project_id, type, model_id, params, state, checkpoint) SELECT id, 'sft', '{model}', '{{}}', 'succeeded', "
                   f"'{{\"step\": 1, \"path\": \"{dirs[1]}\", \"version\": 1}}' FROM projects LIMIT 1 RETURNING id")
        psql(f"INSERT INTO policy_versions (model_id, version, checkpoint_path) VALUES ('{model}', 0, '{dirs[0]}'), "
             f"('{model}', 1, '{dirs[1]}'), ('{model}', 2, '/elsewhere/v2')")
        s.upgrade()
        api = session(s.url, s.keys["a"])
        for v in (0, 1):
            got = download_checkpoint(api, model, v, tmp_path / f"back{v}")
            assert {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in got.iterdir()} == originals[v]
            assert not dirs[v].exists(), "the service's own copy is removed once stored"
        assert psql(f"SELECT checkpoint ? 'checkpoint_id' AND NOT checkpoint ? 'path' FROM jobs WHERE id = '{job}'") == "t"
        missing = api.get(api.base + f"/v1/models/{model}/versions/2/checkpoint")
        assert missing.status_code == 409 and "/elsewhere/v2" in missing.json()["detail"], missing.text
        log = s.log.read_text()
        assert "/elsewhere/v2" in log and '"moved":"2"' in log.replace('"moved":2', '"moved":"2"'), log[-2000:]
        # and the moved version serves a job
        done = wait(api, submit(api, {"type": "rollout", "model": model, "policy_version": 0, "n": 1, "max_tokens": 3,
                                      "prompts": [{"token_ids": [1, 2, 3]}]})["id"])
        assert done["state"] == "succeeded", done


def crc32c(data):
    """CRC-32C (Castagnoli), the checksum stored with routes, bit by bit."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_routes_move_into_week_partitions_intact(tmp_path):
    """Routes an installation stored before migration 0010 (one unpartitioned table) are copied into their
    project's week partitions: every byte served the same, the storage count and `routes_stored` right."""
    import numpy as np
    with older_installation(tmp_path, "0010") as s:
        psql, data = s.psql, s.data_dir
        rng = np.random.default_rng(3)
        want = {}
        for i, days in enumerate([0, 0, 9, 40]):   # rows of three different weeks
            T = 6
            routes = np.stack([np.stack([rng.permutation(32)[:4] for _ in range(3)]) for _ in range(T - 1)]).astype(np.uint8)
            rid = psql(f"INSERT INTO rollouts (project_id, model, token_ids, prompt_length, created_at) SELECT id, 'm', "
                       f"'{{1,2,3,4,5,6}}', 2, now() - interval '{days} days' FROM projects LIMIT 1 RETURNING id")
            psql(f"INSERT INTO routes (rollout_id, rows, layers, top_k, num_experts, width, checksum, data) VALUES "
                 f"('{rid}', {T - 1}, 3, 4, 32, 1, {crc32c(routes.tobytes())}, '\\x{routes.tobytes().hex()}')")
            want[rid] = routes
        none = psql("INSERT INTO rollouts (project_id, model, token_ids, prompt_length) SELECT id, 'm', '{1,2}', 1 FROM projects LIMIT 1 RETURNING id")
        bytes_before = psql("SELECT route_bytes FROM projects LIMIT 1")
        s.upgrade()
        H = {"Authorization": "Bearer " + s.keys["a"]}
        for rid, routes in want.items():
            got = requests.get(f"{s.url}/v1/rollouts/{rid}/routes", params={"format": "json"}, headers=H)
            assert got.status_code == 200, got.text
            assert got.json()["routed_experts"] == routes.astype(int).tolist()
            assert requests.get(f"{s.url}/v1/rollouts/{rid}", headers=H).json()["routes_expired"] is False
        assert requests.get(f"{s.url}/v1/rollouts/{none}", headers=H).json()["routes"] is None
        assert psql("SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE c.relname LIKE 'routes\\_p%\\_w%'") >= "3"
        assert psql("SELECT route_bytes FROM projects LIMIT 1") == bytes_before == str(sum(r.size for r in want.values()))
        assert psql("SELECT count(*) FROM rollouts WHERE routes_stored") == "4"
        assert psql("SELECT to_regclass('routes_unpartitioned') IS NULL") == "t"
