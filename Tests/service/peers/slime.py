"""slime (THUDM/slime at 624b824a898a): how it reads routes from SGLang and hands them to Megatron.

- slime/utils/misc.py:25-35: a base64 string is decoded to bytes and read as torch.int32
  (torch.frombuffer(bytearray(value), dtype=torch.int32)).
- slime/utils/types.py:356-375: expected_rows = max(0, len(tokens) - 1 - routed_experts_start_len);
  reshape(expected_rows, args.num_layers, args.moe_router_topk), num_layers = every decoder layer; a size
  mismatch raises ValueError.
- slime/utils/types.py:376-395: start_len > 0 appends after the kept prefix:
  torch.cat([existing[:routed_experts_start_len], routed_experts]); 0 replaces.
- slime/backends/megatron_utils/cp_utils.py:254-297: asserts rows == len(tokens) - 1 (:266) and appends one
  pad row (:268) of torch.arange(pad * L * K).reshape(pad, L, K) % num_experts (:239-251).
- slime/backends/megatron_utils/actor.py:319-350: per MoE layer, record(rollout_routed_experts[:, layer_id]),
  dense layers skipped.
"""
import base64

import numpy as np


class Sample:
    def __init__(self, tokens):
        self.tokens = list(tokens)
        self.rollout_routed_experts = None

    def apply_meta_info(self, routed_experts_b64, num_layers, topk, start_len=0):
        """types.py:356-395 with misc.py:25-35."""
        flat = np.frombuffer(bytearray(base64.b64decode(routed_experts_b64)), dtype=np.int32)
        expected_rows = max(0, len(self.tokens) - 1 - start_len)
        if flat.size != expected_rows * num_layers * topk:
            raise ValueError(f"routed_experts has {flat.size} values, expected {expected_rows}x{num_layers}x{topk}")
        r = flat.reshape(expected_rows, num_layers, topk)
        if start_len > 0 and self.rollout_routed_experts is not None:
            self.rollout_routed_experts = np.concatenate([self.rollout_routed_experts[:start_len], r], axis=0)
        else:
            self.rollout_routed_experts = r


def prepare_for_replay(experts, tokens, num_experts):
    """cp_utils.py:254-297 without context parallelism: the T-th row is a pad row (:239-251)."""
    assert experts.shape[0] == len(tokens) - 1
    L, K = experts.shape[1], experts.shape[2]
    pad = (np.arange(1 * L * K).reshape(1, L, K) % num_experts).astype(experts.dtype)
    return np.concatenate([experts, pad], axis=0)


def per_moe_layer(experts, moe_layers):
    """actor.py:319-350: one [tokens, K] slice per MoE layer, dense layers skipped."""
    return [experts[:, l] for l in moe_layers]
