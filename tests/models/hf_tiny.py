"""Tiny random checkpoints of the five families, built and saved by transformers' own classes."""

from __future__ import annotations

import torch

COMMON = dict(vocab_size=384, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16)


def _make(kind: str):
    import transformers as tf

    if kind == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(**COMMON, intermediate_size=96))
    if kind == "qwen3":
        return tf.Qwen3ForCausalLM(tf.Qwen3Config(**COMMON, intermediate_size=96))
    if kind == "qwen3_moe":
        # layer 1 dense (mlp_only_layers) to cover mixed dense/MoE stacks; norm_topk_prob off to cover that path
        return tf.Qwen3MoeForCausalLM(
            tf.Qwen3MoeConfig(**COMMON, moe_intermediate_size=32, intermediate_size=96, num_experts=8,
                              num_experts_per_tok=2, norm_topk_prob=False, mlp_only_layers=[1])
        )
    if kind == "mixtral":
        return tf.MixtralForCausalLM(tf.MixtralConfig(**COMMON, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2))
    if kind == "minimax_m2":
        cfg = tf.MiniMaxM2Config(
            **COMMON, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2,
            rope_parameters={"rope_type": "default", "rope_theta": 5e6, "partial_rotary_factor": 0.5},
            bos_token_id=1, eos_token_id=2,
        )
        return tf.MiniMaxM2ForCausalLM(cfg)
    raise ValueError(kind)


KINDS = ("llama", "qwen3", "qwen3_moe", "mixtral", "minimax_m2")


def save_tiny(kind: str, path, seed: int = 0) -> None:
    torch.manual_seed(seed)
    model = _make(kind).float()
    # Perturb everything, norms and the router's correction bias included: at their
    # init values (ones, zeros) a wrong formula could still match.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.5 * torch.randn_like(b))
    model.save_pretrained(path)
    from tenk.models.tokenizer_builder import write_tokenizer

    write_tokenizer(path, vocab_size=COMMON["vocab_size"])
    if kind == "minimax_m2":
        # The published MiniMax-M2 config names rotary_dim directly; keep both spellings.
        import json

        cfg_path = path / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["rotary_dim"] = 8
        cfg_path.write_text(json.dumps(cfg, indent=2))
