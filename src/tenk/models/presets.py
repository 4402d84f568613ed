"""Model presets as Hugging Face `config.json` dicts, in the exact shapes of the real models.

`tenk random-checkpoint` writes them with random weights and `--load-format dummy` builds them
in memory, so the real-size models can be run where their weights cannot be downloaded. The
tiny presets are for tests. Token ids point at tenk's own tokenizer (tokenizer_builder), which
puts its special tokens first, so every preset's bos/eos exist whatever the tokenizer's size.

Rope settings are written twice, as transformers 5 (`rope_parameters`) and older versions
(top-level `rope_theta`, `rotary_dim`) read them; both say the same thing.
"""

from __future__ import annotations

import copy
from typing import Any

from tenk.errors import ConfigError
from tenk.models.tokenizer_builder import ENDOFTEXT_ID, IM_END_ID

# Chat models stop on <|im_end|>; bos/pad are <|endoftext|>, as Qwen's configs have them.
_TOKENS = dict(bos_token_id=ENDOFTEXT_ID, eos_token_id=IM_END_ID, pad_token_id=ENDOFTEXT_ID)
_DTYPE = dict(torch_dtype="bfloat16", dtype="bfloat16")


def _rope(theta: float, partial_rotary_factor: float | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": theta}
    if partial_rotary_factor is not None:
        params["partial_rotary_factor"] = partial_rotary_factor
    return dict(rope_theta=theta, rope_parameters=params)


def _qwen3_moe(layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int, experts: int,
               top_k: int, moe_inter: int, inter: int, vocab: int, max_pos: int) -> dict[str, Any]:
    return dict(
        architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe",
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        intermediate_size=inter, moe_intermediate_size=moe_inter,
        num_experts=experts, num_experts_per_tok=top_k, norm_topk_prob=True,
        decoder_sparse_step=1, mlp_only_layers=[],
        hidden_act="silu", attention_bias=False, attention_dropout=0.0, rms_norm_eps=1e-6,
        max_position_embeddings=max_pos, max_window_layers=layers,
        use_sliding_window=False, sliding_window=None,
        output_router_logits=False, router_aux_loss_coef=0.001,
        initializer_range=0.02, tie_word_embeddings=False, use_cache=True,
        **_rope(1_000_000.0), **_TOKENS, **_DTYPE,
    )


def _minimax_m2(layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int, experts: int,
                top_k: int, inter: int, vocab: int, rotary_dim: int) -> dict[str, Any]:
    return dict(
        architectures=["MiniMaxM2ForCausalLM"], model_type="minimax_m2",
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        intermediate_size=inter, num_local_experts=experts, num_experts_per_tok=top_k,
        shared_intermediate_size=0,
        # Partial RoPE: only the first rotary_dim of each head rotate. transformers reads
        # partial_rotary_factor, vLLM and the model card read rotary_dim.
        rotary_dim=rotary_dim, **_rope(5_000_000.0, rotary_dim / head_dim),
        # QK-norm over the full q (heads*head_dim) and k (kv_heads*head_dim) width.
        use_qk_norm=True, qk_norm_type="per_layer",
        # Router: sigmoid scores, top-k picked on score + e_score_correction_bias.
        scoring_func="sigmoid", use_routing_bias=True,
        hidden_act="silu", attention_dropout=0.0, rms_norm_eps=1e-6,
        max_position_embeddings=196_608, sliding_window=None,
        output_router_logits=False, router_aux_loss_coef=0.001, router_jitter_noise=0.0,
        initializer_range=0.02, tie_word_embeddings=False, use_cache=True,
        **_TOKENS, **_DTYPE,
    )


def _mixtral(layers: int, hidden: int, heads: int, kv_heads: int, experts: int, top_k: int,
             inter: int, vocab: int, eps: float, max_pos: int) -> dict[str, Any]:
    return dict(
        architectures=["MixtralForCausalLM"], model_type="mixtral",
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
        intermediate_size=inter, num_local_experts=experts, num_experts_per_tok=top_k,
        hidden_act="silu", attention_dropout=0.0, rms_norm_eps=eps,
        max_position_embeddings=max_pos, sliding_window=None,
        output_router_logits=False, router_aux_loss_coef=0.02, router_jitter_noise=0.0,
        initializer_range=0.02, tie_word_embeddings=False, use_cache=True,
        **_rope(1_000_000.0), **_TOKENS, **_DTYPE,
    )


def _llama(layers: int, hidden: int, heads: int, kv_heads: int, inter: int, vocab: int,
           theta: float, eps: float, max_pos: int, tie: bool) -> dict[str, Any]:
    return dict(
        architectures=["LlamaForCausalLM"], model_type="llama",
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
        intermediate_size=inter, hidden_act="silu", attention_bias=False, mlp_bias=False,
        attention_dropout=0.0, rms_norm_eps=eps, max_position_embeddings=max_pos,
        pretraining_tp=1, initializer_range=0.02, tie_word_embeddings=tie, use_cache=True,
        **_rope(theta), **_TOKENS, **_DTYPE,
    )


def _qwen3(layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int, inter: int,
           vocab: int, tie: bool) -> dict[str, Any]:
    return dict(
        architectures=["Qwen3ForCausalLM"], model_type="qwen3",
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        intermediate_size=inter, hidden_act="silu", attention_bias=False, attention_dropout=0.0,
        rms_norm_eps=1e-6, max_position_embeddings=40_960, max_window_layers=layers,
        use_sliding_window=False, sliding_window=None, initializer_range=0.02,
        tie_word_embeddings=tie, use_cache=True, **_rope(1_000_000.0), **_TOKENS, **_DTYPE,
    )


TINY_VOCAB = 512  # == the tiny presets' default tokenizer vocab

_BUILDERS = {
    # Qwen/Qwen3-30B-A3B
    "qwen3-30b-a3b": lambda: _qwen3_moe(48, 2048, 32, 4, 128, 128, 8, 768, 6144, 151_936, 40_960),
    # Qwen/Qwen3-235B-A22B
    "qwen3-235b-a22b": lambda: _qwen3_moe(94, 4096, 64, 4, 128, 128, 8, 1536, 12288, 151_936, 40_960),
    # MiniMaxAI/MiniMax-M2 (M2.1, M2.5, M2.7 share it)
    "minimax-m2": lambda: _minimax_m2(62, 3072, 48, 8, 128, 256, 8, 1536, 200_064, 64),
    # mistralai/Mixtral-8x7B-v0.1
    "mixtral-8x7b": lambda: _mixtral(32, 4096, 32, 8, 8, 2, 14336, 32_000, 1e-5, 32_768),
    # meta-llama/Meta-Llama-3-8B
    "llama-3-8b": lambda: _llama(32, 4096, 32, 8, 14336, 128_256, 500_000.0, 1e-5, 8192, False),
    # Tiny models for tests: same families and traps, a few hundred thousand parameters.
    "tiny-moe": lambda: _qwen3_moe(2, 64, 4, 2, 16, 8, 2, 32, 128, TINY_VOCAB, 4096),
    "tiny-minimax": lambda: _minimax_m2(2, 64, 4, 2, 16, 8, 2, 32, TINY_VOCAB, 8),
    "tiny-llama": lambda: _llama(2, 64, 4, 2, 128, TINY_VOCAB, 10_000.0, 1e-5, 4096, True),
    "tiny-qwen3": lambda: _qwen3(2, 64, 4, 2, 16, 128, TINY_VOCAB, False),
}

PRESETS: tuple[str, ...] = tuple(_BUILDERS)
TINY_PRESETS: tuple[str, ...] = tuple(p for p in PRESETS if p.startswith("tiny-"))


def get_preset(name: str, num_layers: int | None = None) -> dict[str, Any]:
    """A fresh copy of preset `name`'s config.json dict, optionally cut to `num_layers` layers."""
    if name not in _BUILDERS:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    cfg = copy.deepcopy(_BUILDERS[name]())
    if num_layers is not None:
        cfg = with_num_layers(cfg, num_layers)
    return cfg


def with_num_layers(cfg: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """The same model with fewer (or more) layers; fields indexed by layer follow along."""
    if num_layers < 1:
        raise ConfigError(f"--num-layers must be at least 1, got {num_layers}")
    cfg = copy.deepcopy(cfg)
    cfg["num_hidden_layers"] = num_layers
    if "max_window_layers" in cfg:
        cfg["max_window_layers"] = num_layers
    if cfg.get("mlp_only_layers"):
        cfg["mlp_only_layers"] = [i for i in cfg["mlp_only_layers"] if i < num_layers]
    return cfg
