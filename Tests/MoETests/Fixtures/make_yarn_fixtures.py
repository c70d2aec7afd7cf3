"""Makes the yarn fixtures of Tests/MoETests/Fixtures with Hugging Face transformers (run once, outputs committed):
a tiny DeepseekV3ForCausalLM (MLA; yarn with mscale and mscale_all_dim, which also scales the softmax) and a
tiny Glm4MoeForCausalLM (partial rotary; yarn with the default attention factor), random weights in float32,
and the float64 logits of one 96-token sequence, longer than original_max_position_embeddings (32) so the
interpolated frequencies matter.

    ~/.cache/r3-peer/bin/python Tests/MoETests/Fixtures/make_yarn_fixtures.py
"""
import json
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM, Glm4MoeConfig, Glm4MoeForCausalLM

HERE = Path(__file__).resolve().parent
COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2,
              num_attention_heads=4, n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
              n_shared_experts=1, first_k_dense_replace=1, max_position_embeddings=256, tie_word_embeddings=False)
CASES = {
    "deepseekv3-yarn": (DeepseekV3Config, DeepseekV3ForCausalLM, dict(
        COMMON, num_key_value_heads=4, q_lora_rank=16, kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
        routed_scaling_factor=2.5, rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                    "original_max_position_embeddings": 32, "mscale": 1.0, "mscale_all_dim": 0.8,
                                                    "beta_fast": 32, "beta_slow": 1})),
    "glm4moe-yarn": (Glm4MoeConfig, Glm4MoeForCausalLM, dict(
        COMMON, num_key_value_heads=2, head_dim=8, attention_bias=True, use_qk_norm=True, routed_scaling_factor=1.5,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32,
                         "partial_rotary_factor": 0.5})),
}

for name, (Config, Model, kw) in CASES.items():
    torch.manual_seed(0)
    cfg = Config(**kw)
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"
    model = Model(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("mlp.gate.weight"):
                p.normal_(0, 0.5)   # decisive routing
        for n, b in model.named_buffers():
            if n.endswith("e_score_correction_bias"):
                b.copy_(torch.randn_like(b) * 0.1)
    out = HERE / name
    out.mkdir(exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    ids = torch.randint(0, kw["vocab_size"], (1, 96), generator=torch.Generator().manual_seed(1))
    m64 = model.to(torch.float64)
    with torch.no_grad():
        logits = m64(input_ids=ids).logits[0].numpy()
    save_file({"input_ids": ids[0].numpy().astype(np.int32), "logits": logits.astype(np.float64)}, str(out / "reference.safetensors"))
    (out / "reference.json").write_text(json.dumps({"generator": f"make_yarn_fixtures.py, transformers {transformers.__version__}, "
                                                    f"torch {torch.__version__}, eager attention, float64 forward",
                                                    "tokens": 96}, indent=1))
    print(name, logits.shape, "ok")
