#!/usr/bin/env bash
# The README's run commands with curl, run by test_runs.py::test_cookbook_runs_with_curl against a live server
# ($U, $KEY; $RID: a stored rollout with 3 response tokens). Each region is what the README shows.
set -euo pipefail
# [cookbook:runs-curl]
RUN=$(curl -s -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$U/v1/runs" \
      -d '{"name": "grpo-30b-a3b", "on_collapse": "stop", "params": {"algorithm": "grpo", "replay": "R3", "lr": 1e-6}}' \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
# after each optimizer step: the trainer's metrics, and its log-probs of each rollout's response tokens
curl -s -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$U/v1/runs/$RUN/steps" \
     -d '{"step": 0, "metrics": {"reward_mean": 0.42, "grad_norm": 0.9}, "replay": "R3",
          "rollouts": [{"id": "'"$RID"'", "logprobs": [-0.51, -1.2, -0.03]}]}'     # reply: metrics, alarms, "action"
curl -s -H "Authorization: Bearer $KEY" "$U/v1/runs/$RUN/metrics?format=csv"      # k3_kl, extreme_frac_tau2, …
curl -s -N -H "Authorization: Bearer $KEY" "$U/v1/runs/$RUN/events?follow=false"  # SSE: run.step, run.collapse_detected, …
# [/cookbook]
curl -s -H "Authorization: Bearer $KEY" "$U/v1/runs/$RUN/metrics" | python3 -c 'import json,sys; d = json.load(sys.stdin)["data"]; assert len(d) == 1 and d[0]["tokens"] == 3 and d[0]["k3_kl"] >= 0, d'
echo ok
