"""The exact tensor names and shapes of a Hugging Face checkpoint, computed from its config.json.

Names are the ones on disk (what `save_pretrained` writes and what the real repositories ship),
not transformers 5's in-memory layout: experts are one tensor per expert and per projection
(`mlp.experts.N.gate_proj.weight` for Qwen3-MoE, `block_sparse_moe.experts.N.w1.weight` for
Mixtral and MiniMax-M2). The random-checkpoint writer and dummy loading both start here, and a
test checks every preset against transformers' own models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from tenk.errors import ConfigError

# normal(0, 0.02) / ones / zeros; quantized checkpoints add: "bytes" (uniform random bytes: packed
# 4-bit codes), "unit_normal" (normal(0, 1), cast: FP8 weights), "scale" (uniform in [0.5, 2):
# block scales), "global_scale" (a constant that makes dequantized weights ~normal(0, 0.02))
Init = Literal["normal", "ones", "zeros", "bytes", "unit_normal", "scale", "global_scale"]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    init: Init = "normal"  # normal(0, 0.02) for weights, ones for norms, zeros for biases
    dtype: str | None = None  # None: the checkpoint's dtype; "float32" where real checkpoints keep fp32
    value: float = 0.0  # the constant of init "global_scale"

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


SPEC_MODEL_TYPES = ("llama", "qwen3", "qwen3_moe", "mixtral", "minimax_m2")


def checkpoint_tensor_specs(hf_config: dict[str, Any]) -> list[TensorSpec]:
    """Every tensor of the checkpoint in file order: embeddings, layer 0..N-1, final norm, lm_head."""
    model_type = hf_config.get("model_type")
    if model_type not in SPEC_MODEL_TYPES:
        raise ConfigError(
            f"config.json: model_type {model_type!r} has no checkpoint layout "
            f"(known: {', '.join(SPEC_MODEL_TYPES)})"
        )
    c = _Shapes.from_config(hf_config)
    specs = [TensorSpec("model.embed_tokens.weight", (c.vocab, c.hidden))]
    for i in range(c.layers):
        p = f"model.layers.{i}"
        specs += _attention(hf_config, c, f"{p}.self_attn")
        specs += _feed_forward(hf_config, c, p, i)
        specs.append(TensorSpec(f"{p}.input_layernorm.weight", (c.hidden,), "ones"))
        specs.append(TensorSpec(f"{p}.post_attention_layernorm.weight", (c.hidden,), "ones"))
    specs.append(TensorSpec("model.norm.weight", (c.hidden,), "ones"))
    if not hf_config.get("tie_word_embeddings", False):
        specs.append(TensorSpec("lm_head.weight", (c.vocab, c.hidden)))
    return specs


@dataclass(frozen=True, slots=True)
class _Shapes:
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "_Shapes":
        def need(key: str) -> int:
            if cfg.get(key) is None:
                raise ConfigError(f"config.json: field {key!r} is missing (model_type {cfg['model_type']})")
            return int(cfg[key])

        hidden, heads = need("hidden_size"), need("num_attention_heads")
        return cls(
            vocab=need("vocab_size"),
            hidden=hidden,
            layers=need("num_hidden_layers"),
            heads=heads,
            kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
        )


def _attention(cfg: dict[str, Any], c: _Shapes, p: str) -> list[TensorSpec]:
    q, kv = c.heads * c.head_dim, c.kv_heads * c.head_dim
    out = [
        TensorSpec(f"{p}.q_proj.weight", (q, c.hidden)),
        TensorSpec(f"{p}.k_proj.weight", (kv, c.hidden)),
        TensorSpec(f"{p}.v_proj.weight", (kv, c.hidden)),
        TensorSpec(f"{p}.o_proj.weight", (c.hidden, q)),
    ]
    mt = cfg["model_type"]
    # transformers gives llama/qwen3/qwen3_moe biases on all four projections when attention_bias.
    if cfg.get("attention_bias") and mt in ("llama", "qwen3", "qwen3_moe"):
        out += [
            TensorSpec(f"{p}.q_proj.bias", (q,), "zeros"),
            TensorSpec(f"{p}.k_proj.bias", (kv,), "zeros"),
            TensorSpec(f"{p}.v_proj.bias", (kv,), "zeros"),
            TensorSpec(f"{p}.o_proj.bias", (c.hidden,), "zeros"),
        ]
    if mt in ("qwen3", "qwen3_moe"):  # one RMSNorm per head, shared by all heads
        out += [
            TensorSpec(f"{p}.q_norm.weight", (c.head_dim,), "ones"),
            TensorSpec(f"{p}.k_norm.weight", (c.head_dim,), "ones"),
        ]
    elif mt == "minimax_m2" and cfg.get("use_qk_norm", True):  # one RMSNorm over all heads at once
        out += [
            TensorSpec(f"{p}.q_norm.weight", (q,), "ones"),
            TensorSpec(f"{p}.k_norm.weight", (kv,), "ones"),
        ]
    return out


def _dense_mlp(p: str, hidden: int, inter: int, bias: bool = False) -> list[TensorSpec]:
    out = [
        TensorSpec(f"{p}.gate_proj.weight", (inter, hidden)),
        TensorSpec(f"{p}.up_proj.weight", (inter, hidden)),
        TensorSpec(f"{p}.down_proj.weight", (hidden, inter)),
    ]
    if bias:
        out += [
            TensorSpec(f"{p}.gate_proj.bias", (inter,), "zeros"),
            TensorSpec(f"{p}.up_proj.bias", (inter,), "zeros"),
            TensorSpec(f"{p}.down_proj.bias", (hidden,), "zeros"),
        ]
    return out


def _feed_forward(cfg: dict[str, Any], c: _Shapes, p: str, layer: int) -> list[TensorSpec]:
    mt = cfg["model_type"]
    if mt in ("llama", "qwen3"):
        return _dense_mlp(f"{p}.mlp", c.hidden, int(cfg["intermediate_size"]), bool(cfg.get("mlp_bias")))
    if mt == "qwen3_moe":
        experts = int(cfg.get("num_experts") or 0)
        step = int(cfg.get("decoder_sparse_step") or 1)
        sparse = experts > 0 and layer not in (cfg.get("mlp_only_layers") or []) and (layer + 1) % step == 0
        if not sparse:
            return _dense_mlp(f"{p}.mlp", c.hidden, int(cfg["intermediate_size"]))
        inter = int(cfg["moe_intermediate_size"])
        out = [TensorSpec(f"{p}.mlp.gate.weight", (experts, c.hidden))]
        for e in range(experts):
            out += _dense_mlp(f"{p}.mlp.experts.{e}", c.hidden, inter)
        return out
    # mixtral and minimax_m2: `block_sparse_moe`, experts w1 (gate) / w3 (up) / w2 (down)
    experts, inter = int(cfg["num_local_experts"]), int(cfg["intermediate_size"])
    q = f"{p}.block_sparse_moe"
    out = [TensorSpec(f"{q}.gate.weight", (experts, c.hidden))]
    if mt == "minimax_m2" and cfg.get("use_routing_bias", True):
        # Real MiniMax-M2 checkpoints keep the router's correction bias in fp32.
        out.append(TensorSpec(f"{q}.e_score_correction_bias", (experts,), "zeros", "float32"))
    for e in range(experts):
        out += [
            TensorSpec(f"{q}.experts.{e}.w1.weight", (inter, c.hidden)),
            TensorSpec(f"{q}.experts.{e}.w3.weight", (inter, c.hidden)),
            TensorSpec(f"{q}.experts.{e}.w2.weight", (c.hidden, inter)),
        ]
    return out
