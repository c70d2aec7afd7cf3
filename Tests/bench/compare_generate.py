#!/usr/bin/env python3
"""Two r3 binaries' `r3 generate` on the same checkpoint and prompts, per numerics mode, greedy and sampled:
how many of the 16 sequences have identical tokens and routes, whether the log-probs are bit-equal, and the
largest log-prob difference. Used to check that a speed change kept decode outputs (issue 14).

usage: compare_generate.py OLD_R3 NEW_R3 CHECKPOINT_DIR
  e.g. r3 init-model --config ../shared/bench/qwen3moe-bench-m.json --seed 3 --router-std 0.5 --out /tmp/bm
"""
import json
import random
import subprocess
import sys

old, new, model = sys.argv[1:4]
random.seed(1)
prompts = [",".join(str(random.randrange(8192)) for _ in range(random.randrange(20, 128))) for _ in range(16)]


def run(binary, precision, temperature):
    args = [binary, "generate", "--model", model, "--max-tokens", "128", "--temperature", str(temperature), "--seed", "5",
            "--precision", precision]
    for p in prompts:
        args += ["--prompt-ids", p]
    return json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)["results"]


for precision in ["deterministic", "bf16", "fp32"]:
    for temperature in [0, 1]:
        a, b = run(old, precision, temperature), run(new, precision, temperature)
        same = sum(x["tokens"] == y["tokens"] for x, y in zip(a, b))
        routes = sum(x["routed_experts"] == y["routed_experts"] for x, y in zip(a, b))
        exact = all(x["logprobs"] == y["logprobs"] for x, y in zip(a, b))
        worst = max(abs(p - q) for x, y in zip(a, b) for p, q in zip(x["logprobs"], y["logprobs"]))
        print(f"{precision:13s} T={temperature}: token-identical {same}/16, routes-identical {routes}/16, "
              f"log-probs bit-equal {exact}, max |dlogp| {worst:.2e}")
