"""Migrations keep stored data: an installation that stored log-probs as real[] (before migration 0008)
reads the same values back, NaN and empty arrays included, after upgrading to float32 bytes."""
import os
import shutil
import subprocess

import requests

from conftest import ROOT, Server, stop_with_cluster


def test_logprobs_survive_the_move_to_float32_bytes(tmp_path):
    before_0008 = tmp_path / "migrations"
    before_0008.mkdir()
    for f in (ROOT / "Migrations").glob("*.sql"):
        if f.name < "0008":
            shutil.copy(f, before_0008 / f.name)
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(data, 0o755)
    s = Server(data)
    s.env["R3_MIGRATIONS_DIR"] = str(before_0008)
    s.keys = {"a": s.key("p")}
    try:
        s.start()

        def psql(sql):   # the rows an older server wrote, straight into the older schema
            out = subprocess.run(["psql", "-h", str(data / "pg" / "run"), "-p", "5432", "-U", "r3", "-d", "r3", "-Atc", sql],
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            return out.stdout.split()[0]
        full = psql("INSERT INTO rollouts (project_id, model, token_ids, prompt_length, logprobs, loss_mask) SELECT id, 'm', "
                    "'{1,2,3,4,5}', 1, '{-0.5,-1.25,NaN,-3e-08}'::real[], '\\x01010001'::bytea FROM projects LIMIT 1 RETURNING id")
        empty = psql("INSERT INTO rollouts (project_id, model, token_ids, prompt_length, logprobs) SELECT id, 'm', '{1,2}', 2, "
                     "'{}'::real[] FROM projects LIMIT 1 RETURNING id")
        none = psql("INSERT INTO rollouts (project_id, model, token_ids, prompt_length) SELECT id, 'm', '{1,2}', 1 FROM projects LIMIT 1 RETURNING id")
        s.stop()
        s.env["R3_MIGRATIONS_DIR"] = str(ROOT / "Migrations")
        s.start()
        H = {"Authorization": "Bearer " + s.keys["a"]}
        got = {i: requests.get(f"{s.url}/v1/rollouts/{i}", headers=H).json()["logprobs"] for i in (full, empty, none)}
        assert got[full] == [-0.5, -1.25, None, -3e-08] and got[empty] == [] and got[none] is None, got
    finally:
        stop_with_cluster(s)
