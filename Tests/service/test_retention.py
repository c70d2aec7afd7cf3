"""Route retention: routes are partitioned by project and week; a project's policy drops whole partitions
past it (the tables are gone, not emptied row by row), except one holding routes a queued job still
needs, which survives until the job is done. Expired routes say so (410, the rollout's routes_expired)
and an offline job naming them is refused. Rows are backdated with psql, as if written weeks ago."""
import io
import subprocess
import time

import numpy as np
import requests

from conftest import R3
from jobs_client import create_model, session, submit, wait


def psql(server, sql):
    out = subprocess.run(["psql", "-h", str(server.data_dir / "pg" / "run"), "-p", "5432", "-U", "r3", "-d", "r3", "-Atc", sql],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split("\n")[0]


def rollout(api, rng, i):
    T = 12
    routes = np.stack([np.stack([rng.permutation(16)[:4] for _ in range(2)]) for _ in range(T - 1)]).astype(np.int32)
    r = api.post(api.base + "/v1/rollouts", json={
        "model": "external-engine", "token_ids": rng.integers(3, 98, T).tolist(), "prompt_length": 4,
        "logprobs": (-rng.random(T - 4) * 3).tolist(), "reward": float(i % 2), "group_id": f"g{i // 2}", "num_experts": 16,
        "routed_experts": routes.tolist()})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def backdate(server, ids, days):
    """Moves rollouts, and their routes with them (across partitions), `days` into the past."""
    quoted = ",".join(f"'{i}'" for i in ids)
    psql(server, f"BEGIN; SELECT r3_route_partition(project_id, created_at - interval '{days} days') FROM rollouts WHERE id IN ({quoted}); "
                 f"UPDATE rollouts SET created_at = created_at - interval '{days} days' WHERE id IN ({quoted}); "
                 f"UPDATE routes SET created_at = created_at - interval '{days} days' WHERE rollout_id IN ({quoted}); COMMIT")


def test_retention_drops_expired_partitions_and_keeps_what_a_queued_job_needs(private_server):
    s = private_server(R3_WORKERS="0", R3_RETENTION_SECONDS="3600")
    s.start()
    api = session(s.url, s.keys["a"])
    project = psql(s, "SELECT id FROM projects WHERE name = 'project-a'")
    rng = np.random.default_rng(0)
    held = [rollout(api, rng, i) for i in range(4)]        # a queued job trains on these
    old = [rollout(api, rng, i) for i in range(2)]         # nobody needs these
    fresh = rollout(api, rng, 0)
    backdate(s, held, 30)
    backdate(s, old, 60)
    m = create_model(api, "retained", seed=4, router_std=0.5)
    job = submit(api, {"type": "train", "model": m["id"], "rollout_ids": held, "steps": 1, "replay": "R3", "learning_rate": 1e-4})
    parts = api.get(api.base + "/v1/retention").json()
    assert parts["keep_days"] is None and parts["keep_versions"] is None and len(parts["partitions"]) >= 3, parts
    before = {p["start"]: p for p in parts["partitions"]}

    # only an admin key sets the policy; bad values name the field
    out = subprocess.run([R3, "keys", "create", "--project", "project-a", "--scopes", "routes:read"], env=s.env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert requests.put(s.url + "/v1/retention", json={"keep_days": 7}, headers={"Authorization": "Bearer " + out.stdout.strip()}).status_code == 403
    assert api.put(api.base + "/v1/retention", json={"keep_days": 0}).json()["detail"].startswith("keep_days")
    assert api.put(api.base + "/v1/retention", json={"keep_weeks": 2}).status_code == 422
    r = api.put(api.base + "/v1/retention", json={"keep_days": 7})
    assert r.status_code == 200 and r.json()["keep_days"] == 7, r.text

    applied = api.post(api.base + "/v1/retention:apply").json()
    assert [d["routes"] for d in applied["dropped_now"]] == [2], applied            # the 60-day-old week
    assert [h["jobs"] for h in applied["held"]] == [[job["id"]]], applied           # the 30-day-old week: a queued job needs it
    gone = applied["dropped_now"][0]
    assert before[gone["start"]]["routes"] == 2 and gone["bytes"] == before[gone["start"]]["bytes"] > 0
    assert [d["start"] for d in applied["dropped"]] == [gone["start"]] and applied["dropped"][0]["policy"]["keep_days"] == 7
    leaf = f"routes_p{project}_w" + gone["start"][:10].replace("-", "")
    assert psql(s, f"SELECT to_regclass('{leaf}') IS NULL") == "t", "the partition's table is dropped"
    # the storage quota's count follows
    assert psql(s, f"SELECT route_bytes = (SELECT coalesce(sum(octet_length(data)), 0) FROM routes WHERE project_id = {project}) "
                   f"FROM projects WHERE id = {project}") == "t"

    # expired routes say so; the rollout itself stays
    ro = api.get(api.base + f"/v1/rollouts/{old[0]}").json()
    assert ro["routes"] is None and ro["routes_expired"] is True and len(ro["token_ids"]) == 12
    r = api.get(api.base + f"/v1/rollouts/{old[0]}/routes")
    assert r.status_code == 410 and r.headers["Content-Type"] == "application/problem+json"
    assert "retention" in r.json()["detail"] and gone["start"] in r.json()["detail"], r.text
    assert api.get(api.base + f"/v1/rollouts/{fresh}").json()["routes_expired"] is False
    batch = api.post(api.base + "/v1/routes:batchGet", json={"ids": [fresh, old[0]], "format": "json"})
    assert batch.status_code == 410 and old[0] in batch.json()["detail"], batch.text
    # routes are not stored again into a dropped week
    buf = io.BytesIO()
    np.save(buf, np.stack([np.stack([rng.permutation(16)[:4] for _ in range(2)]) for _ in range(11)]).astype(np.int32))
    again_put = api.put(api.base + f"/v1/rollouts/{old[0]}/routes", params={"num_experts": 16}, data=buf.getvalue(),
                        headers={"Content-Type": "application/x-npy"})
    assert again_put.status_code == 410 and "retention" in again_put.json()["detail"], again_put.text
    refused = api.post(api.base + "/v1/jobs", json={"type": "train", "model": m["id"], "rollout_ids": [held[0], old[1]], "steps": 1})
    assert refused.status_code == 422 and old[1] in refused.json()["detail"] and "expired" in refused.json()["detail"], refused.text

    # the queued job runs on the routes retention kept for it
    s.start_worker()
    done = wait(api, job["id"], timeout=300)
    assert done["state"] == "succeeded", done
    metrics = api.get(api.base + f"/v1/jobs/{job['id']}/metrics").json()["data"]
    assert metrics[0]["replayed_token_frac"] == 1 and metrics[0]["replay_fallback_tokens"] == 0, metrics
    # with the job done, that week goes too; the current week never does
    again = api.post(api.base + "/v1/retention:apply").json()
    assert [d["routes"] for d in again["dropped_now"]] == [4] and again["held"] == [], again
    assert api.get(api.base + f"/v1/rollouts/{fresh}/routes", params={"format": "json"}).status_code == 200


def test_keep_last_versions_drops_weeks_holding_only_older_versions(private_server):
    s = private_server(R3_WORKERS="0")
    s.start()
    api = session(s.url, s.keys["a"])
    rng = np.random.default_rng(1)

    def at_version(v):
        r = api.post(api.base + "/v1/rollouts", json={"model": "ext", "policy_version": v, "token_ids": [5, 6, 7, 8], "prompt_length": 1,
                                                     "num_experts": 16, "routed_experts": [[[1, 2]], [[3, 4]], [[5, 6]]]})
        assert r.status_code == 201, r.text
        return r.json()["id"]
    v1, v2, v3 = at_version(1), at_version(2), at_version(3)
    backdate(s, [v1], 21)
    backdate(s, [v2], 14)
    r = api.put(api.base + "/v1/retention", json={"keep_versions": 2})
    assert r.status_code == 200 and r.json()["keep_versions"] == 2 and r.json()["keep_days"] is None
    applied = api.post(api.base + "/v1/retention:apply").json()
    assert [d["routes"] for d in applied["dropped_now"]] == [1], applied           # version 1's week; 2 and 3 are the last two
    assert api.get(api.base + f"/v1/rollouts/{v1}").json()["routes_expired"] is True
    assert api.get(api.base + f"/v1/rollouts/{v2}/routes", params={"format": "json"}).status_code == 200
    assert api.post(api.base + "/v1/retention:apply").json()["dropped_now"] == []
    # a round that detached a week and stopped before dropping it: the next round finishes the drop
    project = psql(s, "SELECT id FROM projects WHERE name = 'project-a'")
    leaf = psql(s, f"SELECT r3_route_partition({project}, created_at) FROM rollouts WHERE id = '{v2}'")
    psql(s, f"ALTER TABLE routes_p{project} DETACH PARTITION {leaf}")
    assert api.put(api.base + "/v1/retention", json={"keep_versions": 2, "keep_days": 3650}).status_code == 200
    finished = api.post(api.base + "/v1/retention:apply").json()
    assert [d["routes"] for d in finished["dropped_now"]] == [1] and finished["deferred"] == [], finished
    assert psql(s, f"SELECT to_regclass('{leaf}') IS NULL") == "t"
    assert psql(s, f"SELECT route_bytes = (SELECT coalesce(sum(octet_length(data)), 0) FROM routes WHERE project_id = {project}) "
                   f"FROM projects WHERE id = {project}") == "t"


def test_the_maintenance_loop_applies_retention_by_itself(private_server):
    s = private_server(R3_WORKERS="0", R3_RETENTION_SECONDS="0.5")
    s.start()
    api = session(s.url, s.keys["a"])
    r = api.post(api.base + "/v1/rollouts", json={"model": "ext", "token_ids": [5, 6, 7], "prompt_length": 1, "num_experts": 16,
                                                 "routed_experts": [[[1, 2]], [[3, 4]]]})
    rid = r.json()["id"]
    backdate(s, [rid], 30)
    assert api.put(api.base + "/v1/retention", json={"keep_days": 1}).status_code == 200
    deadline = time.time() + 30
    while api.get(api.base + f"/v1/rollouts/{rid}").json()["routes_expired"] is not True:
        assert time.time() < deadline, "the maintenance loop did not apply the retention"
        time.sleep(0.2)
    # the round logs its drops after the transaction that made them visible has committed
    while '"msg":"route partition dropped"' not in s.log.read_text():
        assert time.time() < deadline, "the drop was not logged"
        time.sleep(0.1)
