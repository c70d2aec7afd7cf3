"""SGLang 0.5.23 (PyPI wheel sglang==0.5.23): how /generate reports routed experts.

- state_capturer/base.py:38-42, 68-75: the capture buffers are torch.int32 [tokens, num_hidden_layers, top_k],
  zero-initialised; base.py:48-50 writes buffer[:batch, layer_id, :] for MoE layers only, so dense layers stay 0.
- state_capturer/base.py:180-188: rows are req_to_token[...][start_len : seqlen - 1] with
  start_len = min(routed_experts_start_len, seqlen - 1): T - 1 - start_len rows.
- managers/detokenizer_manager.py:441-447: meta_info["routed_experts"] = pybase64.b64encode(item.numpy().tobytes())
  (native byte order, C order; no shape).
- managers/io_struct.py:264-268: request fields return_routed_experts and routed_experts_start_len.
- managers/tokenizer_manager.py:2665-2670: a response is {"text", "output_ids", "meta_info"};
  2868-2870 and 3098-3116: output_token_logprobs is a list of (logprob, token_id, text-or-None);
  2154-2175: a batch with n > 1 answers a flat list, prompt-major (for i in range(batch): for _ in range(n)).
- state_capturer/routed_experts.py:166-174: SGLang's own decoder is np.frombuffer(b64decode(s), np.int32),
  reshaped by the caller.
"""
import base64

import numpy as np


def encode_routed_experts(routes):
    """detokenizer_manager.py:441-447: base64 of the int32 tensor's bytes."""
    return base64.b64encode(np.ascontiguousarray(routes, dtype=np.int32).tobytes()).decode("utf-8")


def decode_routed_experts(s, num_hidden_layers, top_k):
    """routed_experts.py:166-174, reshaped as verl's async_sglang_server.py:686-697 does."""
    return np.frombuffer(base64.b64decode(s), dtype=np.int32).reshape(-1, num_hidden_layers, top_k)


def capture(all_layer_routes, start_len=0):
    """base.py:180-188: the rows a request gets back: [start_len, T - 1) of the whole sequence's
    [T - 1, num_hidden_layers, top_k] capture (dense layers 0)."""
    seqlen = all_layer_routes.shape[0] + 1
    start = min(start_len, seqlen - 1)
    return all_layer_routes[start:seqlen - 1]


def generate_response(prompt_ids, output_ids, routes_rows, logprobs=None, rid="r0", weight_version="default",
                      prompt_token_ids=False, finish="length"):
    """One /generate response (tokenizer_manager.py:2665-2670; meta_info keys 2507-2513)."""
    meta = {"id": rid, "finish_reason": {"type": finish, "length": len(output_ids)} if finish == "length" else {"type": "stop", "matched": 2},
            "prompt_tokens": len(prompt_ids), "weight_version": weight_version, "completion_tokens": len(output_ids),
            "cached_tokens": 0, "routed_experts": encode_routed_experts(routes_rows)}
    if logprobs is not None:
        meta["output_token_logprobs"] = [[float(lp), int(t), None] for lp, t in zip(logprobs, output_ids)]
        meta["input_token_logprobs"] = []
        meta["output_token_logprobs_length"] = len(output_ids)
    out = {"text": "…", "output_ids": list(map(int, output_ids)), "meta_info": meta}
    if prompt_token_ids:
        out["prompt_token_ids"] = list(map(int, prompt_ids))
    return out
