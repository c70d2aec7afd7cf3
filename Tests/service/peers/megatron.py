"""Megatron-LM (NVIDIA/Megatron-LM at d98e8a64ddf3): what RouterReplay takes.

- megatron/core/transformer/moe/router_replay.py:28-42 set_replay_data(all_layers_topk_indices): one tensor per
  RouterReplay instance, "the order must match the instantiation order of the routers"; a length mismatch
  raises ValueError.
- router_replay.py:167-180: replay does scores.gather(1, top_indices): int64 indices [num_tokens, topk].
- router.py:258-260: one instance per TopKRouter (MoE layers only; dense layers have none), built in layer order;
  router.py:760-761: tokens are sequence-major ([s, b] flattened).
"""
import numpy as np


def set_replay_data(num_routers, all_layers_topk_indices, num_tokens, topk):
    """router_replay.py:28-42 and the gather's requirements (:167-180)."""
    if len(all_layers_topk_indices) != num_routers:
        raise ValueError(f"got {len(all_layers_topk_indices)} index tensors for {num_routers} routers")
    for t in all_layers_topk_indices:
        if t.dtype != np.int64:
            raise TypeError(f"gather needs int64 indices, got {t.dtype}")
        if t.shape != (num_tokens, topk):
            raise ValueError(f"indices of shape {t.shape}, the router sees [{num_tokens}, {topk}]")
    return list(all_layers_topk_indices)
