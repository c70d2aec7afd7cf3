"""vLLM's OpenAI server with --enable-return-routed-experts (PyPI wheels vllm==0.21.0 and vllm==0.33.0).

0.21.0
- model_executor/layers/fused_moe/routed_experts_capturer.py:59, 103: int16, returned with .tolist();
  :271 the layer axis counts MoE layers only (_count_moe_layers); :686-687 split_routed_experts:
  prompt rows routed_experts[:prompt_len], completion rows routed_experts[prompt_len:].
- entrypoints/openai/chat_completion/protocol.py:95, 102-104: choices[i].routed_experts [gen_len, layers, top_k];
  response-level prompt_routed_experts [prompt_len, layers, top_k]; chat_completion/serving.py:1389, 1327:
  top-level prompt_token_ids and per-choice token_ids with return_token_ids.
0.33.0
- model_executor/layers/fused_moe/routed_experts_capturer.py:33, 68-69: every hidden layer,
  "uint8" if num_experts <= 256 else "uint16"; distributed/aux_output_connector/connector.py:101-108, 197:
  rows [routed_experts_prompt_start, T - 1).
- utils/serial_utils.py:67-71: routed_experts = base64 of np.save(buffer, array, allow_pickle=False).
- chat_completion/protocol.py:129-138: decode with np.load(io.BytesIO(b64decode(s))).
"""
import base64
import io

import numpy as np


def chat_response_021(prompt_ids, choices, moe_routes_all_rows):
    """A 0.21 chat completion: choices = [(output_ids, logprobs, rows [T-1, L_moe, K])]; every choice
    shares the prompt, whose rows are reported once (prompt_routed_experts, :686-687)."""
    P = len(prompt_ids)
    out = {"id": "chatcmpl-1", "object": "chat.completion", "model": "m", "prompt_token_ids": list(map(int, prompt_ids)),
           "prompt_routed_experts": np.asarray(moe_routes_all_rows[0][:P], dtype=np.int16).tolist(), "choices": []}
    for i, (output_ids, logprobs, rows) in enumerate(choices):
        gen = np.asarray(rows[P:], dtype=np.int16)
        out["choices"].append({
            "index": i, "message": {"role": "assistant", "content": "…"}, "finish_reason": "length",
            "token_ids": list(map(int, output_ids)),
            "logprobs": {"content": [{"token": f"token_id:{t}", "logprob": float(lp), "bytes": [], "top_logprobs": []}
                                     for t, lp in zip(output_ids, logprobs)]},
            "routed_experts": gen.tolist() if len(gen) else None})
    return out


def encode_npy_033(rows, num_experts):
    """serial_utils.py:67-71 with the capturer's dtype rule (routed_experts_capturer.py:69)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(rows, dtype="uint8" if num_experts <= 256 else "uint16"), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode()


def decode_npy_033(s):
    """chat_completion/protocol.py:129-138."""
    return np.load(io.BytesIO(base64.b64decode(s)))


def completion_response_033(prompt_ids, choices, num_experts):
    """A 0.33 completion with return_token_ids: choices = [(output_ids, logprobs, rows [T-1, L_all, K])]."""
    return {"id": "cmpl-1", "object": "text_completion", "model": "m", "choices": [
        {"index": i, "text": "…", "finish_reason": "length", "prompt_token_ids": list(map(int, prompt_ids)),
         "token_ids": list(map(int, output_ids)),
         "logprobs": {"token_logprobs": [float(x) for x in logprobs], "tokens": ["x"] * len(output_ids), "top_logprobs": None, "text_offset": []},
         "routed_experts": encode_npy_033(rows, num_experts)}
        for i, (output_ids, logprobs, rows) in enumerate(choices)]}
