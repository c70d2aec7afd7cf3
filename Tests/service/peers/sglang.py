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


class Server:
    """SGLang's /generate over HTTP on loopback, answering in SGLang's own format (above) with sampled tokens
    and routes of a given layout, so the cookbook's code runs as written. Routes follow the token ids
    (a deterministic function of each position's prefix), so the rows a later turn recomputes equal the
    earlier turn's, as with SGLang's radix cache."""

    def __init__(self, num_hidden_layers, moe_layers, num_experts, top_k, seed=0):
        import http.server
        import json
        import threading
        self.H, self.moe, self.E, self.K, self.seed = num_hidden_layers, moe_layers, num_experts, top_k, seed
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                body = json.dumps(outer.generate(req)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()

    def routes(self, tokens):
        """[len(tokens) - 1, H, K]: row t depends on tokens[:t + 1] only."""
        r = np.zeros((max(len(tokens) - 1, 0), self.H, self.K), dtype=np.int32)
        for t in range(len(tokens) - 1):
            rng = np.random.default_rng([self.seed, t] + [int(x) for x in tokens[max(0, t - 3):t + 1]])
            for l in self.moe:
                r[t, l] = rng.choice(self.E, self.K, replace=False)
        return r

    def generate(self, req):
        prompts = req["input_ids"] if isinstance(req["input_ids"][0], list) else [req["input_ids"]]
        sp = req.get("sampling_params", {})
        n, new = sp.get("n", 1), sp.get("max_new_tokens", 8)
        start = req.get("routed_experts_start_len", 0)
        out = []
        for i, p in enumerate(prompts):
            for j in range(n):
                rng = np.random.default_rng([self.seed, i, j, len(p)])
                ids = rng.integers(0, 1000, new).tolist()
                lps = (-rng.random(new)).astype(np.float32)
                routes = capture(self.routes(p + ids), start_len=start) if req.get("return_routed_experts") else None
                r = generate_response(p, ids, routes if routes is not None else np.zeros((0, self.H, self.K), np.int32),
                                      lps if req.get("return_logprob") else None, rid=f"{i}-{j}")
                if routes is None:
                    del r["meta_info"]["routed_experts"]
                out.append(r)
        return out if len(out) > 1 or isinstance(req["input_ids"][0], list) else out[0]
