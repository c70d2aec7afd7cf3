"""Jobs through HTTP against a real PostgreSQL: rollout jobs whose routes replay in the engine, SFT then
RL with R3, offline training on uploaded rollouts, SSE, cancel, idempotency, kill -9 and resume, and two
worker processes sharing one queue."""
import io
import json
import math
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from safetensors.numpy import load_file

from jobs_client import REQUIRED_METRICS, TINY, all_rollouts, create_model, download_checkpoint, events, job, session, submit, wait

ROOT = Path(__file__).resolve().parents[2]
R3 = os.environ.get("R3_BIN", str(ROOT / ".build" / "release" / "r3"))


def test_rollout_job_routes_replay_bit_identically_in_the_engine(api, server, tmp_path):
    m = create_model(api, "rollout-replay", seed=5, router_std=0.5)
    j = submit(api, {"type": "rollout", "model": m["id"], "n": 2, "max_tokens": 6, "seed": 11, "precision": "deterministic",
                     "prompts": [{"token_ids": [1, 20, 30, 40]}, {"text": "12+34="}]})
    assert j["state"] == "queued" and j["params"]["prompts"] == {"count": 2}
    done = wait(api, j["id"])
    assert done["state"] == "succeeded", done
    ids = done["result"]["rollout_ids"]
    assert len(ids) == 4 and done["result"]["policy_version"] == 0
    ckpt = download_checkpoint(api, m["id"], 0, tmp_path / "v0")
    for rid in ids:
        ro = api.get(api.base + "/v1/rollouts/" + rid).json()
        tokens = ro["token_ids"]
        assert ro["model"] == m["id"] and ro["policy_version"] == 0 and ro["group_id"].startswith(j["id"])
        assert ro["routes"]["shape"] == [len(tokens) - 1, 2, 4]
        routes = np.load(io.BytesIO(api.get(api.base + f"/v1/rollouts/{rid}/routes", params={"format": "npy"}).content))
        np.save(tmp_path / "r.npy", routes)
        outs = {}
        for mode, extra in [("replay", ["--replay-routes", tmp_path / "r.npy"]), ("live", [])]:
            p = subprocess.run([R3, "forward", "--model", ckpt, "--input-ids", ",".join(map(str, tokens)), "--precision", "deterministic",
                                "--output", tmp_path / f"{mode}.safetensors", *map(str, extra)], capture_output=True, text=True, timeout=120)
            assert p.returncode == 0, p.stderr
            outs[mode] = load_file(str(tmp_path / f"{mode}.safetensors"))
        # the replayed forward used exactly the stored experts, and the live router picks them too: the record is faithful
        np.testing.assert_array_equal(outs["replay"]["routed_experts"][:-1], routes)
        np.testing.assert_array_equal(outs["live"]["routed_experts"][:-1], routes)
        np.testing.assert_array_equal(outs["replay"]["logits"], outs["live"]["logits"])
        # and the stored sampling log-probs are the engine's log-softmax at the sampled tokens
        logits = outs["replay"]["logits"].astype(np.float64)
        lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        P = ro["prompt_length"]
        want = [logits[t - 1, tokens[t]] - lse[t - 1] for t in range(P, len(tokens))]
        np.testing.assert_allclose(ro["logprobs"], want, atol=1e-4)


def test_sft_then_train_r3_has_every_metric_finite_and_new_policy_versions(api):
    m = create_model(api, "sft-train", seed=2, router_std=0.5)
    sft = wait(api, submit(api, {"type": "sft", "model": m["id"], "task": "reverse", "difficulty": 2, "steps": 60,
                                 "learning_rate": 3e-3, "seed": 1})["id"])
    assert sft["state"] == "succeeded", sft
    assert sft["result"]["eval_reward_mean"] > 0.2, sft["result"]
    assert sft["result"]["policy_version"] == 60
    train = submit(api, {"type": "train", "model": m["id"], "task": "reverse", "difficulty": 2, "steps": 6, "batch_size": 4, "n": 4,
                         "replay": "R3", "learning_rate": 1e-4, "seed": 3, "checkpoint_every": 3})
    done = wait(api, train["id"])
    assert done["state"] == "succeeded", done
    metrics = api.get(api.base + f"/v1/jobs/{train['id']}/metrics").json()["data"]
    assert [r["step"] for r in metrics] == list(range(6))
    for r in metrics:
        for k in REQUIRED_METRICS:
            assert isinstance(r.get(k), (int, float)) and math.isfinite(r[k]), (r["step"], k, r.get(k))
        assert r["replay_fallback_tokens"] == 0
        assert r["reward_mean"] > 0
    assert [r["policy_version"] for r in metrics] == list(range(60, 66)), "step s samples with the version step s−1 made"
    csv = api.get(api.base + f"/v1/jobs/{train['id']}/metrics", params={"format": "csv"})
    assert csv.headers["Content-Type"].startswith("text/csv")
    lines = csv.text.strip().split("\n")
    assert len(lines) == 7 and lines[0].startswith("step,policy_version,reward_mean")
    versions = api.get(api.base + f"/v1/models/{m['id']}/versions").json()["data"]
    assert [v["version"] for v in versions] == list(range(67))
    assert [v["version"] for v in versions if v["checkpointed"]] == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 63, 66]
    rollouts = all_rollouts(api, job_id=train["id"])
    assert len(rollouts) == 6 * 16
    assert all(r["routes"] is not None and r["reward"] is not None for r in rollouts)
    ev = events(api, train["id"])
    assert [e["event"] for e in ev][:2] == ["job.queued", "job.started"] and ev[-1]["event"] == "job.succeeded"
    assert sum(e["event"] == "job.progress" for e in ev) == 6
    assert [int(e["id"]) for e in ev] == sorted(int(e["id"]) for e in ev)
    # Last-Event-ID resumes after the given event
    r = api.get(api.base + f"/v1/jobs/{train['id']}/events", headers={"Last-Event-ID": ev[-2]["id"]}, timeout=30)
    assert r.text.count("event: ") == 1 and "job.succeeded" in r.text


def test_offline_training_replays_uploaded_routes(api):
    m = create_model(api, "offline", seed=4, router_std=0.5)
    rng = np.random.default_rng(0)
    ids = []
    for i in range(8):
        T = 12
        tokens = rng.integers(3, 98, T).tolist()
        routes = np.stack([np.stack([rng.permutation(16)[:4] for _ in range(2)]) for _ in range(T - 1)]).astype(np.int32)
        if i == 0:
            routes[3] = -1   # a token the external engine did not report: falls back to the live router
        r = api.post(api.base + "/v1/rollouts", json={
            "model": "external-engine", "token_ids": tokens, "prompt_length": 4, "logprobs": (-rng.random(T - 4) * 3).tolist(),
            "reward": float(i % 2), "group_id": f"g{i // 4}", "num_experts": 16, "routed_experts": routes.tolist()})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    done = wait(api, submit(api, {"type": "train", "model": m["id"], "rollout_ids": ids, "steps": 2, "replay": "R3",
                                  "learning_rate": 1e-4, "tis": True})["id"])
    assert done["state"] == "succeeded", done
    metrics = api.get(api.base + f"/v1/jobs/{done['id']}/metrics").json()["data"]
    assert len(metrics) == 2 and all(r["replay_fallback_tokens"] == 1 for r in metrics)
    # random routes disagree with the model's own router almost everywhere
    assert metrics[0]["router_disagreement"] > 0.5
    assert len(all_rollouts(api, job_id=done["id"])) == 0, "offline training stores no new rollouts"


def test_bad_job_requests_are_rejected_and_nothing_is_queued(api, server):
    m = create_model(api, "bad-requests")
    before = len(api.get(api.base + "/v1/jobs", params={"limit": 500}).json()["data"])
    cases = [
        ({"type": "nope", "model": m["id"]}, "type"),
        ({"type": "sft", "model": m["id"]}, "task"),
        ({"type": "sft", "model": "00000000-0000-0000-0000-000000000000", "task": "sort"}, "does not exist"),
        ({"type": "train", "model": m["id"], "task": "sort", "rollout_ids": ["00000000-0000-0000-0000-000000000000"]}, "exactly one"),
        ({"type": "train", "model": m["id"], "rollout_ids": ["00000000-0000-0000-0000-000000000000"]}, "does not exist"),
        ({"type": "train", "model": m["id"], "task": "sort", "replay": "R4"}, "replay"),
        ({"type": "train", "model": m["id"], "task": "sort", "difficulty": 40}, "difficulty"),
        ({"type": "rollout", "model": m["id"], "prompts": [{"token_ids": [1, 500]}]}, "outside"),
        ({"type": "rollout", "model": m["id"], "prompts": []}, "prompts"),
        ({"type": "rollout", "model": m["id"], "prompts": [{"text": "héllo"}]}, "ASCII"),
        ({"type": "sft", "model": m["id"], "task": "sort", "learning_rate": -1}, "learning_rate"),
        ({"type": "sft", "model": m["id"], "task": "sort", "colour": "red"}, "unknown field"),
    ]
    for body, words in cases:
        r = api.post(api.base + "/v1/jobs", json=body)
        assert r.status_code == 422, (body, r.status_code, r.text)
        assert r.headers["Content-Type"] == "application/problem+json" and words in r.json()["detail"], (body, r.json())
    assert api.post(api.base + "/v1/jobs", data="{", headers={"Content-Type": "application/json"}).status_code == 400
    assert len(api.get(api.base + "/v1/jobs", params={"limit": 500}).json()["data"]) == before
    assert api.get(api.base + "/v1/jobs/00000000-0000-0000-0000-000000000000").status_code == 404
    assert api.get(api.base + "/v1/jobs/not-a-uuid/metrics").status_code == 404
    other = session(server.url, server.keys["b"])
    assert other.get(server.url + "/v1/models/" + m["id"]).status_code == 404
    r = other.post(server.url + "/v1/jobs", json={"type": "sft", "model": m["id"], "task": "sort"})
    assert r.status_code == 422, "another project's model is not visible"
    assert api.post(api.base + "/v1/models", json={"name": "bad-requests", "config": TINY}).status_code == 409
    r = api.post(api.base + "/v1/models", json={"name": "x", "config": dict(TINY, num_experts_per_tok=99)})
    assert r.status_code == 422 and "num_experts_per_tok" in r.json()["detail"]
    r = api.post(api.base + "/v1/models", json={"name": "y", "checkpoint_path": "/nonexistent/dir"})
    assert r.status_code == 422


def test_registered_checkpoint_directory_serves_rollouts(api):
    fixture = Path(os.environ.get("R3_SHARED", ROOT.parent / "shared")) / "fixtures" / "qwen3moe-tiny-a"
    r = api.post(api.base + "/v1/models", json={"name": "fixture", "checkpoint_path": str(fixture)})
    assert r.status_code == 201, r.text
    m = r.json()
    assert m["source"] == "checkpoint" and m["config"]["num_experts"] == 8
    done = wait(api, submit(api, {"type": "rollout", "model": m["id"], "prompts": [{"token_ids": [1, 2, 3]}], "max_tokens": 4})["id"])
    assert done["state"] == "succeeded", done


def test_idempotency_key_returns_the_same_job(api):
    m = create_model(api, "idem")
    body = {"type": "sft", "model": m["id"], "task": "sort", "steps": 2}
    a = api.post(api.base + "/v1/jobs", json=body, headers={"Idempotency-Key": "req-123"})
    b = api.post(api.base + "/v1/jobs", json=body, headers={"Idempotency-Key": "req-123"})
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] == b.json()["id"] and b.headers.get("Idempotent-Replayed") == "true"
    c = api.post(api.base + "/v1/jobs", json=dict(body, steps=3), headers={"Idempotency-Key": "req-123"})
    assert c.status_code == 422 and "Idempotency-Key" in c.json()["detail"]
    d = api.post(api.base + "/v1/jobs", json=body, headers={"Idempotency-Key": "req-456"})
    assert d.json()["id"] != a.json()["id"]
    mine = [j for j in api.get(api.base + "/v1/jobs", params={"type": "sft", "limit": 500}).json()["data"] if j["model"] == m["id"]]
    assert len(mine) == 2
    wait(api, a.json()["id"]), wait(api, d.json()["id"])


def test_cancel_stops_a_running_job_within_one_step(api):
    m = create_model(api, "cancel")
    j = submit(api, {"type": "train", "model": m["id"], "task": "addition", "steps": 5000, "batch_size": 4, "n": 4})
    running = wait(api, j["id"], until=lambda x: x["progress"].get("step", 0) >= 2)
    assert running["state"] == "running"
    r = api.post(api.base + f"/v1/jobs/{j['id']}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    at_cancel = r.json()["progress"]["step"]
    done = wait(api, j["id"], timeout=60)
    assert done["state"] == "cancelled"
    assert done["progress"]["step"] <= at_cancel + 1
    assert len(api.get(api.base + f"/v1/jobs/{j['id']}/metrics").json()["data"]) == done["progress"]["step"]
    assert api.post(api.base + f"/v1/jobs/{j['id']}/cancel").status_code == 200
    # a queued job is cancelled at once; a finished one cannot be
    fin = wait(api, submit(api, {"type": "sft", "model": m["id"], "task": "sort", "steps": 1})["id"])
    assert api.post(api.base + f"/v1/jobs/{fin['id']}/cancel").status_code == 409


def test_kill9_mid_training_resumes_from_checkpoint_without_losing_or_duplicating_rollouts(private_server):
    s = private_server(R3_JOB_LEASE_SECONDS="2")
    s.start()
    api = session(s.url, s.keys["a"])
    cfg = dict(TINY, hidden_size=128, num_hidden_layers=4, moe_intermediate_size=64)
    m = create_model(api, "resume", config=cfg)
    steps, per_step = 40, 8 * 4
    j = submit(api, {"type": "train", "model": m["id"], "task": "sort", "difficulty": 4, "steps": steps, "batch_size": 8, "n": 4,
                     "checkpoint_every": 5, "seed": 9})
    wait(api, j["id"], until=lambda x: x["progress"].get("step", 0) >= 12, timeout=300)
    s.kill9()
    s.start()
    done = wait(api, j["id"], timeout=600)
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2
    ev = events(api, j["id"])
    resumed = [json.loads(e["data"])["data"] for e in ev if e["event"] == "job.resumed"]
    assert len(resumed) == 1 and resumed[0]["from_step"] >= 10 and resumed[0]["from_step"] % 5 == 0, resumed
    rollouts = all_rollouts(api, job_id=j["id"])
    assert len(rollouts) == steps * per_step
    assert len({r["id"] for r in rollouts}) == steps * per_step
    by_step = {}
    for r in rollouts:
        by_step.setdefault(r["metadata"]["step"], 0)
        by_step[r["metadata"]["step"]] += 1
    assert by_step == {k: per_step for k in range(steps)}
    metrics = api.get(api.base + f"/v1/jobs/{j['id']}/metrics").json()["data"]
    assert [r["step"] for r in metrics] == list(range(steps))
    versions = [v["version"] for v in api.get(api.base + f"/v1/models/{m['id']}/versions").json()["data"]]
    assert versions == list(range(steps + 1))


def test_two_worker_processes_share_the_queue_and_never_run_the_same_job(private_server):
    s = private_server(R3_WORKERS="0", R3_ENGINE_THREADS="1")
    s.start()
    s.start_worker()
    s.start_worker()
    deadline = time.time() + 60
    while not all('"msg":"workers started"' in (s.data_dir / f"worker{i}.log").read_text() for i in range(2)):
        assert time.time() < deadline, "the workers did not start"
        time.sleep(0.1)
    api = session(s.url, s.keys["a"])
    m = create_model(api, "shared", config=dict(TINY, hidden_size=128, num_hidden_layers=4))
    jobs = [submit(api, {"type": "train", "model": m["id"], "task": "reverse", "steps": 12, "batch_size": 8, "n": 8, "seed": i})
            for i in range(6)]
    workers = set()
    for j in jobs:
        done = wait(api, j["id"], timeout=600)
        assert done["state"] == "succeeded" and done["attempts"] == 1, done
        started = [json.loads(e["data"])["data"] for e in events(api, j["id"]) if e["event"] == "job.started"]
        assert len(started) == 1, started
        workers.add(started[0]["worker"])
        assert len(all_rollouts(api, job_id=j["id"])) == 12 * 64
    assert len(workers) == 2, f"both worker processes took jobs: {workers}"


def test_sigterm_hands_a_running_job_back_and_a_dead_workers_last_attempt_fails_it(private_server):
    s = private_server(R3_JOB_LEASE_SECONDS="2")
    s.start()
    api = session(s.url, s.keys["a"])
    m = create_model(api, "handback", config=dict(TINY, hidden_size=128, num_hidden_layers=4))
    graceful = submit(api, {"type": "train", "model": m["id"], "task": "sort", "steps": 30, "batch_size": 8, "n": 4, "checkpoint_every": 5})
    wait(api, graceful["id"], until=lambda x: x["progress"].get("step", 0) >= 7)
    s.stop()                                         # SIGTERM: the current step finishes, the job goes back to the queue
    s.start()
    done = wait(api, graceful["id"])
    assert done["state"] == "succeeded" and done["attempts"] == 1, done
    kinds = [e["event"] for e in events(api, graceful["id"])]
    assert "job.requeued" in kinds and "job.resumed" in kinds
    assert len(all_rollouts(api, job_id=graceful["id"])) == 30 * 32

    last = submit(api, {"type": "train", "model": m["id"], "task": "sort", "steps": 500, "batch_size": 8, "n": 4, "max_attempts": 1})
    wait(api, last["id"], until=lambda x: x["progress"].get("step", 0) >= 2)
    s.kill9()
    s.start()
    failed = wait(api, last["id"], timeout=60)
    assert failed["state"] == "failed" and "stopped" in failed["error"], failed


def test_event_stream_of_a_finished_job_ends_even_past_its_last_event(api):
    m = create_model(api, "stream-end")
    j = wait(api, submit(api, {"type": "sft", "model": m["id"], "task": "sort", "steps": 1})["id"])
    t = time.time()
    r = api.get(api.base + f"/v1/jobs/{j['id']}/events", headers={"Last-Event-ID": "999999999"}, timeout=10)
    assert r.status_code == 200 and "event:" not in r.text and time.time() - t < 5
    for bad in [{"after": "-1"}, {"after": "+5"}, {"after": ""}]:
        assert api.get(api.base + f"/v1/jobs/{j['id']}/events", params=bad, timeout=10).status_code == 400, bad
    assert api.get(api.base + f"/v1/jobs/{j['id']}/events", headers={"Last-Event-ID": "x"}, timeout=10).status_code == 400


@pytest.mark.parametrize("algorithm,replay,tis", [("gspo", "R3", True), ("grpo", "R2", False), ("grpo", "none", True)])
def test_online_training_runs_every_algorithm_and_replay_mode(api, algorithm, replay, tis):
    m = create_model(api, f"modes-{algorithm}-{replay}-{tis}", seed=7, router_std=0.5)
    done = wait(api, submit(api, {"type": "train", "model": m["id"], "task": "addition", "difficulty": 1, "steps": 2, "batch_size": 4,
                                  "n": 4, "mini_steps": 2, "algorithm": algorithm, "replay": replay, "tis": tis, "seed": 1})["id"])
    assert done["state"] == "succeeded", done
    assert done["params"]["algorithm"] == algorithm and done["params"]["replay"] == replay and done["params"]["tis"] is tis
    for r in api.get(api.base + f"/v1/jobs/{done['id']}/metrics").json()["data"]:
        for k in REQUIRED_METRICS:
            if k == "replay_live_agreement" and replay == "none":
                assert r[k] is None, "no replay, no agreement to report"
                continue
            assert isinstance(r[k], (int, float)) and math.isfinite(r[k]), (k, r[k])
