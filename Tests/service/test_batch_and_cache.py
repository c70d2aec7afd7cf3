"""POST /v1/rollouts:batchCreate (NDJSON, one transaction through binary COPY) and the route cache (a fetch
soon after ingest served from memory, never a version the database no longer holds)."""
import base64
import io
import json
import uuid

import numpy as np
import requests

from test_scaleout import SharedDatabase  # noqa: F401  (the fixture below builds on it)
import pytest

E, L, K = 16, 4, 8


def routes(T, seed, experts=E, layers=L):
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((T - 1, layers, experts)), axis=2)[:, :, :K].astype(np.int32)


def rollout(model, T, seed, **extra):
    r = routes(T, seed)
    body = {"model": model, "token_ids": [int(x) for x in np.random.default_rng(seed).integers(0, 1000, T)],
            "prompt_length": 3, "num_experts": E,
            "routed_experts": {"dtype": "int32", "shape": list(r.shape), "data": base64.b64encode(r.tobytes()).decode()}}
    body.update(extra)
    return body, r


def ndjson(objs):
    return ("\n".join(json.dumps(o) for o in objs) + "\n").encode()


def listed(api, model):
    return [x["id"] for x in api.get(api.base + "/v1/rollouts", params={"model": model, "limit": 100}).json()["data"]]


def test_batch_create_stores_each_rollout_as_a_single_post_does(api):
    model = "batch-" + uuid.uuid4().hex[:8]
    lines, want = [], []
    for i in range(5):
        extra = {"reward": float(i), "metadata": {"i": i}, "group_id": "g"}
        if i == 1:
            extra["logprobs"] = [-0.5] * 9
            extra["loss_mask"] = [1, 0, 1, 1, 1, 1, 1, 1, 1]
        body, r = rollout(model, 12, seed=i, **extra)
        if i == 3:
            del body["routed_experts"], body["num_experts"]   # a rollout without routes in the same batch
            r = None
        lines.append(body)
        want.append(r)
    res = api.post(api.base + "/v1/rollouts:batchCreate", data=ndjson(lines), headers={"Content-Type": "application/x-ndjson"})
    assert res.status_code == 201, res.text
    out = res.json()
    assert out["count"] == 5 and out["with_routes"] == 4 and len(set(out["ids"])) == 5
    assert out["stored_route_bytes"] == 4 * 11 * L * K   # one byte per id
    for i, rid in enumerate(out["ids"]):
        got = api.get(api.base + f"/v1/rollouts/{rid}").json()
        assert got["token_ids"] == lines[i]["token_ids"] and got["reward"] == float(i) and got["metadata"] == {"i": i}
        assert got["group_id"] == "g" and got["prompt_length"] == 3
        if i == 1:
            assert got["logprobs"] == [-0.5] * 9 and got["loss_mask"] == [1, 0, 1, 1, 1, 1, 1, 1, 1]
        fetched = api.get(api.base + f"/v1/rollouts/{rid}/routes", params={"format": "npy"})
        if want[i] is None:
            assert fetched.status_code == 404, fetched.text
        else:
            np.testing.assert_array_equal(np.load(io.BytesIO(fetched.content)), want[i])
    assert sorted(listed(api, model)) == sorted(out["ids"])
    # the batch's rollouts answer route stats like any other: their expert load was counted by the COPY's writer
    st = api.post(api.base + "/v1/routes:stats", json={"rollout_ids": [x for i, x in enumerate(out["ids"]) if i != 3]})
    assert st.status_code == 200, st.text
    print(json.dumps(st.json())[:400])


def test_a_bad_line_rolls_back_the_whole_batch_and_is_named(api):
    model = "batch-bad-" + uuid.uuid4().hex[:8]
    lines = [rollout(model, 10, seed=s)[0] for s in range(4)]
    bad = routes(10, 9)
    bad[4, 2, 1] = bad[4, 2, 0]   # expert twice in one row
    lines[3]["routed_experts"]["data"] = base64.b64encode(bad.tobytes()).decode()
    r = api.post(api.base + "/v1/rollouts:batchCreate", data=ndjson(lines), headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 422 and r.headers["Content-Type"] == "application/problem+json", r.text
    assert "[3]" in r.json()["detail"] and "appears twice at [4, 2]" in r.json()["detail"], r.text
    assert listed(api, model) == []   # nothing of the three good lines stayed
    # a line that is not an object, an unknown field, a syntax error mid-way, an empty body
    for body, words in [(b'[1, 2]\n', "[0]: each line must be a JSON object"),
                        (ndjson([lines[0], dict(lines[1], nope=1)]), "unknown field [1].nope"),
                        (ndjson(lines[:2]) + b'{"model": ', "[2]"),
                        (b"\n\n", "no rollouts")]:
        r = api.post(api.base + "/v1/rollouts:batchCreate", data=body, headers={"Content-Type": "application/x-ndjson"})
        assert r.status_code in (400, 422) and words in r.json()["detail"], (words, r.text)
    assert listed(api, model) == []


@pytest.fixture
def two_machines(tmp_path):
    db = SharedDatabase(tmp_path)
    a = db.machine(tmp_path, "a")
    b = db.machine(tmp_path, "b")
    yield db, a, b
    for m in (a, b):
        m.stop()
    db.stop()


def test_a_cached_fetch_never_serves_routes_another_process_replaced_or_deleted(two_machines):
    """Machine a ingests and fetches (its cache holds the routes); machine b, on the same database, replaces
    them, then deletes the rollout. a must serve b's routes, then 404: its cache checks the row's version."""
    db, a, b = two_machines
    h = {"Authorization": f"Bearer {db.key}"}
    T, layers, experts = 1025, 32, 64   # 1,024 × 32 × 8 = 256 KiB stored: large enough to be cached
    first = routes(T, 1, experts, layers)
    body = {"model": "cache", "token_ids": list(range(T)), "prompt_length": 1, "num_experts": experts,
            "routed_experts": {"dtype": "int32", "shape": list(first.shape), "data": base64.b64encode(first.tobytes()).decode()}}
    rid = requests.post(a.url + "/v1/rollouts", json=body, headers=h).json()["id"]
    url = f"/v1/rollouts/{rid}/routes?format=npy"
    for _ in range(2):
        np.testing.assert_array_equal(np.load(io.BytesIO(requests.get(a.url + url, headers=h).content)), first)
    hits = [float(l.split()[-1]) for l in requests.get(a.url + "/metrics").text.splitlines() if l.startswith("r3_route_cache_hits_total")]
    assert hits and hits[0] >= 1, hits   # the second fetch at least came from memory
    second = routes(T, 2, experts, layers)
    buf = io.BytesIO()
    np.save(buf, second)
    put = requests.put(b.url + f"/v1/rollouts/{rid}/routes?num_experts={experts}", data=buf.getvalue(),
                       headers=dict(h, **{"Content-Type": "application/x-npy"}))
    assert put.status_code == 200, put.text
    np.testing.assert_array_equal(np.load(io.BytesIO(requests.get(a.url + url, headers=h).content)), second)
    # a's own replace that fails leaves b's routes, and a keeps serving them
    bad = second.copy()
    bad[0, 0, 1] = bad[0, 0, 0]
    buf = io.BytesIO()
    np.save(buf, bad)
    assert requests.put(a.url + f"/v1/rollouts/{rid}/routes?num_experts={experts}", data=buf.getvalue(),
                        headers=dict(h, **{"Content-Type": "application/x-npy"})).status_code == 422
    np.testing.assert_array_equal(np.load(io.BytesIO(requests.get(a.url + url, headers=h).content)), second)
    assert requests.delete(b.url + f"/v1/rollouts/{rid}", headers=h).status_code in (200, 204)
    assert requests.get(a.url + url, headers=h).status_code in (404, 410)
