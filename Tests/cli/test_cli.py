"""The r3 CLI as an external trainer uses it: numpy writes the routes, safetensors reads the output,
and everything is compared with the HF float64 references of shared/fixtures (qwen3moe-tiny-a, and one
fixture of each other family)."""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[2]
R3 = os.environ.get("R3_BIN", str(ROOT / ".build" / "release" / "r3"))
FIXTURE = Path(os.environ.get("R3_SHARED", ROOT.parent / "shared")) / "fixtures" / "qwen3moe-tiny-a"
REF = load_file(str(FIXTURE / "reference.safetensors"))


def r3(*args, ok=True):
    p = subprocess.run([R3, *map(str, args)], capture_output=True, text=True, timeout=300)
    if ok:
        assert p.returncode == 0, p.stderr
    return p


def ids(seq):
    return ",".join(str(int(t)) for t in REF[f"seq{seq}.input_ids"])


@pytest.mark.parametrize("seq", [0, 1])
def test_forward_matches_reference(tmp_path, seq):
    out = tmp_path / "out.safetensors"
    r3("forward", "--model", FIXTURE, "--input-ids", ids(seq), "--output", out)
    got = load_file(str(out))
    assert got["logits"].dtype == np.float32 and got["routed_experts"].dtype == np.int32
    np.testing.assert_allclose(got["logits"], REF[f"seq{seq}.logits"], atol=1e-4)
    np.testing.assert_array_equal(got["routed_experts"], REF[f"seq{seq}.routed_experts"])
    np.testing.assert_allclose(got["router_weights"], REF[f"seq{seq}.router_weights"], atol=1e-4)


@pytest.mark.parametrize("rows,dtype", [("T", np.int32), ("T-1", np.int64), ("T-1", np.uint8)])
def test_forward_replays_numpy_routes(tmp_path, rows, dtype):
    routes = REF["seq0.replay_routed_experts"]
    if rows == "T-1":
        routes = routes[:-1]
    np.save(tmp_path / "routes.npy", routes.astype(dtype))
    out = tmp_path / "out.safetensors"
    r3("forward", "--model", FIXTURE, "--input-ids", ids(0), "--replay-routes", tmp_path / "routes.npy", "--output", out)
    got = load_file(str(out))
    T = len(REF["seq0.input_ids"])
    # every row whose routes were given matches the reference replay
    n = routes.shape[0]
    np.testing.assert_allclose(got["logits"][:n], REF["seq0.replay_logits"][:n], atol=1e-4)
    np.testing.assert_array_equal(got["routed_experts"][:n], routes)
    np.testing.assert_allclose(got["router_weights"][:n], REF["seq0.replay_router_weights"][:n], atol=1e-4)
    assert got["logits"].shape == (T, 256)


def test_bad_routes_fail_with_one_line(tmp_path):
    routes = REF["seq0.replay_routed_experts"].copy()
    routes[3, 2, 1] = 8
    np.save(tmp_path / "bad.npy", routes)
    p = r3("forward", "--model", FIXTURE, "--input-ids", ids(0), "--replay-routes", tmp_path / "bad.npy",
           "--output", tmp_path / "o.safetensors", ok=False)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "expert id 8 at [3, 2, 1] is outside [0, 8)" in lines[0], p.stderr
    assert not (tmp_path / "o.safetensors").exists()


def test_bad_input_ids_fail_with_one_line(tmp_path):
    p = r3("forward", "--model", FIXTURE, "--input-ids", "1,2,999", "--output", tmp_path / "o.safetensors", ok=False)
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and "999" in p.stderr


def test_generate_prints_tokens_logprobs_and_routes():
    p = r3("generate", "--model", FIXTURE, "--prompt-ids", "1,2,3,4", "--prompt-ids", "9,8",
           "--max-tokens", "6", "--seed", "7", "--precision", "fp32")
    doc = json.loads(p.stdout)
    assert doc["precision"] == "fp32" and len(doc["results"]) == 2
    for res, plen in zip(doc["results"], [4, 2]):
        T = len(res["tokens"])
        assert T == plen + 6 and len(res["logprobs"]) == 6
        routes = np.array(res["routed_experts"])
        assert routes.shape == (T - 1, 4, 2) and res["routed_experts_shape"] == [T - 1, 4, 2]
        assert all(lp <= 0 for lp in res["logprobs"])
    again = json.loads(r3("generate", "--model", FIXTURE, "--prompt-ids", "1,2,3,4", "--prompt-ids", "9,8",
                          "--max-tokens", "6", "--seed", "7", "--precision", "fp32").stdout)
    assert again == doc


def test_init_model_writes_a_loadable_tied_checkpoint(tmp_path):
    cfg = json.loads((FIXTURE / "config.json").read_text())
    cfg.update(tie_word_embeddings=True, mlp_only_layers=[1], head_dim=24, norm_topk_prob=False)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r3("init-model", "--config", tmp_path / "config.json", "--seed", "3", "--out", tmp_path / "m", "--dtype", "bf16")
    with safe_open(str(tmp_path / "m" / "model.safetensors"), framework="np") as f:   # numpy has no bfloat16
        names = set(f.keys())
    assert "lm_head.weight" not in names and "model.layers.1.mlp.gate_proj.weight" in names
    out = tmp_path / "o.safetensors"
    r3("forward", "--model", tmp_path / "m", "--input-ids", "5,6,7", "--output", out)
    assert load_file(str(out))["routed_experts"].shape == (3, 3, 2)


def test_bad_config_names_the_field(tmp_path):
    cfg = json.loads((FIXTURE / "config.json").read_text())
    cfg["num_experts_per_tok"] = 12
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    p = r3("init-model", "--config", tmp_path / "config.json", "--out", tmp_path / "m", ok=False)
    assert p.returncode != 0 and "num_experts_per_tok" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_demo_quick_reports_every_run_and_writes_plots(tmp_path):
    """`r3 demo --quick --json`: the whole flow through the API of a service it starts itself."""
    out = tmp_path / "demo"
    os.chmod(tmp_path, 0o755)
    p = subprocess.run([R3, "demo", "--quick", "--json", "--seed", "3", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(p.stdout)
    assert report == json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["runs"]] == ["none", "R2", "R3", "TIS", "GSPO+R3"]
    assert report["sft"]["eval_reward"] > 0
    assert report["rollout_precision"] == "bf16" and report["aux_loss_coef"] == 0 and report["realistic"] is False
    assert report["model"]["init_std"] == 0.02 and report["model"]["router_std"] == 0.02   # HF's initializer_range
    # the demo pins OpenBLAS's Haswell kernels (unless told otherwise), so its bits do not depend on the CPU's kernel choice
    assert report["blas_core"] == ("Haswell" if "OPENBLAS_CORETYPE" not in os.environ else report["blas_core"])
    for r in report["runs"]:
        assert r["state"] == "succeeded" and r["steps"] == 6
        for k in ["k3_kl_mean", "k3_kl_max", "extreme_frac_tau2_mean", "router_disagreement_mean", "token_disagreement_mean",
                  "reward_first", "reward_last", "step_seconds_mean", "k3_kl_step0"]:
            assert isinstance(r[k], (int, float)), (r["name"], k)
        assert r["collapse_step"] is None or isinstance(r["collapse_step"], int)
    assert {(r["replay"], r["algorithm"], r["tis"]) for r in report["runs"]} == {
        ("none", "grpo", False), ("R2", "grpo", False), ("R3", "grpo", False), ("none", "grpo", True), ("R3", "gspo", False)}
    for path in report["plots"]:
        svg = open(path).read()
        assert svg.startswith("<svg") and svg.count("<path") >= 5 and "R3" in svg
    # not a terminal: plain progress lines, no carriage-return redraws
    assert "\r" not in p.stderr and "step 6/6" in p.stderr


def test_demo_options_are_checked_before_any_work(tmp_path):
    for args, field in [(["--realistic", "--precision", "fp4"], "--precision"), (["--aux-loss-coef=-1"], "--aux-loss-coef"),
                        (["--init-std", "0"], "--init-std"), (["--router-std", "11"], "--router-std"), (["--sft-steps", "0"], "--sft-steps")]:
        p = subprocess.run([R3, "demo", *args, "--out", str(tmp_path / "d")], capture_output=True, text=True, timeout=60)
        assert p.returncode != 0 and field in p.stderr and not (tmp_path / "d").exists(), p.stderr


def test_realistic_quick_demo_is_in_the_papers_regime(tmp_path):
    """`r3 demo --quick --realistic`: the preset the README chose by measurement. At RL step 0 (the SFT policy,
    the same samples for every run) the FP8 rollouts' routers must disagree with the fp32 trainer's on >= 5% of
    (token, layer) decisions and on >= 50% of tokens (the paper: ~10% and 94%), and replay must cut k3 >= 2x.
    The demo pins OpenBLAS's Haswell kernels and 2 engine threads, so these figures are the README's on any
    x86-64 machine with AVX2."""
    import shutil
    out = tmp_path / "demo"
    p = subprocess.run([R3, "demo", "--quick", "--realistic", "--steps", "2", "--json", "--seed", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=900)
    try:
        assert p.returncode == 0, p.stderr[-3000:]
        report = json.loads(p.stdout)
        m = report["model"]
        assert (m["layers"], m["experts"], m["top_k"], m["init_std"], m["router_std"]) == (16, 128, 8, 0.08, 0.08)
        assert report["rollout_precision"] == "fp8" and report["aux_loss_coef"] == 0.1 and report["realistic"] is True
        runs = {r["name"]: r for r in report["runs"]}
        none, r3run = runs["none"], runs["R3"]
        assert none["router_disagreement_step0"] >= 0.05 and none["token_disagreement_step0"] >= 0.5, none
        assert none["k3_kl_step0"] / r3run["k3_kl_step0"] >= 2, (none["k3_kl_step0"], r3run["k3_kl_step0"])
        assert report["none_over_r3"]["k3_kl_step0"] == pytest.approx(none["k3_kl_step0"] / r3run["k3_kl_step0"])
    finally:
        shutil.rmtree(out, ignore_errors=True)   # the 16 x 128 model's checkpoints and WAL: several GB


FAMILIES = ["glm4moe-tiny-a", "deepseekv3-tiny-a", "mixtral-tiny-a"]


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_of_every_family_matches_its_reference(tmp_path, family):
    """GLM-4.5, DeepSeek-V3 (MLA) and Mixtral hub checkpoints, live and replayed through the CLI, against HF float64."""
    fx = FIXTURE.parent / family
    ref = load_file(str(fx / "reference.safetensors"))
    cfg = json.loads((fx / "config.json").read_text())
    meta = json.loads((fx / "reference.json").read_text())
    for seq in (0, 1):
        tokens = ",".join(str(int(t)) for t in ref[f"seq{seq}.input_ids"])
        out = tmp_path / f"live{seq}.safetensors"
        r3("forward", "--model", fx, "--input-ids", tokens, "--output", out)
        got = load_file(str(out))
        np.testing.assert_allclose(got["logits"], ref[f"seq{seq}.logits"], atol=1e-4)
        # routes cover the MoE layers only (dense layers take none), in descending selection score
        assert got["routed_experts"].shape[1] == len(meta["moe_layers"]) < cfg["num_hidden_layers"] or family == "mixtral-tiny-a"
        np.testing.assert_array_equal(got["routed_experts"], ref[f"seq{seq}.routed_experts"])
        np.testing.assert_allclose(got["router_weights"], ref[f"seq{seq}.router_weights"], atol=1e-4)
        np.save(tmp_path / "r.npy", ref[f"seq{seq}.replay_routed_experts"])
        out = tmp_path / f"replay{seq}.safetensors"
        r3("forward", "--model", fx, "--input-ids", tokens, "--replay-routes", tmp_path / "r.npy", "--output", out)
        got = load_file(str(out))
        np.testing.assert_allclose(got["logits"], ref[f"seq{seq}.replay_logits"], atol=1e-4)
        np.testing.assert_allclose(got["router_weights"], ref[f"seq{seq}.replay_router_weights"], atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_init_model_and_generate_for_every_family(tmp_path, family):
    cfg = json.loads((FIXTURE.parent / family / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r3("init-model", "--config", tmp_path / "config.json", "--seed", "3", "--router-std", "0.5", "--out", tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["model_type"] == cfg["model_type"] and saved["architectures"] == cfg["architectures"]
    with safe_open(str(tmp_path / "m" / "model.safetensors"), framework="np") as f:
        with safe_open(str(FIXTURE.parent / family / "model.safetensors"), framework="np") as hub:
            assert set(f.keys()) == set(hub.keys()), "init-model writes the family's hub key names"
    doc = json.loads(r3("generate", "--model", tmp_path / "m", "--prompt-ids", "1,2,3", "--max-tokens", "5", "--seed", "1").stdout)
    res = doc["results"][0]
    moe = 3 if family == "mixtral-tiny-a" else 2
    assert res["routed_experts_shape"] == [len(res["tokens"]) - 1, moe, cfg["num_experts_per_tok"]]


def test_unsupported_family_config_fails_with_one_line(tmp_path):
    cfg = json.loads((FIXTURE.parent / "deepseekv3-tiny-a" / "config.json").read_text())
    cfg["rope_scaling"] = {"type": "dynamic", "factor": 4.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    p = r3("init-model", "--config", tmp_path / "config.json", "--out", tmp_path / "m", ok=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode != 0 and len(lines) == 1 and "rope_scaling" in lines[0] and "dynamic" in lines[0], p.stderr


def test_deepseek_v3_published_config_with_yarn_runs(tmp_path):
    """DeepSeek-V3's own config.json shape (rope_scaling yarn, factor 40, mscale 1 / mscale_all_dim 1), scaled down."""
    cfg = json.loads((FIXTURE.parent / "deepseekv3-tiny-a" / "config.json").read_text())
    cfg["rope_scaling"] = {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                           "original_max_position_embeddings": 64, "type": "yarn"}
    cfg["max_position_embeddings"] = 2560
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r3("init-model", "--config", tmp_path / "config.json", "--seed", "2", "--out", tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["rope_scaling"]["rope_type"] == "yarn" and saved["rope_scaling"]["factor"] == 40
    out = tmp_path / "o.safetensors"
    r3("forward", "--model", tmp_path / "m", "--input-ids", ",".join(str(i % 100) for i in range(200)), "--output", out)
    assert np.isfinite(load_file(str(out))["logits"]).all()


def hf_load_balancing_loss(router_logits, top_k):
    """numpy transcription of transformers' load_balancing_loss_func without an attention mask
    (5.24 models/qwen3_moe/modeling_qwen3_moe.py L504-L573; identical in mixtral/modeling_mixtral.py):
    per layer softmax, top-k, histogram of the choices and sum of the probabilities; E · Σ f · P."""
    T, L, E = router_logits.shape
    counts, probs, rows = np.zeros(E), np.zeros(E), 0
    for layer in range(L):
        z = router_logits[:, layer].astype(np.float64)
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        chosen = np.argsort(-p, -1, kind="stable")[:, :top_k]
        counts += np.bincount(chosen.reshape(-1), minlength=E)
        probs += p.sum(0)
        rows += T
    return float(np.sum((counts / rows) * (probs / rows)) * E)


@pytest.mark.parametrize("family", ["qwen3moe-tiny-a", "mixtral-tiny-a"])
def test_forward_reports_router_logits_and_hfs_aux_loss(tmp_path, family):
    fx = FIXTURE.parent / family
    ref = load_file(str(fx / "reference.safetensors"))
    k = json.loads((fx / "config.json").read_text())["num_experts_per_tok"]
    out = tmp_path / "o.safetensors"
    r3("forward", "--model", fx, "--input-ids", ",".join(str(int(t)) for t in ref["seq0.input_ids"]), "--output", out)
    got = load_file(str(out))
    np.testing.assert_allclose(got["router_logits"], ref["seq0.router_logits"], atol=1e-4)
    with safe_open(str(out), framework="np") as f:
        aux = float(f.metadata()["aux_loss"])
    assert abs(aux - hf_load_balancing_loss(ref["seq0.router_logits"], k)) < 1e-5


def test_study_writes_the_matrix_and_resumes_only_missing_cells(tmp_path):
    """`r3 study`: the grid through the API, one file per finished cell; a re-run does only the missing ones."""
    out = tmp_path / "study"
    args = [R3, "study", "--quick", "--seeds", "1", "--steps", "2", "--out", str(out)]
    p = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads((out / "study.json").read_text())
    assert [r["name"] for r in report["runs"]] == ["none", "R3", "TIS", "GSPO", "R3+TIS"] and report["cells_reused"] == 0
    for c in report["cells"]:
        assert len(c["series"]) == 2 and all(isinstance(s["k3_kl"], float) for s in c["series"]), c["name"]
    md = (out / "study.md").read_text()
    assert "Collapse matrix" in md and "| R3+TIS |" in md and all(Path(x).exists() for x in report["plots"])
    # the paired per-seed view: none against R3 at step 0 and over the run
    assert "Replay per seed" in md and [p["seed"] for p in report["replay_per_seed"]] == [1]
    none1, r31 = (next(c for c in report["cells"] if c["name"] == n) for n in ("none", "R3"))
    assert report["replay_per_seed"][0]["k3_kl_step0"] == [none1["series"][0]["k3_kl"], r31["series"][0]["k3_kl"]]
    jobs = {c["name"]: c["job_id"] for c in report["cells"]}
    (out / "cells" / "TIS-seed1.json").unlink()          # as if the study had stopped during that cell
    p = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    again = json.loads((out / "study.json").read_text())
    assert again["cells_reused"] == 4 and "done earlier" in p.stderr
    assert {c["name"]: c["job_id"] for c in again["cells"] if c["name"] != "TIS"} == {k: v for k, v in jobs.items() if k != "TIS"}
    assert next(c for c in again["cells"] if c["name"] == "TIS")["job_id"] != jobs["TIS"]
    # other settings never mix into these cells
    p = subprocess.run(args + ["--learning-rate", "0.01"], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "other settings" in p.stderr


def test_study_runs_a_chosen_subset_at_a_chosen_batch(tmp_path):
    """`r3 study --runs none,R3 --batch-size B --samples N`: only those cells, at B × N samples per step, and the
    paired step-0 F(2) beside the step's response-token count (its resolution). Adding a run later reuses the
    cells already made with the same settings."""
    out = tmp_path / "study"
    args = [R3, "study", "--quick", "--seeds", "1", "--steps", "2", "--batch-size", "6", "--samples", "2", "--out", str(out)]
    p = subprocess.run(args + ["--runs", "none,R3"], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads((out / "study.json").read_text())
    assert [r["name"] for r in report["runs"]] == ["none", "R3"] and sorted(c["name"] for c in report["cells"]) == ["R3", "none"]
    assert report["settings"]["batch_size"] == 6 and report["settings"]["n"] == 2
    # the batch as the server took it: each job's normalised params
    assert all(c["job_batch"] == {"batch_size": 6, "n": 2} for c in report["cells"]), [c["job_batch"] for c in report["cells"]]
    md = (out / "study.md").read_text()
    assert "6 prompts × 2 samples per step" in md and "| TIS |" not in md and "F(2) step 0 none / R3 (response tokens)" in md
    none0, r30 = (next(c for c in report["cells"] if c["name"] == n)["series"][0] for n in ("none", "R3"))
    row = report["replay_per_seed"][0]
    assert row["extreme_frac_tau2_step0"] == [none0["extreme_frac_tau2"], r30["extreme_frac_tau2"]]
    # step 0 samples 6 × 2 = 12 responses: the mean length times 12 is their token count, a whole number
    tokens = none0["response_len_mean"] * 12
    assert abs(tokens - round(tokens)) < 1e-6 and row["response_tokens_step0"] == round(tokens) > 0
    # step 0 is the same policy on the same samples under both runs
    assert r30["response_len_mean"] == none0["response_len_mean"]
    p = subprocess.run(args + ["--runs", "none,R3,TIS"], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    again = json.loads((out / "study.json").read_text())
    assert again["cells_reused"] == 2 and [r["name"] for r in again["runs"]] == ["none", "R3", "TIS"]
    for bad, word in ((["--runs", "none,R4"], "'R4'"), (["--batch-size", "300"], "--batch-size"), (["--samples", "1"], "--samples"),
                      (["--batch-size", "256", "--samples", "32"], "at most 4096")):
        p = subprocess.run(args[:2] + bad + ["--out", str(tmp_path / "bad")], capture_output=True, text=True, timeout=120)
        assert p.returncode != 0 and word in p.stderr and p.stderr.startswith("Error: "), p.stderr
        assert not (tmp_path / "bad").exists(), "the options are checked before anything is made"


def test_a_failed_start_stops_the_embedded_cluster_it_started(tmp_path):
    """A binary that cannot find its migrations fails after starting the embedded PostgreSQL: the cluster it
    started must stop with it, or the next run on the same directory finds a server it does not own."""
    import shutil
    binary = tmp_path / "bin" / "r3"
    binary.parent.mkdir()
    shutil.copy(R3, binary)   # away from the repository: no Migrations/ beside it
    env = {k: v for k, v in os.environ.items() if k != "R3_MIGRATIONS_DIR"}
    out = tmp_path / "study"
    p = subprocess.run([str(binary), "study", "--quick", "--seeds", "1", "--steps", "2", "--out", str(out)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "Migrations" in p.stderr, p.stderr[-2000:]
    pg = out / "data" / "pg" / "data"
    assert (pg / "PG_VERSION").exists(), "the cluster was initialised (the failure came after its start)"
    assert not (pg / "postmaster.pid").exists(), "the embedded PostgreSQL is still running"


def test_bench_attention_tiles_times_each_tile_size_and_checks_the_option():
    """`r3 bench engine --cases attention_tiles` (the measurement AttnTiles' sizes come from): one JSON
    line per size with forward and backward time and GFLOP/s; a malformed size is one line, before any work."""
    p = r3("bench", "engine", "--quick", "--cases", "attention_tiles", "--tiles", "64x128,128x64", "--rounds", "1")
    lines = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    assert [(o["query_rows"], o["key_rows"]) for o in lines] == [(64, 128), (128, 64)]
    for o in lines:
        assert o["case"] == "attention_tiles" and o["config"]["seq_len"] == 2048 and o["config"]["heads"] == 8
        assert o["forward_s"] > 0 and o["backward_s"] > 0 and o["forward_gflops"] > 0 and o["backward_gflops"] > 0
        # backward does 2.5x forward's work (scores again, then dV, dP, dQ, dK) for D = Dv
        assert 1 < o["backward_s"] / o["forward_s"] < 10
    bad = r3("bench", "engine", "--cases", "attention_tiles", "--tiles", "128x0", ok=False)
    assert bad.returncode != 0 and "--tiles" in bad.stderr and "128x0" in bad.stderr and not bad.stdout
