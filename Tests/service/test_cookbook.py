"""The README's cookbook, run: each peer's way in and out of R3, written as a user would paste it. The code
between `# [cookbook:NAME]` and `# [/cookbook]` is what the README shows (test_readme checks they are the
same text). SGLang is played by peers/sglang.Server, which answers in SGLang's own /generate format."""
import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import requests

from peers import megatron, nemo, sglang, slime

CONFIG = {  # a Qwen3-30B-A3B-shaped config.json, shrunk: 6 layers, the first dense, 64 experts, top-8
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "num_hidden_layers": 6, "num_experts": 64,
    "num_experts_per_tok": 8, "mlp_only_layers": [0], "decoder_sparse_step": 1, "hidden_size": 2048}


@pytest.fixture(scope="module")
def world(server, tmp_path_factory):
    d = tmp_path_factory.mktemp("cookbook")
    (d / "config.json").write_text(json.dumps(CONFIG))
    engine = sglang.Server(6, [1, 2, 3, 4, 5], 64, 8)
    yield {"URL": server.url, "KEY": server.keys["a"], "SGLANG": engine.url, "dir": d, "engine": engine}
    engine.close()


def test_cookbook_sglang_to_every_trainer(world, monkeypatch):
    URL, KEY, SGLANG = world["URL"], world["KEY"], world["SGLANG"]
    monkeypatch.chdir(world["dir"])
    # [cookbook:register]
    import json, requests
    api = requests.Session()
    api.headers["Authorization"] = "Bearer " + KEY
    config = json.load(open("config.json"))        # the model's Hugging Face config.json, any MoE family
    api.post(URL + "/v1/models", json={"name": "qwen3-moe-rl", "hf_config": config}).raise_for_status()
    # [/cookbook]
    prompts = [[101, 7, 42, 9], [101, 5, 5]]
    rewards = [1.0, 0.0, 0.5, 0.0]
    # [cookbook:sglang]
    out = requests.post(SGLANG + "/generate", json={
        "input_ids": prompts, "sampling_params": {"n": 2, "max_new_tokens": 16},
        "return_logprob": True, "return_routed_experts": True}).json()
    r = api.post(URL + "/v1/rollouts:sglang", json={
        "model": "qwen3-moe-rl", "input_ids": prompts, "response": out,     # the response as SGLang sent it
        "reward": rewards, "group_id": ["prompt-0", "prompt-1"]})           # one reward per sample, a group per prompt
    ids = r.json()["ids"]                                                   # 4 rollouts, stored in one transaction
    # [/cookbook]
    assert r.status_code == 201, r.text
    engine = world["engine"]
    want = [engine.routes(p + o["output_ids"]) for p, o in zip([prompts[0]] * 2 + [prompts[1]] * 2, out)]
    rid = ids[0]

    # [cookbook:slime]
    import base64, numpy as np
    o = api.get(f"{URL}/v1/rollouts/{rid}/routes", params={"format": "slime"}).json()
    routes = np.frombuffer(base64.b64decode(o["routed_experts"]), np.int32).reshape(o["shape"])
    # sample.rollout_routed_experts = routes      # [T-1, num_layers, top_k], as slime's _apply_meta_info leaves it
    # [/cookbook]
    s = slime.Sample(prompts[0] + out[0]["output_ids"])
    s.apply_meta_info(o["routed_experts"], 6, 8)
    assert np.array_equal(routes, want[0]) and np.array_equal(s.rollout_routed_experts, want[0])

    # [cookbook:verl]
    import io
    z = np.load(io.BytesIO(api.post(URL + "/v1/routes:batchGet", json={
        "ids": ids, "format": "verl", "prompt_length": 8, "response_length": 16}).content))
    routed_experts = z["routed_experts"]           # [B, 8 + 16, num_layers, top_k] int16, as verl's agent loop pads it
    attention_mask = z["attention_mask"]           # [B, 8 + 16]; also input_ids, position_ids, response_mask
    # [/cookbook]
    for b, w in enumerate(want):
        valid = attention_mask[b].astype(bool)
        assert np.array_equal(routed_experts[b][valid][:len(w)], w.astype(np.int16))

    # [cookbook:nemo]
    envelope = api.get(f"{URL}/v1/rollouts/{rid}/routes", params={"format": "nemo"}).json()["routed_experts"]
    # message["routed_experts"] = envelope        # "nrlre1:int8:TxLxK:…": NeMo-RL's codec reads T rows, MoE layers
    # [/cookbook]
    got = nemo.decode(envelope, dtype=np.int32)
    assert np.array_equal(got, nemo.pad_and_align(want[0][:, [1, 2, 3, 4, 5]], len(prompts[0]) + 16))

    # [cookbook:megatron]
    z = np.load(io.BytesIO(api.get(f"{URL}/v1/rollouts/{rid}/routes", params={"format": "megatron"}).content))
    indices = [z[name] for name in sorted(z.files)]      # one int64 [T, top_k] per MoE router, in router order
    # RouterReplay.set_replay_data([torch.from_numpy(i).cuda() for i in indices])
    # [/cookbook]
    megatron.set_replay_data(5, indices, len(prompts[0]) + 16, 8)
    for j, i in enumerate(indices):
        assert np.array_equal(i[:-1], want[0][:, 1 + j].astype(np.int64)) and np.array_equal(i[-1], np.arange(8))

    # [cookbook:numpy]
    r = api.get(f"{URL}/v1/rollouts/{rid}/routes", params={"format": "npy", "dtype": "uint8"}, stream=True)
    r.raise_for_status()
    routes = np.load(io.BytesIO(r.raw.read()))   # [T-1, MoE layers, top_k] uint8, the body read in one call
    # [/cookbook]
    assert routes.dtype == np.uint8 and np.array_equal(routes, want[0][:, 1:].astype(np.uint8))   # layer 0 is dense


def test_cookbook_multi_turn_with_start_len(world):
    URL, KEY, SGLANG = world["URL"], world["KEY"], world["SGLANG"]
    api = requests.Session()
    api.headers["Authorization"] = "Bearer " + KEY
    r = api.post(URL + "/v1/models", json={"name": "qwen3-moe-chat", "hf_config": CONFIG})
    assert r.status_code in (201, 409), r.text
    prompt, tool_reply = [101, 7, 42, 9], [55, 56, 57]
    # [cookbook:turns]
    first = requests.post(SGLANG + "/generate", json={"input_ids": prompt, "return_logprob": True,
                                                      "return_routed_experts": True}).json()
    rid = api.post(URL + "/v1/rollouts:sglang", json={
        "model": "qwen3-moe-chat", "input_ids": prompt, "response": first}).json()["ids"][0]
    conversation = prompt + first["output_ids"] + tool_reply           # the tool's reply is context, not sampled
    start = len(prompt + first["output_ids"]) - 1                       # the rows R3 already has
    second = requests.post(SGLANG + "/generate", json={"input_ids": conversation, "return_logprob": True,
                                                       "return_routed_experts": True, "routed_experts_start_len": start}).json()
    api.post(URL + "/v1/rollouts:sglang", json={
        "model": "qwen3-moe-chat", "input_ids": conversation, "response": second,
        "routed_experts_start_len": start, "append_to": rid, "reward": 1.0}).raise_for_status()
    # [/cookbook]
    ro = api.get(f"{URL}/v1/rollouts/{rid}").json()
    assert ro["turns"] == 2 and ro["token_ids"] == conversation + second["output_ids"]
    assert ro["loss_mask"] == [1] * 8 + [0] * 3 + [1] * 8
    all_layers = np.load(io.BytesIO(api.get(f"{URL}/v1/rollouts/{rid}/routes", params={"format": "npy", "layout": "all_layers"}).content))
    assert np.array_equal(all_layers, world["engine"].routes(ro["token_ids"]))


def test_cookbook_keys_and_quotas(private_server, tmp_path):
    import os
    import subprocess
    from conftest import R3
    s = private_server()
    s.start()
    admin = subprocess.run([R3, "keys", "create", "--project", "demo"], env=s.env, capture_output=True, text=True).stdout.strip()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "r3").symlink_to(R3)
    env = dict(s.env, U=s.url, ADMIN=admin, PATH=f"{bindir}:{os.environ['PATH']}")
    out = subprocess.run(["bash", str(Path(__file__).parent / "cookbook_keys.sh")], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr


def test_cookbook_batch_of_rollouts(world):
    URL, KEY = world["URL"], world["KEY"]
    api = requests.Session()
    api.headers["Authorization"] = "Bearer " + KEY
    r = api.post(URL + "/v1/models", json={"name": "qwen3-moe-rl", "hf_config": CONFIG})
    assert r.status_code in (201, 409), r.text
    rng = np.random.default_rng(0)
    samples = []   # (tokens, log-probs, routes over the 5 MoE layers, reward), as a rollout engine hands them over
    for i in range(3):
        tokens = [101, 7, 42] + [int(x) for x in rng.integers(0, 1000, 13)]
        routes = np.argsort(rng.random((len(tokens) - 1, 5, 64)), axis=2)[:, :, :8]
        samples.append((tokens, -rng.random(13), routes, float(i)))
    # [cookbook:batch]
    import base64, json
    lines = [json.dumps({"model": "qwen3-moe-rl", "token_ids": tokens, "prompt_length": 3,
                         "logprobs": logprobs.tolist(), "reward": reward,
                         "routed_experts": {"dtype": "int32", "shape": list(routes.shape),
                                            "data": base64.b64encode(routes.astype(np.int32).tobytes()).decode()}})
             for tokens, logprobs, routes, reward in samples]
    r = api.post(URL + "/v1/rollouts:batchCreate", data="\n".join(lines),
                 headers={"Content-Type": "application/x-ndjson"})   # all stored, or none (the error names the line)
    ids = r.json()["ids"]
    # [/cookbook]
    assert r.status_code == 201, r.text
    for rid, (tokens, _, routes, _) in zip(ids, samples):
        got = np.load(io.BytesIO(api.get(f"{URL}/v1/rollouts/{rid}/routes", params={"format": "npy"}).content))
        assert np.array_equal(got, routes)
