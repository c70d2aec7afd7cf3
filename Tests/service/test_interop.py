"""Zero-glue interop: SGLang's and vLLM's own output goes in unchanged, and slime, verl, NeMo-RL and Megatron
read what comes out with their own decoders (Tests/service/peers: each re-implemented from its source,
cited there by file and line). Three route layouts: Qwen3-MoE with mlp_only_layers, GLM-4.5 (first layer
dense, 160 experts, top-8) and DeepSeek-V3 (three dense layers, 256 experts, top-8); and a two-turn
conversation built with SGLang's routed_experts_start_len. Every comparison is bit-exact."""
import base64
import io
import uuid

import numpy as np
import pytest
import requests
from safetensors.numpy import load as load_safetensors

from peers import megatron, nemo, sglang, slime, verl, vllm

LAYOUTS = {
    # Qwen3MoeDecoderLayer: MoE iff layer not in mlp_only_layers and (layer + 1) % decoder_sparse_step == 0
    "qwen3-mlp-only": ({"model_type": "qwen3_moe", "num_hidden_layers": 6, "num_experts": 128, "num_experts_per_tok": 8,
                        "decoder_sparse_step": 1, "mlp_only_layers": [0, 3], "hidden_size": 64}, [1, 2, 4, 5]),
    # Glm4MoeDecoderLayer: MoE iff layer >= first_k_dense_replace
    "glm45": ({"model_type": "glm4_moe", "num_hidden_layers": 5, "n_routed_experts": 160, "num_experts_per_tok": 8,
               "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1, "n_shared_experts": 1}, [1, 2, 3, 4]),
    # DeepSeek-V3 (its modeling_deepseek.py): MoE iff layer >= first_k_dense_replace and layer % moe_layer_freq == 0
    "deepseek-v3": ({"model_type": "deepseek_v3", "num_hidden_layers": 6, "n_routed_experts": 256, "num_experts_per_tok": 8,
                     "first_k_dense_replace": 3, "moe_layer_freq": 1, "n_group": 8, "topk_group": 4}, [3, 4, 5]),
}


def experts_of(cfg):
    return cfg.get("num_experts") or cfg.get("n_routed_experts")


@pytest.fixture(scope="module")
def models(server):
    api = requests.Session()
    api.headers["Authorization"] = "Bearer " + server.keys["a"]
    api.base = server.url
    out = {}
    for name, (cfg, moe) in LAYOUTS.items():
        r = api.post(api.base + "/v1/models", json={"name": f"{name}-{uuid.uuid4().hex[:6]}", "hf_config": cfg})
        assert r.status_code == 201, r.text
        m = r.json()
        assert m["route_layout"]["moe_layers"] == moe and m["has_weights"] is False
        out[name] = (m, cfg, moe)
    return out


def all_layer_routes(rng, T, cfg, moe):
    """What an engine records for T tokens: [T-1, num_hidden_layers, K], distinct experts per MoE row,
    dense layers 0 (SGLang's and vLLM's zero-initialised buffers)."""
    H, K, E = cfg["num_hidden_layers"], cfg["num_experts_per_tok"], experts_of(cfg)
    r = np.zeros((T - 1, H, K), dtype=np.int32)
    for t in range(T - 1):
        for l in moe:
            r[t, l] = rng.choice(E, K, replace=False)
    return r


def group(rng, cfg, moe, prompts=2, n=2, P=(7, 11), O=(5, 9)):
    """A GRPO group as SGLang returns it (prompt-major, n samples per prompt)."""
    samples = []
    for p in range(prompts):
        prompt = rng.integers(0, 1000, P[p % 2]).tolist()
        for _ in range(n):
            out = rng.integers(0, 1000, O[len(samples) % 2]).tolist()
            routes = all_layer_routes(rng, len(prompt) + len(out), cfg, moe)
            lps = (-rng.random(len(out))).astype(np.float32)
            samples.append((prompt, out, routes, lps))
    return samples


def fetch(api, rid, **params):
    r = api.get(api.base + f"/v1/rollouts/{rid}/routes", params=params)
    assert r.status_code == 200, r.text
    return r


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_sglang_group_reaches_slime_verl_nemo_and_megatron_bit_exactly(api, models, layout):
    m, cfg, moe = models[layout]
    H, K, E = cfg["num_hidden_layers"], cfg["num_experts_per_tok"], experts_of(cfg)
    rng = np.random.default_rng(len(layout))
    samples = group(rng, cfg, moe)
    response = [sglang.generate_response(p, o, r, lps, rid=f"r{i}", weight_version="12") for i, (p, o, r, lps) in enumerate(samples)]
    prompts = [samples[0][0], samples[2][0]]
    r = api.post(api.base + "/v1/rollouts:sglang", json={"model": m["name"], "input_ids": prompts, "response": response,
                                                          "reward": [1.0, 0.0, 0.5, 0.25], "group_id": ["g0", "g1"]})
    assert r.status_code == 201, r.text
    ids = r.json()["ids"]
    assert [x["routes"]["shape"] for x in r.json()["rollouts"]] == [[len(p) + len(o) - 1, len(moe), K] for p, o, _, _ in samples]
    for rid, (p, o, routes, lps), reward, g in zip(ids, samples, [1.0, 0.0, 0.5, 0.25], ["g0", "g0", "g1", "g1"]):
        T = len(p) + len(o)
        ro = api.get(api.base + f"/v1/rollouts/{rid}").json()
        assert ro["token_ids"] == p + o and ro["prompt_length"] == len(p) and ro["reward"] == reward and ro["group_id"] == g
        assert np.array_equal(np.asarray(ro["logprobs"], dtype=np.float32), lps)
        assert ro["policy_version"] == 12 and ro["metadata"]["sglang"]["id"] is not None
        assert ro["routes"]["num_hidden_layers"] == H and ro["routes"]["moe_layers"] == moe
        # slime: types.py:356-375 reads the base64 int32 back as [T-1, num_layers, K]
        s = slime.Sample(p + o)
        s.apply_meta_info(fetch(api, rid, format="slime").json()["routed_experts"], H, K)
        assert np.array_equal(s.rollout_routed_experts, routes)
        assert np.array_equal(slime.prepare_for_replay(s.rollout_routed_experts, p + o, E)[:-1], routes)
        # SGLang's own decoder reads the same string
        assert np.array_equal(sglang.decode_routed_experts(fetch(api, rid, format="slime").json()["routed_experts"], H, K), routes)
        # all layers as .npy (dense rows 0), and the MoE layers only
        assert np.array_equal(np.load(io.BytesIO(fetch(api, rid, format="npy", layout="all_layers").content)), routes)
        assert np.array_equal(np.load(io.BytesIO(fetch(api, rid, format="npy").content)), routes[:, moe])
        pad = np.load(io.BytesIO(fetch(api, rid, format="npy", layout="all_layers", pad=-1).content))
        dense = [l for l in range(H) if l not in moe]
        assert (pad[:, dense] == -1).all() and np.array_equal(pad[:, moe], routes[:, moe])
        # NeMo-RL: T rows, last arange(K), narrowest signed dtype, MoE layers; its gym check passes
        env = fetch(api, rid, format="nemo").json()["routed_experts"]
        assert env.split(":")[1] == nemo.resolve_dtype(E)
        got = nemo.decode(env, dtype=np.int32)
        assert np.array_equal(got, nemo.pad_and_align(routes[:, moe], T))
        nemo.gym_check(got, len(p), len(o))
        # Megatron: one int64 [T, K] per MoE router, in router order, from .npz and from safetensors
        z = np.load(io.BytesIO(fetch(api, rid, format="megatron").content))
        per_layer = megatron.set_replay_data(len(moe), [z[k] for k in sorted(z.files)], T, K)
        st = load_safetensors(fetch(api, rid, format="megatron", container="safetensors").content)
        want = nemo.pad_and_align(routes[:, moe], T).astype(np.int64)
        for j, (a, b) in enumerate(zip(per_layer, [st[k] for k in sorted(st)])):
            assert np.array_equal(a, want[:, j]) and np.array_equal(b, want[:, j])
    # verl: agent_loop.py:753-779's padded batch, rebuilt from the same engine arrays
    P, R = 12, 10
    b = api.post(api.base + "/v1/routes:batchGet", json={"ids": ids, "format": "verl", "prompt_length": P, "response_length": R})
    assert b.status_code == 200, b.text
    z = np.load(io.BytesIO(b.content))
    want_re, want_mask = verl.padded_batch([(p, o, routes) for p, o, routes, _ in samples], P, R)
    assert z["routed_experts"].dtype == np.int16 and np.array_equal(z["routed_experts"], want_re)
    assert np.array_equal(z["attention_mask"], want_mask)
    for i, (p, o, _, _) in enumerate(samples):
        valid = z["attention_mask"][i].astype(bool)
        assert z["input_ids"][i][valid].tolist() == p + o
        assert np.array_equal(verl.align_for_megatron(z["routed_experts"][i][valid][:len(p) + len(o) - 1], len(p) + len(o))[:-1],
                              samples[i][2].astype(np.int16))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_vllm_021_and_033_responses_go_in_unchanged(api, models, layout):
    m, cfg, moe = models[layout]
    E = experts_of(cfg)
    rng = np.random.default_rng(100 + len(layout))
    prompt = rng.integers(0, 1000, 9).tolist()
    choices = []
    for _ in range(2):
        out = rng.integers(0, 1000, 6).tolist()
        routes = all_layer_routes(rng, len(prompt) + len(out), cfg, moe)
        if choices:
            routes[:len(prompt)] = choices[0][2][:len(prompt)]   # one prompt: the same prompt rows for every choice
        choices.append((out, (-rng.random(6)).astype(np.float32), routes))
    # 0.21: MoE layers only, prompt rows once per response, nested lists
    resp = vllm.chat_response_021(prompt, [(o, lp, r[:, moe]) for o, lp, r in choices], [r[:, moe] for _, _, r in choices])
    r21 = api.post(api.base + "/v1/rollouts:vllm", json={"model": m["id"], "response": resp, "reward": 1.0})
    assert r21.status_code == 201, r21.text
    # 0.33: every hidden layer, base64 .npy (uint8 up to 256 experts)
    resp33 = vllm.completion_response_033(prompt, choices, E)
    r33 = api.post(api.base + "/v1/rollouts:vllm", json={"model": m["name"], "response": resp33, "reward": [1.0, 0.0]})
    assert r33.status_code == 201, r33.text
    for ids in (r21.json()["ids"], r33.json()["ids"]):
        for rid, (out, lps, routes) in zip(ids, choices):
            ro = api.get(api.base + f"/v1/rollouts/{rid}").json()
            assert ro["token_ids"] == prompt + out and ro["prompt_length"] == len(prompt)
            assert np.array_equal(np.asarray(ro["logprobs"], dtype=np.float32), lps)
            assert np.array_equal(np.load(io.BytesIO(fetch(api, rid, format="npy", layout="all_layers").content)), routes)


def test_two_turn_conversation_with_start_len_equals_storing_it_at_once(api, models):
    m, cfg, moe = models["glm45"]
    H, K, E = cfg["num_hidden_layers"], cfg["num_experts_per_tok"], experts_of(cfg)
    rng = np.random.default_rng(7)
    p1, o1 = rng.integers(0, 1000, 8).tolist(), rng.integers(0, 1000, 5).tolist()
    tool = rng.integers(0, 1000, 4).tolist()          # the tool's answer: context, not sampled
    o2 = rng.integers(0, 1000, 6).tolist()
    conv = p1 + o1 + tool + o2
    full = all_layer_routes(rng, len(conv), cfg, moe)  # what the engine computed, token by token
    lp1, lp2 = (-rng.random(5)).astype(np.float32), (-rng.random(6)).astype(np.float32)
    # turn 1: rows [0, T1 - 1)
    t1 = sglang.generate_response(p1, o1, sglang.capture(full[:len(p1 + o1) - 1]), lp1)
    r = api.post(api.base + "/v1/rollouts:sglang", json={"model": m["name"], "input_ids": p1, "response": t1, "reward": 0.0})
    assert r.status_code == 201, r.text
    rid = r.json()["ids"][0]
    # turn 2: the client resends the conversation with routed_experts_start_len = T1 - 1 (io_struct.py:264-268)
    start = len(p1 + o1) - 1
    t2 = sglang.generate_response(p1 + o1 + tool, o2, sglang.capture(full, start_len=start), lp2)
    r = api.post(api.base + "/v1/rollouts:sglang", json={"model": m["name"], "input_ids": p1 + o1 + tool, "response": t2,
                                                          "routed_experts_start_len": start, "append_to": rid, "reward": 1.0})
    assert r.status_code == 200, r.text
    assert r.json()["turns"] == 2
    # a turn whose prefix does not match the stored tokens conflicts, and changes nothing
    bad = sglang.generate_response(p1 + tool, o2, sglang.capture(full[:len(p1 + tool + o2) - 1], start_len=start), lp2)
    c = api.post(api.base + "/v1/rollouts:sglang", json={"model": m["name"], "input_ids": p1 + tool, "response": bad,
                                                          "routed_experts_start_len": start, "append_to": rid})
    assert c.status_code == 409 and c.headers["Content-Type"] == "application/problem+json", c.text
    # the same conversation stored at once
    once = api.post(api.base + "/v1/rollouts", json={
        "model": m["name"], "token_ids": conv, "prompt_length": len(p1), "reward": 1.0,
        "logprobs": lp1.tolist() + [None] * len(tool) + lp2.tolist(), "loss_mask": [1] * 5 + [0] * 4 + [1] * 6,
        "routed_experts": sglang.encode_routed_experts(full)})
    assert once.status_code == 201, once.text
    a, b = api.get(api.base + f"/v1/rollouts/{rid}").json(), api.get(api.base + f"/v1/rollouts/{once.json()['id']}").json()
    for k in ["token_ids", "prompt_length", "logprobs", "loss_mask", "reward"]:
        assert a[k] == b[k], k
    ra = fetch(api, rid, format="npy", layout="all_layers").content
    assert ra == fetch(api, once.json()["id"], format="npy", layout="all_layers").content
    assert np.array_equal(np.load(io.BytesIO(ra)), full)
    # offline training here takes every response token: a rollout with context tokens is refused, not mistrained
    from jobs_client import create_model
    trainable = create_model(api, f"interop-trainer-{uuid.uuid4().hex[:6]}")
    j = api.post(api.base + "/v1/jobs", json={"type": "train", "model": trainable["id"], "rollout_ids": [rid]})
    assert j.status_code == 422 and "loss_mask 0" in j.json()["detail"], j.text
    # slime's own multi-turn concatenation (types.py:376-395) agrees
    s = slime.Sample(p1 + o1)
    s.apply_meta_info(t1["meta_info"]["routed_experts"], H, K)
    s.tokens = conv
    s.apply_meta_info(t2["meta_info"]["routed_experts"], H, K, start_len=start)
    assert np.array_equal(s.rollout_routed_experts, full)


def count(api, model):
    return len(api.get(api.base + "/v1/rollouts", params={"model": model, "limit": 500}).json()["data"])


@pytest.mark.parametrize("body,status,words", [
    ({"meta_info": {"routed_experts": "AAAA"}}, 422, "unknown field meta_info"),
    ({"routed_experts": sglang.encode_routed_experts(np.zeros((19, 4, 8), np.int32))}, 422, "top_k and num_hidden_layers"),
    ({"model": "\u0000evil"}, 422, "NUL"),
    ({"group_id": "a\u0000b"}, 422, "NUL"),
    ({"metadata": {"note": "x\u0000"}}, 422, "metadata.note"),
    ({"logprobs": [1e39] * 15}, 422, "float32"),
    ({"policy_version": 2**63}, 422, "policy_version"),
    ({"logprobs": [None] * 15}, 422, "loss_mask 0"),
    ({"loss_mask": [1] * 15, "logprobs": [-0.5] * 15 + [None]}, 422, "logprobs has 16 entries"),
    ({"num_experts": 8, "routed_experts": "nrlre1:int8:9223372036854775807x2x1:"}, 422, "shape"),
    ({"num_experts": 8, "routed_experts": {"dtype": "int32", "shape": [2**39, 2**39, 8], "data": ""}}, 422, "shape"),
    ({"num_experts": 8, "routed_experts": {"dtype": "int32", "shape": [19, 1, 1], "data": "", "num_experts": "8"}}, 422, "num_experts"),
    ({"routed_experts": [[[0, 1]], [[2]]], "num_experts": 64}, 422, "row 1, layer 0 has 1 experts"),
])
def test_bad_rollout_bodies_name_the_field_and_store_nothing(api, body, status, words):
    before = count(api, "interop-bad")
    doc = {"model": "interop-bad", "token_ids": list(range(20)), "prompt_length": 5, **body}
    r = api.post(api.base + "/v1/rollouts", json=doc)
    assert r.status_code == status and words in r.json()["detail"], r.text
    assert count(api, "interop-bad") == before


def test_a_huge_layer_count_is_refused_before_any_work(api):
    r = api.post(api.base + "/v1/models", json={"name": "huge", "hf_config": {"num_hidden_layers": 2**30, "num_experts": 8, "num_experts_per_tok": 2}})
    assert r.status_code == 422 and "num_hidden_layers" in r.json()["detail"], r.text


def test_a_turn_must_replace_a_stored_placeholder_row(api):
    # NeMo-style T rows: the T-th row stands for the token that never went into the model
    r = api.post(api.base + "/v1/rollouts", json={"model": "turn-placeholder", "token_ids": [1, 2, 3], "prompt_length": 1,
                                                   "num_experts": 8, "routed_experts": [[[0, 1]], [[2, 3]], [[0, 1]]]})
    rid = r.json()["id"]
    bad = api.post(api.base + f"/v1/rollouts/{rid}/turns", json={"token_ids": [1, 2, 3, 4, 5], "response_start": 4,
                                                                   "routed_experts": [[[4, 5]]], "routed_experts_start_len": 3})
    assert bad.status_code == 422 and "routed_experts_start_len 3" in bad.json()["detail"], bad.text
    ok = api.post(api.base + f"/v1/rollouts/{rid}/turns", json={"token_ids": [1, 2, 3, 4, 5], "response_start": 4,
                                                                  "routed_experts": [[[6, 7]], [[4, 5]]], "routed_experts_start_len": 2})
    assert ok.status_code == 200, ok.text
    got = api.get(api.base + f"/v1/rollouts/{rid}/routes", params={"format": "json"}).json()["routed_experts"]
    assert got == [[[0, 1]], [[2, 3]], [[6, 7]], [[4, 5]]]


def test_a_turn_of_no_rollout_is_404_before_its_body_is_read(api):
    for rid in ["00000000-0000-4000-8000-000000000000", "not-a-uuid"]:
        r = api.post(api.base + f"/v1/rollouts/{rid}/turns", json={"token_ids": [1], "response_start": 0, "routed_experts": [[[-7]]]})
        assert r.status_code == 404 and r.headers["Content-Type"] == "application/problem+json", r.text


def test_dense_rows_must_be_zero_or_minus_one_naming_the_layer(api, models):
    m, cfg, moe = models["deepseek-v3"]
    rng = np.random.default_rng(3)
    routes = all_layer_routes(rng, 12, cfg, moe)
    routes[4, 1] = np.arange(8)                       # layer 1 is dense in DeepSeek-V3 (first_k_dense_replace 3)
    before = count(api, m["name"])
    r = api.post(api.base + "/v1/rollouts:sglang", json={"model": m["name"], "input_ids": list(range(5)),
                                                          "response": sglang.generate_response(list(range(5)), list(range(7)), routes)})
    assert r.status_code == 422 and "layer 1 is dense" in r.json()["detail"] and "[4, 1]" in r.json()["detail"], r.text
    routes[4, 1] = -1                                  # all -1 is accepted
    ok = api.post(api.base + "/v1/rollouts:sglang", json={"model": m["name"], "input_ids": list(range(5)),
                                                           "response": sglang.generate_response(list(range(5)), list(range(7)), routes)})
    assert ok.status_code == 201, ok.text
    assert count(api, m["name"]) == before + 1


def test_a_batch_is_stored_all_or_nothing(api, models):
    m, cfg, moe = models["qwen3-mlp-only"]
    rng = np.random.default_rng(11)
    samples = group(rng, cfg, moe)
    response = [sglang.generate_response(p, o, r, lps) for p, o, r, lps in samples]
    response[3]["meta_info"]["routed_experts"] = sglang.encode_routed_experts(samples[3][2][:-1])   # one row short
    before = count(api, m["name"])
    r = api.post(api.base + "/v1/rollouts:sglang", json={"model": m["name"], "input_ids": [samples[0][0], samples[2][0]], "response": response})
    assert r.status_code == 422 and "response[3]" in r.json()["detail"], r.text
    assert count(api, m["name"]) == before


def test_integers_are_exact_and_the_etag_covers_the_shape(api):
    doc = {"model": "exact", "policy_version": 2**53 + 1, "token_ids": [1, 2, 3], "prompt_length": 1, "num_experts": 8,
           "routed_experts": [[[0, 1]], [[2, 3]]]}
    r = api.post(api.base + "/v1/rollouts", json=doc)
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert api.get(api.base + f"/v1/rollouts/{rid}").json()["policy_version"] == 2**53 + 1
    url = api.base + f"/v1/rollouts/{rid}/routes"
    tag = api.get(url, params={"format": "npy"}).headers["ETag"]
    # the same values in another shape: [2, 2, 1] instead of [2, 1, 2]
    buf = io.BytesIO(); np.save(buf, np.array([[[0], [1]], [[2], [3]]], dtype=np.int32))
    assert api.put(url, params={"num_experts": 8}, data=buf.getvalue(), headers={"Content-Type": "application/x-npy"}).status_code == 200
    again = api.get(url, params={"format": "npy"}, headers={"If-None-Match": tag})
    assert again.status_code == 200 and again.headers["ETag"] != tag


def test_nemo_refuses_unsigned_and_int64_is_offered_everywhere(api):
    r = api.post(api.base + "/v1/rollouts", json={"model": "dtypes", "token_ids": [1, 2, 3], "prompt_length": 1, "num_experts": 8,
                                                   "routed_experts": [[[0, 1]], [[2, 3]]]})
    rid = r.json()["id"]
    bad = api.get(api.base + f"/v1/rollouts/{rid}/routes", params={"format": "nemo", "dtype": "uint8"})
    assert bad.status_code == 422 and "signed" not in bad.text or "int8, int16 or int32" in bad.json()["detail"]
    for fmt in ["npy", "raw", "base64", "json"]:
        assert fetch(api, rid, format=fmt, dtype="int64").status_code == 200
    assert np.load(io.BytesIO(fetch(api, rid, format="npy", dtype="int64").content)).dtype == np.int64
