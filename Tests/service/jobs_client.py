"""Helpers the job tests share: a model factory and polling for job states."""
import time

import requests

TINY = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "num_experts": 16, "num_experts_per_tok": 4,
        "norm_topk_prob": True}
REQUIRED_METRICS = ["k3_kl", "extreme_frac_tau2", "extreme_frac_tau5", "router_disagreement", "token_disagreement",
                    "routers_differing_per_token", "replay_live_agreement", "replay_fallback_tokens", "grad_norm", "entropy",
                    "reward_mean", "response_len_mean", "clip_frac", "rollout_seconds", "train_seconds", "step_seconds"]


def session(url, key):
    s = requests.Session()
    s.headers["Authorization"] = "Bearer " + key
    s.base = url
    return s


def create_model(api, name, config=None, seed=1, **extra):
    r = api.post(api.base + "/v1/models", json={"name": name, "config": config or TINY, "seed": seed, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def download_checkpoint(api, model_id, version, into):
    """A policy version's checkpoint from the service into a directory, each file checked against its SHA-256."""
    import hashlib
    import os
    man = api.get(api.base + f"/v1/models/{model_id}/versions/{version}/checkpoint")
    assert man.status_code == 200, man.text
    os.makedirs(into, exist_ok=True)
    for f in man.json()["files"]:
        r = api.get(api.base + f["url"])
        assert r.status_code == 200 and int(r.headers["Content-Length"]) == f["size"] == len(r.content), f
        assert hashlib.sha256(r.content).hexdigest() == f["sha256"] and r.headers["ETag"] == f'"{f["sha256"]}"'
        with open(os.path.join(into, f["name"]), "wb") as out:
            out.write(r.content)
    return into


def submit(api, body, **headers):
    r = api.post(api.base + "/v1/jobs", json=body, headers=headers)
    assert r.status_code == 202, r.text
    assert r.headers["Location"] == "/v1/jobs/" + r.json()["id"]
    return r.json()


def job(api, jid):
    r = api.get(api.base + "/v1/jobs/" + jid)
    assert r.status_code == 200, r.text
    return r.json()


def wait(api, jid, states=("succeeded", "failed", "cancelled", "collapsed", "paused"), timeout=300, until=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        j = job(api, jid)
        if j["state"] in states or (until and until(j)):
            return j
        time.sleep(0.1)
    raise AssertionError(f"job {jid} still {j['state']} after {timeout}s: {j}")


def events(api, jid):
    """Every event of a finished job, read from its SSE stream."""
    r = api.get(api.base + f"/v1/jobs/{jid}/events", stream=True, timeout=60)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    out, cur = [], {}
    for line in r.iter_lines(decode_unicode=True):
        if line == "":
            if "data" in cur:
                out.append(cur)
            cur = {}
        elif line.startswith(":"):
            continue
        else:
            k, _, v = line.partition(": ")
            cur[k] = v
    return out


def all_rollouts(api, **query):
    out, cursor = [], None
    while True:
        q = dict(query, limit=500)
        if cursor:
            q["cursor"] = cursor
        r = api.get(api.base + "/v1/rollouts", params=q)
        assert r.status_code == 200, r.text
        out += r.json()["data"]
        cursor = r.json()["next_cursor"]
        if not cursor:
            return out
