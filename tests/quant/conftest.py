"""Tiny bf16 MoE checkpoints saved by transformers' own classes (module names as published)."""

import json

import pytest
import torch

COMMON = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16)


def save_tiny(kind: str, path, seed: int = 0):
    import transformers as tf

    torch.manual_seed(seed)
    if kind == "qwen3_moe":
        model = tf.Qwen3MoeForCausalLM(
            tf.Qwen3MoeConfig(**COMMON, moe_intermediate_size=32, intermediate_size=96, num_experts=4, num_experts_per_tok=2)
        )
    elif kind == "qwen3_moe_wide":  # every width a multiple of 128, for block FP8
        cfg = dict(COMMON, hidden_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=128)
        model = tf.Qwen3MoeForCausalLM(
            tf.Qwen3MoeConfig(**cfg, moe_intermediate_size=128, intermediate_size=256, num_experts=4, num_experts_per_tok=2)
        )
    elif kind == "minimax_m2":
        cfg = tf.MiniMaxM2Config(
            **COMMON, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2,
            rope_parameters={"rope_type": "default", "rope_theta": 5e6, "partial_rotary_factor": 0.5},
        )
        model = tf.MiniMaxM2ForCausalLM(cfg)
    elif kind == "mixtral":
        model = tf.MixtralForCausalLM(tf.MixtralConfig(**COMMON, intermediate_size=48, num_local_experts=4, num_experts_per_tok=2))
    else:
        raise ValueError(kind)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.2 * torch.randn_like(p) if "norm" in name else 0.08 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.5 * torch.randn_like(b))
    model.to(torch.bfloat16).save_pretrained(path)
    # stand-ins for the tokenizer files a real checkpoint carries; quantize copies them verbatim
    (path / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    (path / "chat_template.jinja").write_text("{{ messages }}")
    return path


@pytest.fixture(scope="session")
def tiny_qwen3_moe(tmp_path_factory):
    return save_tiny("qwen3_moe", tmp_path_factory.mktemp("qwen3_moe_bf16"))


@pytest.fixture(scope="session")
def tiny_mixtral(tmp_path_factory):
    return save_tiny("mixtral", tmp_path_factory.mktemp("mixtral_bf16"))


@pytest.fixture(scope="session")
def tiny_qwen3_moe_wide(tmp_path_factory):
    return save_tiny("qwen3_moe_wide", tmp_path_factory.mktemp("qwen3_moe_wide_bf16"))


@pytest.fixture(scope="session")
def tiny_minimax(tmp_path_factory):
    return save_tiny("minimax_m2", tmp_path_factory.mktemp("minimax_bf16"))
