"""Every engine family through the service: GLM-4.5, DeepSeek-V3 (MLA) and Mixtral models registered by
config and by checkpoint directory, rollout jobs whose stored routes replay bit-identically in `r3
forward` (dense layers take no routes; the all-layers layout pads them as SGLang does), and an RL job with
R3 replay on each."""
import io
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from jobs_client import REQUIRED_METRICS, download_checkpoint, submit, wait

ROOT = Path(__file__).resolve().parents[2]
R3 = os.environ.get("R3_BIN", str(ROOT / ".build" / "release" / "r3"))
FIXTURES = Path(os.environ.get("R3_SHARED", ROOT.parent / "shared")) / "fixtures"

BASE = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 32, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_experts_per_tok": 4}
CONFIGS = {
    "glm4_moe": dict(BASE, model_type="glm4_moe", num_key_value_heads=2, head_dim=16, attention_bias=True, use_qk_norm=True,
                     partial_rotary_factor=0.5, n_routed_experts=16, n_group=4, topk_group=2, n_shared_experts=1,
                     routed_scaling_factor=2.5, norm_topk_prob=True, first_k_dense_replace=1),
    "deepseek_v3": dict(BASE, model_type="deepseek_v3", q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8,
                        v_head_dim=16, n_routed_experts=16, n_group=4, topk_group=2, n_shared_experts=1,
                        routed_scaling_factor=2.5, norm_topk_prob=True, first_k_dense_replace=1),
    "mixtral": dict(BASE, model_type="mixtral", num_key_value_heads=2, num_local_experts=8, intermediate_size=32, num_experts_per_tok=2),
}
MOE_LAYERS = {"glm4_moe": [1, 2], "deepseek_v3": [1, 2], "mixtral": [0, 1, 2]}


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_family_rollouts_replay_and_train_with_r3(api, tmp_path, family):
    cfg = CONFIGS[family]
    r = api.post(api.base + "/v1/models", json={"name": f"family-{family}", "config": cfg, "seed": 3, "router_std": 0.5})
    assert r.status_code == 201, r.text
    m = r.json()
    assert m["config"]["model_type"] == family
    assert m["route_layout"]["moe_layers"] == MOE_LAYERS[family] and m["route_layout"]["num_hidden_layers"] == 3
    K = cfg["num_experts_per_tok"]
    done = wait(api, submit(api, {"type": "rollout", "model": m["id"], "n": 2, "max_tokens": 6, "seed": 11,
                                  "precision": "deterministic", "prompts": [{"token_ids": [1, 20, 30, 40]}]})["id"])
    assert done["state"] == "succeeded", done
    ckpt = download_checkpoint(api, m["id"], 0, tmp_path / "v0")
    assert json.loads((ckpt / "config.json").read_text())["model_type"] == family
    for rid in done["result"]["rollout_ids"]:
        ro = api.get(api.base + "/v1/rollouts/" + rid).json()
        tokens = ro["token_ids"]
        assert ro["routes"]["shape"] == [len(tokens) - 1, len(MOE_LAYERS[family]), K]
        routes = np.load(io.BytesIO(api.get(api.base + f"/v1/rollouts/{rid}/routes", params={"format": "npy"}).content))
        # SGLang / vLLM layout: every hidden layer, the dense layer's rows 0
        full = np.load(io.BytesIO(api.get(api.base + f"/v1/rollouts/{rid}/routes", params={"format": "npy", "layout": "all_layers"}).content))
        assert full.shape == (len(tokens) - 1, 3, K)
        assert np.array_equal(full[:, MOE_LAYERS[family]], routes)
        for dense in sorted(set(range(3)) - set(MOE_LAYERS[family])):
            assert (full[:, dense] == 0).all()
        np.save(tmp_path / "r.npy", routes)
        outs = {}
        for mode, extra in [("replay", ["--replay-routes", tmp_path / "r.npy"]), ("live", [])]:
            p = subprocess.run([R3, "forward", "--model", ckpt, "--input-ids", ",".join(map(str, tokens)), "--precision", "deterministic",
                                "--output", tmp_path / f"{mode}.safetensors", *map(str, extra)], capture_output=True, text=True, timeout=120)
            assert p.returncode == 0, p.stderr
            outs[mode] = load_file(str(tmp_path / f"{mode}.safetensors"))
        np.testing.assert_array_equal(outs["replay"]["routed_experts"][:-1], routes)
        np.testing.assert_array_equal(outs["live"]["routed_experts"][:-1], routes)
        np.testing.assert_array_equal(outs["replay"]["logits"], outs["live"]["logits"])
    train = wait(api, submit(api, {"type": "train", "model": m["id"], "task": "reverse", "difficulty": 2, "steps": 2, "batch_size": 2,
                                   "n": 2, "replay": "R3", "learning_rate": 1e-4, "seed": 3})["id"])
    assert train["state"] == "succeeded", train
    metrics = api.get(api.base + f"/v1/jobs/{train['id']}/metrics").json()["data"]
    assert [r["step"] for r in metrics] == [0, 1]
    for row in metrics:
        for k in REQUIRED_METRICS:
            assert isinstance(row.get(k), (int, float)) and math.isfinite(row[k]), (family, row["step"], k, row.get(k))
        assert row["replay_fallback_tokens"] == 0


@pytest.mark.parametrize("fixture,family", [("glm4moe-tiny-a", "glm4_moe"), ("deepseekv3-tiny-a", "deepseek_v3"), ("mixtral-tiny-a", "mixtral")])
def test_hub_checkpoints_of_every_family_register(api, fixture, family):
    r = api.post(api.base + "/v1/models", json={"name": f"hub-{fixture}", "checkpoint_path": str(FIXTURES / fixture)})
    assert r.status_code == 201, r.text
    m = r.json()
    assert m["source"] == "checkpoint" and m["config"]["model_type"] == family
    meta = json.loads((FIXTURES / fixture / "reference.json").read_text())
    assert m["route_layout"]["moe_layers"] == meta["moe_layers"]
    done = wait(api, submit(api, {"type": "rollout", "model": m["id"], "prompts": [{"token_ids": [1, 2, 3]}], "max_tokens": 4})["id"])
    assert done["state"] == "succeeded", done


def test_family_config_errors_name_the_field(api):
    bad = dict(CONFIGS["deepseek_v3"], rope_scaling={"type": "dynamic", "factor": 4})
    r = api.post(api.base + "/v1/models", json={"name": "bad-rope", "config": bad})
    assert r.status_code == 422 and "rope_scaling" in r.json()["detail"] and "dynamic" in r.json()["detail"]
    r = api.post(api.base + "/v1/models", json={"name": "bad-group", "config": dict(CONFIGS["glm4_moe"], n_group=3)})
    assert r.status_code == 422 and "n_group" in r.json()["detail"]


def test_aux_loss_coefficient_in_jobs(api):
    """aux_loss_coef (HF's router_aux_loss_coef) trains softmax routers with the load-balancing loss and
    every sft / train step reports aux_loss; sigmoid routers and rollout jobs refuse it by name."""
    r = api.post(api.base + "/v1/models", json={"name": "aux-mixtral", "config": CONFIGS["mixtral"], "seed": 4, "router_std": 0.5})
    assert r.status_code == 201, r.text
    m = r.json()
    for kind, extra in [("sft", {"batch_size": 4}), ("train", {"batch_size": 2, "n": 2})]:
        body = {"type": kind, "model": m["id"], "task": "reverse", "difficulty": 2, "steps": 2, "aux_loss_coef": 0.02, "seed": 1, **extra}
        j = submit(api, body)
        assert j["params"]["aux_loss_coef"] == 0.02
        done = wait(api, j["id"])
        assert done["state"] == "succeeded", done
        rows = api.get(api.base + f"/v1/jobs/{j['id']}/metrics").json()["data"]
        assert len(rows) == 2 and all(isinstance(x.get("aux_loss"), float) and x["aux_loss"] >= 1.0 for x in rows), rows
    fp8 = wait(api, submit(api, {"type": "rollout", "model": m["id"], "prompts": [{"token_ids": [1, 2, 3]}], "max_tokens": 4,
                                 "precision": "fp8"})["id"])
    assert fp8["state"] == "succeeded" and fp8["params"]["precision"] == "fp8", fp8
    r = api.post(api.base + "/v1/jobs", json={"type": "rollout", "model": m["id"], "prompts": [{"token_ids": [1]}], "aux_loss_coef": 0.1})
    assert r.status_code == 422 and "aux_loss_coef" in r.json()["detail"]
    g = api.post(api.base + "/v1/models", json={"name": "aux-glm", "config": CONFIGS["glm4_moe"]}).json()
    r = api.post(api.base + "/v1/jobs", json={"type": "sft", "model": g["id"], "task": "sort", "steps": 1, "aux_loss_coef": 0.01})
    assert r.status_code == 422 and "aux_loss_coef" in r.json()["detail"] and "e_score_correction_bias" in r.json()["detail"]
