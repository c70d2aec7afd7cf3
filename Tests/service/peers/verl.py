"""verl (verl-project/verl at 1dda039b9c63): the padded batch an agent loop builds, and what Megatron gets.

- verl/workers/rollout/sglang_rollout/async_sglang_server.py:686-697: the engine's array reshaped to
  (-1, hf_config.num_hidden_layers, hf_config.num_experts_per_tok): every decoder layer, row i = token i.
- verl/experimental/agent_loop/agent_loop.py:753-779: experts_tensor.to(torch.int16); routed_experts =
  torch.zeros(1, total_length, layer_num, topk_num); start_pos = prompt_output["input_ids"].shape[1] -
  len(output.prompt_ids); routed_experts[:, start_pos:end_pos] = experts; prompts left-padded, responses
  right-padded; 704-720: attention_mask is the prompt mask followed by the response mask.
- verl/utils/megatron/router_replay_utils.py:340-372 align_r3_router_replay_data: T - 1 rows get one zero row;
  :460-470: layer_idx = layer_number - 1 when the layer axis has num_layers entries; targets .to(torch.int64).
"""
import numpy as np


def padded_batch(samples, prompt_length, response_length):
    """samples: [(prompt_ids, response_ids, routes [T-1, L, K])] → (routed_experts [B, P+R, L, K] int16,
    attention_mask [B, P+R]) as agent_loop.py:704-779 builds them."""
    S = prompt_length + response_length
    L, K = samples[0][2].shape[1:]
    re = np.zeros((len(samples), S, L, K), dtype=np.int16)
    mask = np.zeros((len(samples), S), dtype=np.int64)
    for b, (prompt, response, routes) in enumerate(samples):
        start_pos = prompt_length - len(prompt)
        end_pos = min(start_pos + routes.shape[0], S)
        re[b, start_pos:end_pos] = routes[:end_pos - start_pos].astype(np.int16)
        mask[b, start_pos:prompt_length] = 1
        mask[b, prompt_length:prompt_length + min(len(response), response_length)] = 1
    return re, mask


def align_for_megatron(routes, input_len):
    """router_replay_utils.py:340-372: one zero row for the final token when the engine sent T - 1."""
    if routes.shape[0] == input_len - 1:
        routes = np.concatenate([routes, np.zeros((1,) + routes.shape[1:], routes.dtype)], axis=0)
    assert routes.shape[0] == input_len
    return routes
