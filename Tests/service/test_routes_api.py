"""The routes API as a trainer uses it: requests + numpy, SGLang-format routes in, .npy out."""
import base64
import io
import zipfile

import numpy as np
import pytest
import requests

E = 64  # experts


def sglang_routes(T, L=4, K=8, seed=0, missing=()):
    rng = np.random.default_rng(seed)
    r = np.stack([np.stack([rng.choice(E, K, replace=False) for _ in range(L)]) for _ in range(T - 1)]).astype(np.int32)
    for t, l in missing:
        r[t, l] = -1
    return r


def post_rollout(api, T=20, routes=None, **extra):
    tokens = list(range(1, T + 1))
    body = {"model": "qwen3-moe-test", "policy_version": 3, "token_ids": tokens, "prompt_length": 5,
            "logprobs": [-0.25] * (T - 5), "num_experts": E, **extra}
    if routes is not None:
        body["routed_experts"] = {"dtype": "int32", "shape": list(routes.shape),
                                  "data": base64.b64encode(routes.astype("<i4").tobytes()).decode()}
    r = api.post(api.base + "/v1/rollouts", json=body)
    return r


def test_store_sglang_routes_and_read_back_as_npy(api):
    routes = sglang_routes(20, missing=[(3, 1)])
    r = post_rollout(api, routes=routes)
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert r.headers["Location"] == f"/v1/rollouts/{rid}"
    got = api.get(api.base + f"/v1/rollouts/{rid}/routes", headers={"Accept": "application/x-npy"})
    assert got.status_code == 200 and got.headers["Content-Type"] == "application/x-npy"
    arr = np.load(io.BytesIO(got.content))
    assert arr.dtype == np.int32 and arr.shape == routes.shape
    np.testing.assert_array_equal(arr, routes)


@pytest.mark.parametrize("fmt", ["json", "npy", "raw", "base64"])
@pytest.mark.parametrize("dtype", ["int64", "int32", "int16", "uint8"])
def test_every_format_and_dtype_round_trips_bit_exactly(api, fmt, dtype):
    routes = sglang_routes(12, seed=1, missing=[(2, 0)])
    rid = post_rollout(api, T=12, routes=routes).json()["id"]
    got = api.get(api.base + f"/v1/rollouts/{rid}/routes", params={"format": fmt, "dtype": dtype})
    assert got.status_code == 200, got.text
    np_dtype = {"int64": "<i8", "int32": "<i4", "int16": "<i2", "uint8": "u1"}[dtype]
    if fmt == "npy":
        arr = np.load(io.BytesIO(got.content))
    elif fmt == "raw":
        shape = tuple(int(x) for x in got.headers["X-R3-Shape"].split(","))
        arr = np.frombuffer(got.content, dtype=np_dtype).reshape(shape)
    elif fmt == "json":
        arr = np.array(got.json()["routed_experts"])
    else:
        o = got.json()
        arr = np.frombuffer(base64.b64decode(o["data"]), dtype=np_dtype).reshape(o["shape"])
    want = routes.copy()
    if dtype == "uint8" and fmt != "json":
        want = np.where(want < 0, 255, want)
    np.testing.assert_array_equal(arr.astype(np.int64), want.astype(np.int64))


def test_upload_routes_as_npy_and_octet_stream(api):
    rid = post_rollout(api, T=10).json()["id"]
    routes = sglang_routes(10, seed=2)
    buf = io.BytesIO()
    np.save(buf, routes.astype(np.int16))
    r = api.put(api.base + f"/v1/rollouts/{rid}/routes", params={"num_experts": E}, data=buf.getvalue(),
                headers={"Content-Type": "application/x-npy"})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(np.load(io.BytesIO(api.get(api.base + f"/v1/rollouts/{rid}/routes?format=npy").content)), routes)
    full = sglang_routes(11, seed=3)[:10]  # T rows are accepted too
    r = api.put(api.base + f"/v1/rollouts/{rid}/routes", params={"num_experts": E, "shape": "10,4,8", "dtype": "uint8"},
                data=full.astype(np.uint8).tobytes(), headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(np.load(io.BytesIO(api.get(api.base + f"/v1/rollouts/{rid}/routes?format=npy").content)), full)


def test_streamed_route_uploads_refuse_bad_bodies_and_keep_the_stored_routes(api):
    """PUT routes reads its body as it streams in: a raw body whose length does not match its shape is
    refused before it is read, a truncated or mislabelled .npy is a 400 naming the problem, a .npy whose
    header claims more values than it carries is a 400, and none of them touch the routes already stored."""
    rid = post_rollout(api, T=10, routes=sglang_routes(10, seed=5)).json()["id"]
    url = api.base + f"/v1/rollouts/{rid}/routes"
    stored = api.get(url, params={"format": "npy"}).content
    raw = sglang_routes(10, seed=6).astype(np.int32).tobytes()
    r = api.put(url, params={"num_experts": E, "shape": "9,4,8"}, data=raw[:-4], headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 400 and "needs 1152" in r.json()["detail"], r.text
    buf = io.BytesIO()
    np.save(buf, sglang_routes(10, seed=6).astype(np.int32))
    npy = buf.getvalue()
    for body, words in [(npy[:-3], "ends inside a int32 value"), (npy[:-4], "does not match the 287 values"),
                        (b"PK" + npy[2:], "magic"), (npy[:20], "truncated header"), (b"", "empty")]:
        r = api.put(url, params={"num_experts": E}, data=body, headers={"Content-Type": "application/x-npy"})
        assert r.status_code == 400 and words in r.json()["detail"], (words, r.text)
    assert api.get(url, params={"format": "npy"}).content == stored


def test_etag_and_row_ranges(api):
    routes = sglang_routes(16, seed=4)
    rid = post_rollout(api, T=16, routes=routes).json()["id"]
    url = api.base + f"/v1/rollouts/{rid}/routes"
    first = api.get(url, params={"format": "npy"})
    again = api.get(url, params={"format": "npy"}, headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.content == b""
    part = np.load(io.BytesIO(api.get(url, params={"format": "npy", "start": 4, "end": 9}).content))
    np.testing.assert_array_equal(part, routes[4:9])
    assert api.get(url, params={"start": 9, "end": 4}).status_code == 400


def test_batch_get_as_npz_and_json(api):
    ids, arrays = [], []
    for s in range(3):
        a = sglang_routes(8 + s, seed=10 + s)
        ids.append(post_rollout(api, T=8 + s, routes=a).json()["id"])
        arrays.append(a)
    r = api.post(api.base + "/v1/routes:batchGet", json={"ids": ids, "format": "npz"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/zip"
    npz = np.load(io.BytesIO(r.content))
    for i, a in zip(ids, arrays):
        np.testing.assert_array_equal(npz[i], a)
    assert zipfile.ZipFile(io.BytesIO(r.content)).testzip() is None
    r = api.post(api.base + "/v1/routes:batchGet", json={"ids": ids, "format": "json", "dtype": "int16", "start": 2, "end": 5})
    o = r.json()["routes"][ids[1]]
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(o["data"]), "<i2").reshape(o["shape"]), arrays[1][2:5])


def test_get_list_delete(api):
    rid = post_rollout(api, T=7, routes=sglang_routes(7), reward=1.5, group_id="g1", metadata={"task": "sum"}).json()["id"]
    o = api.get(api.base + f"/v1/rollouts/{rid}").json()
    assert o["reward"] == 1.5 and o["group_id"] == "g1" and o["metadata"] == {"task": "sum"}
    assert o["routes"]["shape"] == [6, 4, 8] and o["token_ids"] == list(range(1, 8))
    seen, cursor = [], None
    while True:
        page = api.get(api.base + "/v1/rollouts", params={"limit": 3, "model": "qwen3-moe-test", "policy_version": 3,
                                                          **({"cursor": cursor} if cursor else {})}).json()
        seen += [x["id"] for x in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert rid in seen and len(seen) == len(set(seen))
    assert api.delete(api.base + f"/v1/rollouts/{rid}").status_code == 204
    assert api.get(api.base + f"/v1/rollouts/{rid}").status_code == 404
    assert api.delete(api.base + f"/v1/rollouts/{rid}").status_code == 404


@pytest.mark.parametrize("body,status,words", [
    ({"routed_experts": [[[0, 1]]], "num_experts": 8}, 422, "rows"),                      # shape != token count
    ({"routed_experts": [[[0, 99]]] * 19, "num_experts": 64}, 422, "outside"),
    ({"routed_experts": [[[0, 0]]] * 19, "num_experts": 64}, 422, "twice"),
    ({"routed_experts": [[[0, -1]]] * 19, "num_experts": 64}, 422, "partly missing"),
    ({"routed_experts": [[[0, 1]], [[2]]], "num_experts": 64}, 422, "earlier rows have 2"),
    ({"routed_experts": "nrlre1:int32:19x1x2:!!!", "num_experts": 64}, 422, "base64"),
    ({"routed_experts": [[[0, 1]]] * 19}, 422, "num_experts"),
    ({"token_ids": []}, 422, "token_ids"),
    ({"prompt_length": 99}, 422, "prompt_length"),
    ({"logprobs": [0.1]}, 422, "logprobs"),
])
def test_bad_rollouts_are_rejected_and_nothing_is_stored(api, body, status, words):
    before = len(api.get(api.base + "/v1/rollouts", params={"model": "bad-input", "limit": 500}).json()["data"])
    doc = {"model": "bad-input", "token_ids": list(range(20)), "prompt_length": 5, **body}
    r = api.post(api.base + "/v1/rollouts", json=doc)
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/problem+json" and words in r.json()["detail"]
    after = len(api.get(api.base + "/v1/rollouts", params={"model": "bad-input", "limit": 500}).json()["data"])
    assert after == before


def test_auth_and_project_isolation(api, server):
    rid = post_rollout(api, routes=sglang_routes(20)).json()["id"]
    assert requests.get(server.url + f"/v1/rollouts/{rid}").status_code == 401
    assert requests.get(server.url + f"/v1/rollouts/{rid}", headers={"Authorization": "Bearer r3_nope"}).status_code == 401
    other = {"Authorization": "Bearer " + server.keys["b"]}
    assert requests.get(server.url + f"/v1/rollouts/{rid}", headers=other).status_code == 404
    assert requests.get(server.url + f"/v1/rollouts/{rid}/routes", headers=other).status_code == 404
    assert requests.delete(server.url + f"/v1/rollouts/{rid}", headers=other).status_code == 404
    assert rid not in [x["id"] for x in requests.get(server.url + "/v1/rollouts", headers=other).json()["data"]]


def test_media_types_and_sizes(api, server):
    assert api.post(api.base + "/v1/rollouts", data="x", headers={"Content-Type": "text/plain"}).status_code == 415
    assert api.post(api.base + "/v1/rollouts", data="{}", headers={"Content-Type": "application/jsonx"}).status_code == 415
    assert api.post(api.base + "/v1/rollouts", data="{", headers={"Content-Type": "application/json"}).status_code == 400
    big = b"\x00" * (64 * 1024 * 1024 + 1)   # a buffered upload past R3_MAX_BODY_BYTES (64 MiB here)
    r = api.put(api.base + "/v1/rollouts/00000000-0000-0000-0000-000000000000/routes?num_experts=8", data=big,
                headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 413
    assert api.get(api.base + "/v1/nothing").status_code == 404
    assert api.patch(api.base + "/v1/rollouts").status_code == 405


def test_metrics_and_health(server):
    assert requests.get(server.url + "/livez").json() == {"status": "ok"}
    m = requests.get(server.url + "/metrics").text
    assert 'r3_http_requests_total{route="/v1/rollouts",method="POST",status="201"}' in m
    assert "r3_http_request_duration_seconds_bucket" in m and "r3_db_pool_size" in m and "r3_routes_stored_bytes" in m


def test_a_large_fetch_is_one_chunk_and_reads_the_same_everywhere(api, server):
    """Routes of 1 MiB or more go to an HTTP/1.1 GET as one chunk of a chunked body, because Python
    requests reads that through urllib3's chunked path, a quarter faster than its Content-Length path for
    the same bytes (README, "Ingest and fetch: PostgreSQL no longer waits on us"). requests' .content and raw.read(), curl and
    an HTTP/1.0 client read the same ids; HEAD and HTTP/1.0 declare the length."""
    import socket
    import subprocess
    T, L = 4097, 32   # 4096 rows x 32 layers x top-8 = 1 MiB as uint8
    rng = np.random.default_rng(7)
    routes = np.argsort(rng.random((T - 1, L, E)), axis=-1)[:, :, :8].astype(np.int32)
    rid = post_rollout(api, T=T, routes=routes).json()["id"]
    url = api.base + f"/v1/rollouts/{rid}/routes"
    q = {"format": "npy", "dtype": "uint8"}
    got = api.get(url, params=q)
    assert got.status_code == 200 and got.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in got.headers
    np.testing.assert_array_equal(np.load(io.BytesIO(got.content)), routes)
    raw = api.get(url, params=q, stream=True)
    assert raw.raw.read() == got.content
    head = api.head(url, params=q)
    assert int(head.headers["Content-Length"]) == len(got.content) and "Transfer-Encoding" not in head.headers
    curl = subprocess.run(["curl", "-sS", "--fail", "-H", f"Authorization: {api.headers['Authorization']}",
                           url + "?format=npy&dtype=uint8"], capture_output=True, check=True)
    assert curl.stdout == got.content
    # HTTP/1.0 cannot take a chunked body: the length is declared and the connection closes after it
    host, port = api.base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"GET /v1/rollouts/{rid}/routes?format=npy&dtype=uint8 HTTP/1.0\r\n"
                  f"Authorization: {api.headers['Authorization']}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(1 << 20):
            data += chunk
    head10, _, body10 = data.partition(b"\r\n\r\n")
    assert b"\r\nContent-Length: %d\r\n" % len(got.content) in head10 and b"Transfer-Encoding" not in head10
    assert body10 == got.content
    # a batch of 1 MiB or more, and Megatron's archive, alike
    batch = api.post(api.base + "/v1/routes:batchGet", json={"ids": [rid], "dtype": "uint8"})
    assert batch.status_code == 200 and batch.headers.get("Transfer-Encoding") == "chunked", batch.headers
    with zipfile.ZipFile(io.BytesIO(batch.content)) as z:
        np.testing.assert_array_equal(np.load(io.BytesIO(z.read(f"{rid}.npy"))), routes)
    mega = api.get(url, params={"format": "megatron"})
    assert mega.status_code == 200 and mega.headers.get("Transfer-Encoding") == "chunked"
    with zipfile.ZipFile(io.BytesIO(mega.content)) as z:
        assert len(z.namelist()) == L
    # small routes keep Content-Length
    small = api.get(api.base + f"/v1/rollouts/{post_rollout(api, routes=sglang_routes(20)).json()['id']}/routes", params=q)
    assert int(small.headers["Content-Length"]) == len(small.content)
