"""Runs that train elsewhere: a simulated external trainer stores its rollouts (inference log-probs and
routes), then reports each optimizer step with its own log-probs. The service computes the mismatch
metrics from what it stores, runs the collapse detector and answers with alarms and an action; webhooks
are verified by the `standardwebhooks` reference library. Expected values are re-derived here in numpy
from the definitions in shared/CONVENTIONS.md §2."""
import base64
import json
import os
import shutil
import subprocess
import threading
import uuid

import numpy as np
import pytest
import requests
from PIL import Image
from standardwebhooks.webhooks import Webhook

from receiver import Receiver

HERE = os.path.dirname(os.path.abspath(__file__))

CONFIG = {"model_type": "qwen3_moe", "num_hidden_layers": 4, "num_experts": 16, "num_experts_per_tok": 4, "mlp_only_layers": [0]}
MOE, E, K = 3, 16, 4        # MoE layers 1..3 (layer 0 dense), 16 experts, top-4
QUANTILES = [("min", 0), ("p01", .01), ("p05", .05), ("p50", .5), ("p95", .95), ("p99", .99), ("max", 1)]


def b64f32(a):
    return base64.b64encode(np.asarray(a, "<f4").tobytes()).decode()


@pytest.fixture(scope="module")
def model(server):
    api = requests.Session()
    api.headers["Authorization"] = "Bearer " + server.keys["a"]
    name = "runs-" + uuid.uuid4().hex[:6]
    r = api.post(server.url + "/v1/models", json={"name": name, "hf_config": CONFIG})
    assert r.status_code == 201, r.text
    return name


class Trainer:
    """An external trainer: stores rollouts as an inference engine recorded them, and reports steps."""

    def __init__(self, api, model, seed, prompt=6, response=40):
        self.api, self.model, self.rng = api, model, np.random.default_rng(seed)
        self.prompt, self.response = prompt, response
        self.stored = {}     # id -> (infer logprobs, routes [T-1, MOE, K], prompt_length, tokens)

    def rollouts(self, n, routes=True):
        ids = []
        for _ in range(n):
            T = self.prompt + self.response
            tokens = self.rng.integers(0, 1000, T).tolist()
            infer = -self.rng.uniform(0.05, 3.0, self.response).astype(np.float32)
            r = np.argsort(self.rng.random((T - 1, MOE, E)), axis=-1)[..., :K].astype(np.int32)
            body = {"model": self.model, "token_ids": tokens, "prompt_length": self.prompt, "logprobs": infer.tolist(), "reward": 1.0}
            if routes:
                body["routed_experts"] = {"dtype": "int32", "shape": list(r.shape), "data": base64.b64encode(r.tobytes()).decode()}
            resp = self.api.post(self.api.base + "/v1/rollouts", json=body)
            assert resp.status_code == 201, resp.text
            rid = resp.json()["id"]
            self.stored[rid] = (np.asarray(body["logprobs"], np.float32), r if routes else None, self.prompt, T)
            ids.append(rid)
        return ids

    def train_logprobs(self, ids, sigma):
        return [self.stored[i][0] + self.rng.normal(0, sigma, self.response).astype(np.float32) if sigma else self.stored[i][0].copy() for i in ids]

    def report(self, run, step, ids, lps, metrics=None, **extra):
        body = {"step": step, "policy_version": step, "metrics": metrics or {},
                "rollouts": [{"id": i, "logprobs": b64f32(lp)} for i, lp in zip(ids, lps)], **extra}
        return self.api.post(f"{self.api.base}/v1/runs/{run}/steps", json=body)


def expected(trainer, ids, lps, cap=2.0):
    """The step's mismatch metrics, from the definitions, in float64."""
    d_all, seq = [], []
    for i, lp in zip(ids, lps):
        infer = trainer.stored[i][0]
        d = lp.astype(np.float64) - infer.astype(np.float64)
        d_all.append(d)
        seq.append(np.exp(d.mean()))
    d = np.concatenate(d_all)
    r = np.exp(d)
    out = {"k3_kl": np.mean(r - 1 - d), "extreme_frac_tau2": np.mean(np.abs(d) > np.log(2)), "extreme_frac_tau5": np.mean(np.abs(d) > np.log(5)),
           "tis_weight_mean": np.mean(np.minimum(r, cap)), "tis_weight_max": np.max(np.minimum(r, cap)), "tis_capped_frac": np.mean(r > cap)}
    for (name, q), tv, sv in zip(QUANTILES, np.quantile(r, [q for _, q in QUANTILES]), np.quantile(seq, [q for _, q in QUANTILES])):
        out["token_ratio_" + name], out["seq_ratio_" + name] = tv, sv
    return out


def create_run(api, **body):
    body.setdefault("name", "run-" + uuid.uuid4().hex[:8])
    r = api.post(api.base + "/v1/runs", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def healthy_metrics(rng, step):
    return {"reward": 0.5 + 0.02 * rng.standard_normal(), "grad_norm": 1 + 0.05 * rng.standard_normal(), "entropy": 1.5 - 0.001 * step,
            "loss": -0.01, "lr": 1e-6}


def verified(hook, secret):
    return [Webhook(secret).verify(q["body"], q["headers"]) for q in hook.requests]


def subscribe(api, events):
    hook = Receiver().start()
    r = api.post(api.base + "/v1/webhooks", json={"url": hook.url, "events": events})
    assert r.status_code == 201, r.text
    return hook, r.json()["secret"], r.json()["id"]


def test_thirty_honest_steps_give_no_alarm_and_metrics_match_numpy(api, model):
    t = Trainer(api, model, seed=1)
    run = create_run(api, model=model, metric_names={"reward_mean": "reward"}, params={"algorithm": "grpo", "replay": "R3", "lr": 1e-6})
    assert run["model"] and run["links"]["page"].startswith(f"/runs/{run['id']}?token=")
    for step in range(30):
        ids = t.rollouts(4)
        lps = t.train_logprobs(ids, 0.02)
        r = t.report(run["id"], step, ids, lps, healthy_metrics(t.rng, step), replay="R3")
        assert r.status_code == 201, r.text
        reply = r.json()
        assert reply["alarms"] == [] and reply["action"] == "continue" and reply["state"] == "active"
        m = reply["metrics"]
        for k, v in expected(t, ids, lps).items():
            assert m[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
        assert m["replayed_token_frac"] == 1.0 and m["replay_fallback_tokens"] == 0
        assert m["rollouts"] == 4 and m["tokens"] == 4 * t.response and m["reward"] == pytest.approx(healthy_metrics(np.random.default_rng(0), 0)["reward"], abs=0.2)
    rows = api.get(f"{api.base}/v1/runs/{run['id']}/metrics").json()["data"]
    assert [x["step"] for x in rows] == list(range(30))
    assert api.get(f"{api.base}/v1/runs/{run['id']}").json()["last_step"] == 29


def test_expert_load_from_stored_routes_in_the_reply_and_routes_stats(api, model):
    t = Trainer(api, model, seed=2)
    ids = t.rollouts(3) + t.rollouts(1, routes=False)
    run = create_run(api)
    reply = t.report(run["id"], 0, ids, t.train_logprobs(ids, 0.01)).json()
    counts = np.zeros((MOE, E), np.int64)
    for i in ids[:3]:
        r = t.stored[i][1]
        for l in range(MOE):
            counts[l] += np.bincount(r[:, l, :].ravel(), minlength=E)
    load = reply["expert_load"]
    assert load["moe_layers"] == [1, 2, 3] and load["num_experts"] == E and load["tokens"] == 3 * (t.prompt + t.response - 1)
    assert np.array_equal(np.asarray(load["counts"]), counts)
    imb = counts.max(axis=1) * E / counts.sum(axis=1)
    assert load["imbalance"] == pytest.approx(imb.tolist()) and load["imbalance_max"] == pytest.approx(imb.max())
    assert reply["metrics"]["expert_load_imbalance_max"] == pytest.approx(imb.max())
    stats = api.post(api.base + "/v1/routes:stats", json={"rollout_ids": ids}).json()
    assert stats["expert_load"]["counts"] == load["counts"] and stats["rollouts_without_routes"] == [ids[3]]
    step = api.get(f"{api.base}/v1/runs/{run['id']}/steps/0").json()
    assert step["expert_load"]["counts"] == load["counts"] and step["reply"] == reply


def test_training_routes_give_router_disagreement_and_replay_share(api, model):
    t = Trainer(api, model, seed=3)
    ids = t.rollouts(3) + t.rollouts(1, routes=False)
    lps = t.train_logprobs(ids, 0.01)
    rng = np.random.default_rng(7)
    mine, pairs, differing, slots, tokens, tok_diff = [], 0, 0, 0, 0, 0
    for i in ids[:2]:
        r = t.stored[i][1].copy()
        flip = rng.random(r.shape[:2]) < 0.2         # 20% of (token, layer) rows: another expert set
        r[flip] = np.argsort(rng.random((flip.sum(), E)), axis=-1)[:, :K]
        mine.append(r)
        stored = t.stored[i][1]
        for row in range(r.shape[0]):
            d = [len(set(stored[row, l]) - set(r[row, l])) for l in range(MOE)]
            pairs += MOE
            differing += sum(x > 0 for x in d)
            slots += sum(d)
            tokens += 1
            tok_diff += any(x > 0 for x in d)
    rollouts = [{"id": i, "logprobs": b64f32(lp), "replay": "R3"} for i, lp in zip(ids, lps)]
    for x, r in zip(rollouts, mine):   # the training routes, in SGLang's layout: every hidden layer, the dense one 0
        full = np.zeros((r.shape[0], 4, K), np.int32)
        full[:, 1:] = r
        x["routes"] = {"dtype": "int32", "shape": list(full.shape), "data": base64.b64encode(full.tobytes()).decode()}
    rollouts[2]["replay"] = "none"
    run = create_run(api)
    r = api.post(f"{api.base}/v1/runs/{run['id']}/steps", json={"step": 0, "rollouts": rollouts})
    assert r.status_code == 201, r.text
    m = r.json()["metrics"]
    assert m["router_disagreement"] == pytest.approx(differing / pairs)
    assert m["token_disagreement"] == pytest.approx(tok_diff / tokens)
    assert m["routers_differing_per_token"] == pytest.approx(slots / tokens)
    # R3 on rollouts 0, 1 (routes stored) and 3 (none stored: every row falls back), none on rollout 2
    assert m["replayed_token_frac"] == pytest.approx(2 / 4)
    assert m["replay_fallback_tokens"] == t.prompt + t.response - 1


def test_drift_fires_at_the_step_f2_crosses_and_the_webhook_verifies(api, model):
    hook, secret, wid = subscribe(api, ["run.collapse_detected"])
    try:
        t = Trainer(api, model, seed=4)
        run = create_run(api, collapse={"k3_factor": None})
        want = None
        for step in range(25):
            ids = t.rollouts(4)
            lps = t.train_logprobs(ids, 0.02 * 1.3 ** step)   # an unstable trainer drifts from the rollout policy
            f2 = expected(t, ids, lps)["extreme_frac_tau2"]
            reply = t.report(run["id"], step, ids, lps, healthy_metrics(t.rng, step)).json()
            assert reply["metrics"]["extreme_frac_tau2"] == pytest.approx(f2)
            if want is None and f2 > 0.1:
                want = step
                assert [a["rule"] for a in reply["alarms"]] == ["extreme_frac_tau2"] and reply["alarms"][0]["step"] == step
                assert reply["action"] == "continue"
            else:
                assert reply["alarms"] == [], (step, reply["alarms"])   # latched: one alarm per rule
        assert want is not None and want > 5
        msgs = [json.loads(q["body"]) for q in hook.wait(1)]
        assert len(verified(hook, secret)) == 1
        assert msgs[0]["type"] == "run.collapse_detected"
        d = msgs[0]["data"]
        assert d["run_id"] == run["id"] and d["step"] == want and d["rule"] == "extreme_frac_tau2" and d["threshold"] == 0.1
        assert d["metrics_url"] == f"/v1/runs/{run['id']}/metrics" and len(d["history"]) >= 1
    finally:
        api.delete(f"{api.base}/v1/webhooks/{wid}")
        hook.stop()


def test_stop_action_is_in_the_reply_and_the_run_takes_no_more_steps(api, model):
    t = Trainer(api, model, seed=5)
    run = create_run(api, on_collapse="stop", params={"replay": "none"})
    for step in range(20):
        ids = t.rollouts(2)
        reply = t.report(run["id"], step, ids, t.train_logprobs(ids, 0.05 if step < 3 else 1.0)).json()
        if reply["alarms"]:
            break
    assert step == 3 and reply["action"] == "stop" and reply["state"] == "collapsed"
    assert "extreme_frac_tau2" in [a["rule"] for a in reply["alarms"]]
    r = t.report(run["id"], 4, ids, t.train_logprobs(ids, 0.01))
    assert r.status_code == 409 and "collapsed" in r.json()["detail"]
    assert api.get(f"{api.base}/v1/runs/{run['id']}").json()["state"] == "collapsed"
    assert api.post(f"{api.base}/v1/runs/{run['id']}/resume").json()["state"] == "active"
    assert t.report(run["id"], 4, ids, t.train_logprobs(ids, 0.01)).status_code == 201


def test_pause_action_pauses_the_run_until_resumed(api, model):
    t = Trainer(api, model, seed=6)
    run = create_run(api, on_collapse="pause")
    ids = t.rollouts(2)
    reply = t.report(run["id"], 0, ids, t.train_logprobs(ids, 2.0)).json()
    assert reply["action"] == "pause" and reply["state"] == "paused"
    assert t.report(run["id"], 1, ids, t.train_logprobs(ids, 0.01)).status_code == 409


def test_same_body_is_idempotent_another_is_409_and_late_steps_are_ordered(api, model):
    t = Trainer(api, model, seed=7)
    run = create_run(api)
    ids = t.rollouts(2)
    lps = t.train_logprobs(ids, 0.03)
    first = t.report(run["id"], 5, ids, lps, {"loss": 0.5})
    again = t.report(run["id"], 5, ids, lps, {"loss": 0.5})
    assert first.status_code == 201 and again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    other = t.report(run["id"], 5, ids, lps, {"loss": 0.6})
    assert other.status_code == 409 and other.headers["Content-Type"] == "application/problem+json"
    for step in [3, 4]:
        assert t.report(run["id"], step, ids, lps).status_code == 201
    rows = api.get(f"{api.base}/v1/runs/{run['id']}/metrics").json()["data"]
    assert [x["step"] for x in rows] == [3, 4, 5] and rows[2]["loss"] == 0.5
    csv = api.get(f"{api.base}/v1/runs/{run['id']}/metrics", params={"format": "csv"})
    assert csv.headers["Content-Type"].startswith("text/csv")
    lines = csv.text.strip().split("\n")
    assert lines[0].startswith("step,policy_version,rollouts,tokens,k3_kl,") and len(lines) == 4
    assert api.get(f"{api.base}/v1/runs/{run['id']}").json()["last_step"] == 5
    # creating the run again with the same settings returns it (a restarted trainer); other settings are 409
    same = api.post(api.base + "/v1/runs", json={"name": run["name"]})
    assert same.status_code == 200 and same.json()["id"] == run["id"]
    assert api.post(api.base + "/v1/runs", json={"name": run["name"], "tis_cap": 3}).status_code == 409


def test_bad_reports_name_the_field_and_store_nothing(api, server, model):
    t = Trainer(api, model, seed=8)
    run = create_run(api)
    ids = t.rollouts(2)
    good = t.train_logprobs(ids, 0.01)
    nan = good[0].copy()
    nan[3] = np.nan
    cases = [
        ({"step": 0, "rollouts": [{"id": str(uuid.uuid4()), "logprobs": good[0].tolist()}]}, 422, "rollouts[0].id"),
        ({"step": 0, "rollouts": [{"id": ids[0], "logprobs": good[0][:-1].tolist()}]}, 422, "rollouts[0].logprobs has 39 values"),
        ({"step": 0, "rollouts": [{"id": ids[0], "logprobs": b64f32(nan)}]}, 422, "rollouts[0].logprobs[3]"),
        ({"step": 0, "rollouts": [{"id": ids[0], "logprobs": [None] * 40}]}, 422, "rollouts[0].logprobs"),
        ({"step": 0, "rollouts": [{"id": ids[0], "logprobs": "!!"}]}, 422, "rollouts[0].logprobs"),
        ({"step": 0, "rollouts": [{"id": ids[0], "logprobs": good[0].tolist(), "extra": 1}]}, 422, "rollouts[0].extra"),
        ({"step": 0, "metrics": {"k3_kl": 1}}, 422, "metrics.k3_kl"),
        ({"step": -1}, 422, "step"),
        ({"rollouts": []}, 422, "step is required"),
        ({"step": 0, "replay": "R4"}, 422, "replay"),
    ]
    for body, status, words in cases:
        r = api.post(f"{api.base}/v1/runs/{run['id']}/steps", json=body)
        assert r.status_code == status and words in r.json()["detail"], (body, r.text)
        assert r.headers["Content-Type"] == "application/problem+json"
    # the second rollout is fine but the first is bad: nothing of the report is stored
    r = api.post(f"{api.base}/v1/runs/{run['id']}/steps", json={"step": 0, "rollouts": [
        {"id": ids[1], "logprobs": b64f32(good[1])}, {"id": ids[0], "logprobs": good[0][:5].tolist()}]})
    assert r.status_code == 422 and "rollouts[1].logprobs" in r.json()["detail"]
    assert api.get(f"{api.base}/v1/runs/{run['id']}/metrics").json()["data"] == []
    assert api.get(f"{api.base}/v1/runs/{run['id']}/steps/0").status_code == 404
    # another project's key: the run does not exist for it
    other = requests.post(f"{server.url}/v1/runs/{run['id']}/steps", json={"step": 0},
                          headers={"Authorization": "Bearer " + server.keys["b"]})
    assert other.status_code == 404 and run["id"] in other.json()["detail"]
    # a rollout of another project is unknown here
    b = requests.Session()
    b.headers["Authorization"] = "Bearer " + server.keys["b"]
    b.base = server.url
    theirs = Trainer(b, model, seed=9)
    rid = b.post(server.url + "/v1/rollouts", json={"model": "x", "token_ids": [1, 2, 3], "prompt_length": 1, "logprobs": [-1, -1]}).json()["id"]
    r = api.post(f"{api.base}/v1/runs/{run['id']}/steps", json={"step": 0, "rollouts": [{"id": rid, "logprobs": [-1, -1]}]})
    assert r.status_code == 422 and "rollouts[0].id" in r.json()["detail"]
    assert theirs is not None and api.get(f"{api.base}/v1/runs/{run['id']}/metrics").json()["data"] == []


def test_events_stream_and_prometheus_gauges(api, server, model):
    t = Trainer(api, model, seed=10)
    run = create_run(api, on_collapse="stop")
    ids = t.rollouts(2)
    assert t.report(run["id"], 0, ids, t.train_logprobs(ids, 0.01), {"grad_norm": 1.25}).status_code == 201
    assert run["id"] not in requests.get(server.url + "/metrics").text      # without a key: process metrics only
    text = api.get(server.url + "/metrics").text                             # with one: its project's runs too
    assert f'r3_run_step{{run_id="{run["id"]}",run="{run["name"]}",project="1"}} 0' in text
    assert requests.get(server.url + "/metrics", headers={"Authorization": "Bearer " + server.keys["b"]}).text.count(run["id"]) == 0
    assert f'r3_run_metric{{run_id="{run["id"]}",run="{run["name"]}",project="1",metric="grad_norm"}} 1.25' in text
    assert t.report(run["id"], 1, ids, t.train_logprobs(ids, 3.0)).json()["state"] == "collapsed"
    events = []
    with api.get(f"{api.base}/v1/runs/{run['id']}/events", params={"follow": "false"}, stream=True, timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                events.append(line[7:])
    assert events[0] == "run.created" and events[1:3] == ["run.step", "run.step"]
    assert "run.collapse_detected" in events and events[-1] == "run.collapsed"
    assert f'run_id="{run["id"]}"' not in api.get(server.url + "/metrics").text   # gauges are for active runs


def test_concurrent_reports_of_one_run_are_serialised(api, model):
    t = Trainer(api, model, seed=11)
    run = create_run(api)
    ids = t.rollouts(2)
    out = []

    def send(step):
        out.append(t.report(run["id"], step, ids, t.train_logprobs(ids, 0.01)).status_code)
    threads = [threading.Thread(target=send, args=(s,)) for s in range(4)]   # R3_MAX_UPLOADS_PER_PROJECT (4) at once
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(out) == [201] * 4
    assert [x["step"] for x in api.get(f"{api.base}/v1/runs/{run['id']}/metrics").json()["data"]] == list(range(4))


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium package is not installed")
def test_run_page_shows_parameters_ticks_at_steps_and_alarm_markers(api, server, model, tmp_path):
    t = Trainer(api, model, seed=12)
    run = create_run(api, params={"algorithm": "grpo", "replay": "R3", "learning_rate": 1e-6, "seed": 3})
    for step in range(12):
        ids = t.rollouts(2)
        assert t.report(run["id"], step, ids, t.train_logprobs(ids, 0.02 if step < 8 else 1.5), healthy_metrics(t.rng, step)).status_code == 201
    page = server.url + run["links"]["page"]
    html = requests.get(page).text
    for words in ["<th>algorithm</th><td>grpo</td>", "<th>replay</th><td>R3</td>", "<th>learning_rate</th><td>1e-06</td>", "<th>on_collapse</th>",
                  "class=\"alarm-marker\"", ">extreme_frac_tau2<", "Train–inference mismatch"]:
        assert words in html, words
    assert html.index("<h3>Train–inference mismatch") < html.index("<h3>Reward and responses") < html.index("<h3>Optimisation")   # mismatch first
    assert ">8</text>" in html                              # a tick label at a real step
    assert requests.get(page.split("?")[0]).status_code == 401
    shot = tmp_path / "run.png"
    p = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,2000",
                        f"--screenshot={shot}", page], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and shot.exists(), p.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    px = img.load()
    red = sum(1 for y in range(0, img.size[1], 2) for x in range(0, img.size[0], 2) if px[x, y][0] > 190 and px[x, y][1] < 60 and px[x, y][2] < 60)
    blue = sum(1 for y in range(0, img.size[1], 2) for x in range(0, img.size[0], 2)
               if all(abs(px[x, y][i] - c) < 40 for i, c in enumerate((0x1F, 0x77, 0xB4))))
    assert red > 30 and blue > 400, (red, blue)
    shutil.copy(shot, server.data_dir / "run-page.png")


def test_cookbook_python_callback_stops_a_drifting_trainer(api, server, model):
    URL, KEY = server.url, server.keys["a"]
    # [cookbook:runs-callback]
    import base64, numpy as np, requests

    class R3Monitor:
        """Call after each optimizer step; returns what R3 says to do: "continue", "pause" or "stop"."""

        def __init__(self, url, key, name, **settings):
            self.url, self.api = url, requests.Session()
            self.api.headers["Authorization"] = "Bearer " + key
            r = self.api.post(url + "/v1/runs", json={"name": name, **settings})   # same name again: same run
            r.raise_for_status()
            self.run = r.json()["id"]

        def after_step(self, step, rollout_ids, logprobs, metrics, replay="R3"):
            rollouts = [{"id": i, "logprobs": base64.b64encode(np.asarray(lp, "<f4").tobytes()).decode()}
                        for i, lp in zip(rollout_ids, logprobs)]     # the trainer's log-probs of each response
            r = self.api.post(f"{self.url}/v1/runs/{self.run}/steps",
                              json={"step": step, "metrics": metrics, "replay": replay, "rollouts": rollouts})
            r.raise_for_status()
            for a in r.json()["alarms"]:
                print(f"R3 alarm at step {a['step']}: {a['rule']} ({a['metric']} = {a['value']:.3g})")
            return r.json()["action"]
    # [/cookbook]
    t = Trainer(api, model, seed=13)
    name = "callback-" + uuid.uuid4().hex[:6]
    # [cookbook:runs-loop]
    monitor = R3Monitor(URL, KEY, name, on_collapse="stop", metric_names={"grad_norm": "actor/grad_norm"})
    for step in range(100):
        ids = t.rollouts(4)                                 # the step's rollouts, stored with their routes
        lps = t.train_logprobs(ids, 0.02 * 1.3 ** step)     # your trainer's log-probs (this one drifts)
        if monitor.after_step(step, ids, lps, {"actor/grad_norm": 1.0}) == "stop":
            break                                           # save the last good checkpoint and stop
    # [/cookbook]
    assert 5 < step < 30
    again = R3Monitor(URL, KEY, name, on_collapse="stop", metric_names={"grad_norm": "actor/grad_norm"})
    assert again.run == monitor.run
    assert api.get(f"{URL}/v1/runs/{monitor.run}").json()["state"] == "collapsed"


def test_cookbook_runs_with_curl(api, server, model):
    t = Trainer(api, model, seed=14, prompt=2, response=3)
    rid = t.rollouts(1)[0]
    env = dict(os.environ, U=server.url, KEY=server.keys["a"], RID=rid)
    p = subprocess.run(["bash", os.path.join(HERE, "cookbook_runs.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stdout[-2000:] + p.stderr[-2000:]
