"""Schemathesis hooks for `make test`: the rules of this API that OpenAPI cannot state.

A JSON Schema describes each field alone; some rules relate fields to each other or to stored data:
logprobs has one entry per response token, routes have T - 1 or T rows of the model's layers, a job's
fields depend on its type and on the server's limits, a webhook URL must resolve. For *positive* cases
(data that claims to be valid) this hook rewrites those relations so that the case is valid in full, and
the positive-data check then demands a 2xx (or 404 / 409 for unknown ids and conflicts) with no
status exemptions. Negative cases are left alone. Everything else the generator chose is kept.

The repairs run in `before_call`, on the case as it is about to be sent (ids from links resolved), and
schemathesis re-validates the edited case against the schema before judging the response. The server
under test is named by R3_ST_URL and R3_ST_KEY (lookups of stored rollouts and models)."""
import base64
import os
import uuid

import requests
import schemathesis

URL = os.environ.get("R3_ST_URL", "")
KEY = os.environ.get("R3_ST_KEY", "")
API = requests.Session()
API.headers["Authorization"] = "Bearer " + KEY


def lookup(path):
    try:
        r = API.get(URL + path, timeout=10)
        return r.json() if r.status_code == 200 else None
    except requests.RequestException:
        return None


def num(v, default):
    """Generated integers may arrive as integral floats (293.0); absent or null gives the default."""
    try:
        return int(v) if v is not None else default
    except (TypeError, ValueError):
        return default


def routes_for(T, experts=1, top_k=1, hidden=1, moe=None):
    """Valid nested-list routes for T tokens: T - 1 rows, distinct experts 0..K-1 on MoE layers, 0 on dense."""
    moe = list(range(hidden)) if moe is None else moe
    row = [[j for j in range(top_k)] if l in moe else [0] * top_k for l in range(hidden)]
    return [row] * max(T - 1, 1)


def b64_int32(values):
    return base64.b64encode(b"".join(int(v).to_bytes(4, "little", signed=True) for v in values)).decode()


def fix_logprobs(body, n, key="logprobs", mask=None):
    lp = body.get(key)
    if isinstance(lp, list):
        lp = (lp + [-0.5] * n)[:n]
        body[key] = [(-0.5 if (x is None and (mask is None or mask[i] == 1)) else x) for i, x in enumerate(lp)]


def fix_layout(body, T):
    """A rollout body's routes: consistent with explicit layout fields and T tokens (the model name gets a
    prefix so it never names a registered model by chance)."""
    body["model"] = ("st-" + str(body.get("model", "m")))[:200]
    if body.get("routed_experts") is None:
        return
    experts, top_k, hidden, moe = layout_fields(body)
    body["routed_experts"] = routes_for(T, experts, top_k, hidden, moe)


def layout_fields(body):
    """Explicit layout fields made consistent (top-k within the experts, MoE layers within the layers)."""
    experts = num(body.get("num_experts"), 8)
    top_k = min(num(body.get("top_k"), 1), experts, 8)     # small routes: the case stays quick to send
    hidden = min(num(body.get("num_hidden_layers"), 1), 8)
    moe = sorted({num(l, 0) for l in (body.get("moe_layers") or []) if num(l, 0) < hidden}) or list(range(hidden))
    body.update(num_experts=experts, top_k=top_k, num_hidden_layers=hidden, moe_layers=moe)
    return experts, top_k, hidden, moe


def new_rollout(body):
    T = len(body["token_ids"])
    body["prompt_length"] = min(num(body["prompt_length"], 0), T)
    n = T - body["prompt_length"]
    mask = body.get("loss_mask")
    if isinstance(mask, list):
        body["loss_mask"] = mask = (mask + [1] * n)[:n]
    fix_logprobs(body, n, mask=mask if isinstance(mask, list) else None)
    fix_layout(body, T)


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    """POST /v1/rollouts:batchCreate's body: bytes as they are (the repair writes the lines), anything else as text."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return (value if isinstance(value, str) else str(value)).encode()


def batch_create(case):
    """NDJSON has no schema to generate from: a positive case is two rollouts repaired as POST /v1/rollouts's.
    A body that is not a string at all is a negative case whatever its mode says: left alone (then a 4xx)."""
    import json
    if not isinstance(case.body, (str, bytes, bytearray)):
        return
    lines = []
    for i in range(2):
        body = {"model": "st-batch", "token_ids": [1, 2, 3, 4][:3 + i], "prompt_length": 1, "reward": float(i)}
        new_rollout(body)
        lines.append(json.dumps(body))
    case.body = "\n".join(lines) + "\n"


def sglang_import(body):
    body["model"] = ("st-" + str(body.get("model", "m")))[:200]
    body.pop("append_to", None)
    body["routed_experts_start_len"] = 0
    items = body["response"] if isinstance(body["response"], list) else [body["response"]]
    prompt = [1, 2, 3]
    body["input_ids"] = prompt
    experts, top_k, hidden, moe = layout_fields(body)
    for item in items:
        item.pop("prompt_token_ids", None)
        out = item["output_ids"]
        T = len(prompt) + len(out)
        meta = item.setdefault("meta_info", {})
        flat = [v for row in routes_for(T, experts, top_k, hidden, moe) for layer in row for v in layer]
        meta["routed_experts"] = b64_int32(flat)
        meta.pop("prompt_tokens", None); meta.pop("completion_tokens", None)
        if isinstance(meta.get("output_token_logprobs"), list):
            meta["output_token_logprobs"] = [[-0.5, t, None] for t in out]
        if isinstance(meta.get("weight_version"), (int, float)) and not isinstance(meta.get("weight_version"), bool):
            meta["weight_version"] = str(num(meta["weight_version"], 0))
    n = len(items)
    if isinstance(body.get("reward"), list):
        body["reward"] = (body["reward"] + [None] * n)[:n]
    if isinstance(body.get("group_id"), list):
        body["group_id"] = (body["group_id"] + ["g"] * n)[:n] or None
        if body["group_id"] is None:
            body.pop("group_id")


def vllm_import(body):
    body["model"] = ("st-" + str(body.get("model", "m")))[:200]
    body.pop("prompt_token_ids", None)
    experts, top_k, hidden, moe = layout_fields(body)
    responses = body["response"] if isinstance(body["response"], list) else [body["response"]]
    n = 0
    for resp in responses:
        resp.pop("prompt_routed_experts", None)
        resp["prompt_token_ids"] = [1, 2, 3]
        for c in resp["choices"]:
            n += 1
            out = c.get("token_ids") or [5]
            c["token_ids"] = out
            c.pop("prompt_token_ids", None)
            c["logprobs"] = {"token_logprobs": [-0.5] * len(out)} if c.get("logprobs") is not None else None
            c["routed_experts"] = routes_for(3 + len(out), experts, top_k, hidden, moe)
    if isinstance(body.get("reward"), list):
        body["reward"] = (body["reward"] + [None] * n)[:n]
    if isinstance(body.get("group_id"), list):
        body["group_id"] = (body["group_id"] + ["g"] * n)[:n]


def turn(case):
    """A turn of a stored rollout: its tokens, then more; routes from its stored row count on."""
    ro = lookup(f"/v1/rollouts/{case.path_parameters.get('id')}")
    if ro is None:
        return
    body = case.body
    old = ro["token_ids"]
    new = body.get("token_ids") or [1]
    body["token_ids"] = old + new
    T = len(body["token_ids"])
    body["response_start"] = min(max(num(body.get("response_start"), len(old)), len(old)), T)
    n = T - body["response_start"]
    if ro["logprobs"] is None:
        body.pop("logprobs", None)
    else:
        body["logprobs"] = ([x for x in (body.get("logprobs") or []) if x is not None] + [-0.5] * n)[:n]
    r = ro["routes"]
    if r is None:
        body.pop("routed_experts", None); body.pop("routed_experts_start_len", None)
    else:
        known = min(r["shape"][0], len(old) - 1)   # rows for tokens that went into the model (not a T-th placeholder)
        start = max(0, min(num(body.get("routed_experts_start_len"), known), known))
        body["routed_experts_start_len"] = start
        K, moe = r["shape"][2], r["moe_layers"]
        rows = routes_for(T, r["num_experts"], K, len(moe))[:T - 1 - start]
        body["routed_experts"] = {"dtype": "int32", "shape": [len(rows), len(moe), K],
                                  "data": b64_int32([v for row in rows for layer in row for v in layer])}


def put_routes(case):
    ro = lookup(f"/v1/rollouts/{case.path_parameters.get('id')}")
    if ro is None:
        return
    T = len(ro["token_ids"])
    q = case.query if isinstance(case.query, dict) else {}
    registered = lookup(f"/v1/models/{ro['model']}") if len(ro["model"]) == 36 else None
    if registered and registered.get("route_layout"):
        lay = registered["route_layout"]
        experts, K, moe = lay["num_experts"], lay["top_k"], lay["moe_layers"]
        for k in ("num_experts", "num_hidden_layers", "moe_layers"):
            q.pop(k, None)
    else:
        experts, K, moe = num(q.get("num_experts"), 8), 1, [0]
        q["num_experts"] = experts
        q.pop("num_hidden_layers", None); q.pop("moe_layers", None)
    rows = routes_for(T, experts, K, len(moe))
    flat = [v for row in rows for layer in row for v in layer]
    q["shape"] = f"{len(rows)},{len(moe)},{K}"
    q["dtype"] = "int32"
    case.query = q
    raw = b"".join(int(v).to_bytes(4, "little", signed=True) for v in flat)
    if case.media_type == "application/x-npy":
        import io
        import numpy as np
        buf = io.BytesIO()
        np.save(buf, np.array(flat, dtype=np.int32).reshape(len(rows), len(moe), K))
        case.body = buf.getvalue()
    else:
        case.body = raw


def get_routes(case):
    q = case.query if isinstance(case.query, dict) else {}
    ro = lookup(f"/v1/rollouts/{case.path_parameters.get('id')}")
    fmt = q.get("format")
    if fmt != "megatron":
        q.pop("container", None)
    if fmt in ("nemo", "slime", "megatron"):
        q.pop("start", None); q.pop("end", None)
    if fmt == "nemo" and q.get("dtype") not in (None, "int8", "int16", "int32"):
        q.pop("dtype")
    if fmt == "slime":
        q.pop("dtype", None); q.pop("layout", None)
    if fmt == "megatron":
        q.pop("dtype", None); q.pop("layout", None)
    if ro and ro["routes"]:
        rows, E = ro["routes"]["shape"][0], ro["routes"]["num_experts"]
        s, e = q.get("start"), q.get("end")
        if s is not None or e is not None:
            s = min(num(s, 0), rows); e = min(num(e, rows), rows)
            q["start"], q["end"] = min(s, e), max(s, e)
        fits = {"int8": E <= 128, "uint8": E <= 255, "int16": E <= 32768}
        if not fits.get(q.get("dtype"), True):
            q.pop("dtype")
        if q.get("pad") == -1 and q.get("dtype") == "uint8":
            q.pop("dtype")
    case.query = q


def batch_get(body):
    fmt = body.get("format", "npz")
    s, e = body.get("start"), body.get("end")
    if s is not None and e is not None and num(s, 0) > num(e, 0):
        body["start"], body["end"] = e, s
    if fmt in ("slime", "megatron", "verl"):
        body.pop("start", None); body.pop("end", None); body.pop("dtype", None)
        if fmt != "verl" or body.get("layout") == "moe_only":
            body.pop("layout", None)
    if fmt == "verl":
        body.setdefault("prompt_length", 4096); body.setdefault("response_length", 4096)
    else:
        body.pop("prompt_length", None); body.pop("response_length", None); body.pop("truncate", None)
    body["ids"] = list(dict.fromkeys(body["ids"]))


TINY = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "num_experts": 8, "num_experts_per_tok": 2}
FIXTURE = os.path.join(os.environ.get("R3_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "shared")), "fixtures", "qwen3moe-tiny-a")


def new_model(body):
    if "checkpoint_path" in body:
        body["checkpoint_path"] = os.path.abspath(FIXTURE)
    if "config" in body:
        body["config"] = dict(TINY)   # an engine config: every field related to the others
    if "hf_config" in body:
        body["hf_config"] = {"num_hidden_layers": 2, "num_experts": 8, "num_experts_per_tok": 2}


def new_job(body):
    m = (lookup("/v1/models") or {"data": []})["data"]
    trained = [x for x in m if x["has_weights"]]
    if not trained:
        return
    body["model"] = trained[0]["id"]
    body.pop("policy_version", None)
    kind = body["type"]
    body["steps"] = min(num(body.get("steps"), 1), 3)
    if kind == "rollout":
        for k in ("task", "difficulty", "rollout_ids", "batch_size", "learning_rate", "algorithm", "replay", "tis", "tis_cap",
                  "mini_steps", "max_grad_norm", "checkpoint_every", "eval_every", "on_collapse", "collapse", "steps", "aux_loss_coef"):
            body.pop(k, None)
        body["prompts"] = [{"token_ids": [1, 2, 3]}]
        body["n"] = min(num(body.get("n"), 1), 4)
        body["max_tokens"] = min(num(body.get("max_tokens"), 4), 16)
        body["stop_token_ids"] = [num(t, 0) % 128 for t in body.get("stop_token_ids", [])][:64]
    else:
        for k in ("prompts", "top_p", "top_k", "stop_token_ids", "rollout_ids"):
            body.pop(k, None)
        body["task"] = body.get("task") or "sort"
        body["difficulty"] = 2
        body["max_tokens"] = min(num(body.get("max_tokens"), 4), 16)
        if kind == "sft":
            body["batch_size"] = min(num(body.get("batch_size"), 4), 16)
            for k in ("n", "algorithm", "replay", "tis", "tis_cap", "mini_steps", "on_collapse", "collapse"):
                body.pop(k, None)
        else:
            body["n"] = max(2, min(num(body.get("n"), 2), 4))
            body["batch_size"] = max(1, min(num(body.get("batch_size"), 2), 16 // body["n"]))
            body.pop("eval_every", None)


def webhook(body):
    if body.get("url") is not None:
        body["url"] = "http://127.0.0.1:9/r3-hook"   # resolves; the test server allows loopback receivers


def new_run(body):
    """A run's model must be registered here (or absent)."""
    if "model" in body:
        m = (lookup("/v1/models") or {"data": []})["data"]
        if m:
            body["model"] = m[0]["id"]
        else:
            body.pop("model")


def layout_key(ro):
    """Rollouts whose routes share this key come from one model's layout (None: no stored routes)."""
    r = ro.get("routes")
    if not r:
        return None
    return (tuple(r.get("moe_layers") or []), r.get("num_experts"), r.get("num_hidden_layers"), tuple((r.get("shape") or [])[1:]))


def stored_rollouts(n):
    """Up to n stored rollouts of ONE route layout. A step report (and routes:stats) refuses rollouts of two
    layouts with a 422 ("a step's rollouts come from one model"); the newest rollouts mix layouts whenever
    a rollout job of the seeded model and a generated POST /v1/rollouts have both just stored theirs, which
    depends on timing. Taking the newest n regardless made a positive case invalid about once in eight
    runs (ST202 in the stateful phase)."""
    data = (lookup("/v1/rollouts?limit=50") or {"data": []})["data"]
    groups = {}
    for ro in data:
        groups.setdefault(layout_key(ro), []).append(ro)
    best = max(groups.values(), key=len, default=[])
    return best[:max(1, min(n, 50))]


def run_step(case):
    """Each listed rollout is a distinct stored one with one log-prob per response token; training routes
    are left out (their layout depends on the stored routes)."""
    body = case.body
    items = body.get("rollouts") or []
    stored = stored_rollouts(len(items))
    fixed = []
    for item, ro in zip(items, stored):
        n = len(ro["token_ids"]) - ro["prompt_length"]
        item["id"] = ro["id"]
        item.pop("routes", None)
        if "logprobs" in item:
            item["logprobs"] = [-0.5] * n if isinstance(item["logprobs"], list) else base64.b64encode(b"\x00\x00\x00\xbf" * n).decode()
        fixed.append(item)
    if "rollouts" in body:
        body["rollouts"] = fixed


def route_stats(body):
    stored = stored_rollouts(len(body.get("rollout_ids") or [1]))
    if stored:
        body["rollout_ids"] = [r["id"] for r in stored[:max(1, len(body.get("rollout_ids") or []))]]


REPAIRS = {
    ("POST", "/v1/runs"): lambda c: new_run(c.body),
    ("POST", "/v1/runs/{id}/steps"): run_step,
    ("POST", "/v1/routes:stats"): lambda c: route_stats(c.body),
    ("POST", "/v1/rollouts"): lambda c: new_rollout(c.body),
    ("POST", "/v1/rollouts:batchCreate"): batch_create,
    ("POST", "/v1/rollouts:sglang"): lambda c: sglang_import(c.body),
    ("POST", "/v1/rollouts:vllm"): lambda c: vllm_import(c.body),
    ("POST", "/v1/rollouts/{id}/turns"): turn,
    ("PUT", "/v1/rollouts/{id}/routes"): put_routes,
    ("GET", "/v1/rollouts/{id}/routes"): get_routes,
    ("POST", "/v1/routes:batchGet"): lambda c: batch_get(c.body),
    ("POST", "/v1/models"): lambda c: new_model(c.body),
    ("POST", "/v1/jobs"): lambda c: new_job(c.body),
    ("POST", "/v1/webhooks"): lambda c: webhook(c.body),
    ("PATCH", "/v1/webhooks/{id}"): lambda c: webhook(c.body),
}


def idempotency(case):
    """An Idempotency-Key is a client's promise that the request is new: a fresh one per positive case."""
    headers = case.headers
    if headers is None:
        return
    for k in list(headers.keys()):
        if k.lower() == "idempotency-key":
            headers[k] = "st-" + uuid.uuid4().hex


@schemathesis.hook
def before_call(context, case, kwargs):
    if (case.operation.method.upper(), case.operation.path) == ("GET", "/v1/runs/{id}/events"):
        # an active run's stream never ends by itself: every case (positive or not) asks for the events so far
        q = case.query if isinstance(case.query, dict) else {}
        q["follow"] = "false"
        case.query = q
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return
    key = (case.operation.method.upper(), case.operation.path)
    repair = REPAIRS.get(key)
    try:
        if key == ("POST", "/v1/jobs"):
            idempotency(case)
        if repair is not None:
            repair(case)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError):
        pass   # a shape the repair does not know: sent as generated, and judged as generated
