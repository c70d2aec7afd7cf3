// RouteLayoutTests: a Hugging Face config.json gives the hidden layers, experts, top-k and which layers are
// MoE, by every family's own rule (transformers 5.24 modeling files, cited per case), and bad configs name
// the field.
import Foundation
import JSON
import Testing
@testable import Routes

func config(_ text: String) throws -> JSONObject { try JSONReader.parse(Array(text.utf8)).objectValue! }

struct RouteLayoutTests {
    @Test(arguments: [
        // qwen3_moe/modeling_qwen3_moe.py:310-311: not in mlp_only_layers and (l + 1) % decoder_sparse_step == 0
        (#"{"model_type": "qwen3_moe", "num_hidden_layers": 6, "num_experts": 128, "num_experts_per_tok": 8, "mlp_only_layers": [0, 3]}"#, [1, 2, 4, 5], 128, 8),
        (#"{"model_type": "qwen2_moe", "num_hidden_layers": 6, "num_experts": 60, "num_experts_per_tok": 4, "decoder_sparse_step": 2}"#, [1, 3, 5], 60, 4),
        // transformers 5.x re-saves qwen3_moe's expert count as num_local_experts
        (#"{"model_type": "qwen3_moe", "num_hidden_layers": 2, "num_local_experts": 8, "num_experts_per_tok": 2}"#, [0, 1], 8, 2),
        // deepseek_v3/modeling_deepseek_v3.py:493 and DeepSeek's modeling_deepseek.py: l >= first_k_dense_replace and l % moe_layer_freq == 0
        (#"{"model_type": "deepseek_v3", "num_hidden_layers": 61, "n_routed_experts": 256, "num_experts_per_tok": 8, "first_k_dense_replace": 3, "moe_layer_freq": 1}"#, Array(3..<61), 256, 8),
        // glm4_moe/modeling_glm4_moe.py:402: l >= first_k_dense_replace
        (#"{"model_type": "glm4_moe", "num_hidden_layers": 46, "n_routed_experts": 128, "num_experts_per_tok": 8, "first_k_dense_replace": 1}"#, Array(1..<46), 128, 8),
        // Kimi-K2: DeepSeek-V3 keys
        (#"{"model_type": "kimi_k2", "num_hidden_layers": 4, "n_routed_experts": 384, "num_experts_per_tok": 8, "first_k_dense_replace": 1, "moe_layer_freq": 1}"#, [1, 2, 3], 384, 8),
        // mixtral/modeling_mixtral.py:338, olmoe:360, gpt_oss:336: every layer
        (#"{"model_type": "mixtral", "num_hidden_layers": 3, "num_local_experts": 8, "num_experts_per_tok": 2}"#, [0, 1, 2], 8, 2),
        (#"{"model_type": "olmoe", "num_hidden_layers": 2, "num_experts": 64, "num_experts_per_tok": 8}"#, [0, 1], 64, 8),
        // llama4/configuration_llama4.py:175-185: moe_layers, else range(step - 1, L, step); text_config nests it
        (#"{"model_type": "llama4", "text_config": {"num_hidden_layers": 8, "num_local_experts": 16, "num_experts_per_tok": 1, "interleave_moe_layer_step": 2}}"#, [1, 3, 5, 7], 16, 1),
        (#"{"model_type": "llama4_text", "num_hidden_layers": 4, "num_local_experts": 16, "num_experts_per_tok": 1, "moe_layers": [0, 2]}"#, [0, 2], 16, 1),
        // ernie4_5_moe/modeling_ernie4_5_moe.py:397-400
        (#"{"model_type": "ernie4_5_moe", "num_hidden_layers": 6, "moe_num_experts": 64, "moe_k": 6, "moe_layer_start_index": 1, "moe_layer_end_index": -1, "moe_layer_interval": 1}"#, [1, 2, 3, 4, 5], 64, 6),
        // jamba/configuration_jamba.py:120-124: l % expert_layer_period == expert_layer_offset
        (#"{"model_type": "jamba", "num_hidden_layers": 4, "num_experts": 16, "num_experts_per_tok": 2, "expert_layer_period": 2, "expert_layer_offset": 1}"#, [1, 3], 16, 2),
        // bailing_hybrid: mlp_layer_types
        (#"{"num_hidden_layers": 3, "num_experts": 32, "num_experts_per_token": 4, "mlp_layer_types": ["dense", "sparse", "sparse"]}"#, [1, 2], 32, 4),
        // qwen3_vl_moe: text_config
        (#"{"model_type": "qwen3_vl_moe", "text_config": {"num_hidden_layers": 3, "num_experts": 60, "num_experts_per_tok": 4}}"#, [0, 1, 2], 60, 4),
    ])
    func everyFamilysDenseLayerRule(_ text: String, moe: [Int], experts: Int, topK: Int) throws {
        let l = try RouteLayout(hfConfig: try config(text))
        #expect(l.moeLayers == moe, "\(text)")
        #expect(l.numExperts == experts && l.topK == topK)
    }

    @Test(arguments: [
        (#"{"num_hidden_layers": 4, "num_experts_per_tok": 2}"#, "config.num_experts is missing"),
        (#"{"num_hidden_layers": 4, "num_experts": 8}"#, "config.num_experts_per_tok is missing"),
        (#"{"num_experts": 8, "num_experts_per_tok": 2}"#, "config.num_hidden_layers is missing"),
        (#"{"num_hidden_layers": 4, "num_experts": 8, "num_experts_per_tok": 9}"#, "top_k must be in 1...8"),
        (#"{"num_hidden_layers": 4, "num_experts": [8, 8, 8, 8], "num_experts_per_tok": 2}"#, "per-layer list"),
        (#"{"num_hidden_layers": 4, "num_experts": 8, "num_experts_per_tok": 2, "mlp_only_layers": [7]}"#, "mlp_only_layers lists layer 7"),
        (#"{"num_hidden_layers": 2, "num_experts": 8, "num_experts_per_tok": 2, "first_k_dense_replace": 2}"#, "no MoE layer"),
        (#"{"num_hidden_layers": 2, "num_experts": 8, "num_experts_per_tok": 2, "per_layer_config": {}}"#, "per_layer_config"),
    ])
    func badConfigsNameTheField(_ text: String, words: String) throws {
        do { _ = try RouteLayout(hfConfig: try config(text)); Issue.record("accepted \(text)") } catch {
            #expect("\(error)".contains(words), "\(error)")
        }
    }
}
