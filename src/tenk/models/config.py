"""ModelConfig: one normalised view of a Hugging Face `config.json` for the five families.

Every field the model code reads is resolved here, once, including the traps in DESIGN.md:
rope settings in either the old top-level form or transformers 5's `rope_parameters`,
MiniMax-M2's `rotary_dim` / `partial_rotary_factor`, its full-width QK-norm and sigmoid
router with a correction bias.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenk.errors import ConfigError

SUPPORTED_MODEL_TYPES = ("llama", "qwen3", "qwen3_moe", "mixtral", "minimax_m2")


@dataclass(slots=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # dense MLP width (0 when every layer is MoE)
    rms_norm_eps: float
    rope_theta: float
    rotary_dim: int  # leading dims of each head that RoPE rotates (== head_dim unless partial)
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    qk_norm: str = "none"  # "none" | "per_head" (Qwen3) | "full" (MiniMax-M2: over all heads)
    # MoE (num_experts == 0 means a dense model)
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    router: str = "softmax"  # "softmax" | "sigmoid"
    norm_topk_prob: bool = True
    router_correction_bias: bool = False
    moe_layers: tuple[int, ...] = ()  # layer indices that use MoE
    torch_dtype: str = "bfloat16"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    quantization: dict[str, Any] | None = None  # quantization_config / hf_quant_config.json
    hf_config: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return self.num_layers * self.num_kv_heads * self.head_dim * 2 * dtype_bytes

    # ------------------------------------------------------------------ parsing

    @classmethod
    def from_dir(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        cfg_path = path / "config.json"
        if not path.is_dir():
            raise ConfigError(f"model directory {str(path)!r} does not exist")
        if not cfg_path.is_file():
            raise ConfigError(f"{cfg_path} is missing: a model directory needs a config.json")
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{cfg_path} is not valid JSON: {exc}") from None
        quant = cfg.get("quantization_config")
        hf_quant = path / "hf_quant_config.json"
        if quant is None and hf_quant.is_file():
            quant = json.loads(hf_quant.read_text())
        gen = path / "generation_config.json"
        eos_extra: list[int] = []
        if gen.is_file():
            g = json.loads(gen.read_text())
            eos_extra = _as_list(g.get("eos_token_id"))
        return cls.from_hf(cfg, quantization=quant, extra_eos=eos_extra)

    @classmethod
    def from_hf(
        cls, cfg: dict[str, Any], quantization: dict | None = None, extra_eos: list[int] | None = None
    ) -> "ModelConfig":
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"config.json: model_type {model_type!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )

        def need(key: str, *alts: str) -> Any:
            for k in (key, *alts):
                if k in cfg and cfg[k] is not None:
                    return cfg[k]
            raise ConfigError(f"config.json: field {key!r} is missing (model_type {model_type})")

        hidden = int(need("hidden_size"))
        heads = int(need("num_attention_heads"))
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        layers = int(need("num_hidden_layers"))
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        rope_theta = float(cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0)
        rope_type = rope.get("rope_type") or rope.get("type") or "default"
        if rope_type not in ("default", None):
            raise ConfigError(f"config.json: rope type {rope_type!r} is not supported yet (only default RoPE)")
        partial = cfg.get("partial_rotary_factor") or rope.get("partial_rotary_factor")
        if cfg.get("rotary_dim"):
            rotary_dim = int(cfg["rotary_dim"])
        elif partial:
            rotary_dim = int(head_dim * float(partial))
        else:
            rotary_dim = head_dim
        if rotary_dim % 2 or not 0 < rotary_dim <= head_dim:
            raise ConfigError(f"config.json: rotary_dim {rotary_dim} must be even and within head_dim {head_dim}")
        if heads % kv_heads:
            raise ConfigError(f"config.json: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")

        eos = _as_list(cfg.get("eos_token_id")) + list(extra_eos or [])
        out = dict(
            model_type=model_type,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=int(cfg.get("intermediate_size") or 0),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rotary_dim=rotary_dim,
            max_position_embeddings=int(cfg.get("max_position_embeddings") or 4096),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", False)),
            torch_dtype=str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"),
            bos_token_id=cfg.get("bos_token_id") if isinstance(cfg.get("bos_token_id"), int) else None,
            eos_token_ids=tuple(dict.fromkeys(e for e in eos if isinstance(e, int))),
            quantization=quantization,
            hf_config=cfg,
        )
        if model_type == "qwen3":
            out["qk_norm"] = "per_head"
        elif model_type == "qwen3_moe":
            sparse_step = int(cfg.get("decoder_sparse_step", 1) or 1)
            mlp_only = set(cfg.get("mlp_only_layers") or [])
            out.update(
                qk_norm="per_head",
                num_experts=int(need("num_experts", "num_local_experts")),
                num_experts_per_tok=int(need("num_experts_per_tok")),
                moe_intermediate_size=int(need("moe_intermediate_size")),
                router="softmax",
                norm_topk_prob=bool(cfg.get("norm_topk_prob", True)),
                moe_layers=tuple(
                    i for i in range(layers) if i not in mlp_only and (i + 1) % sparse_step == 0
                ),
            )
        elif model_type == "mixtral":
            out.update(
                num_experts=int(need("num_local_experts")),
                num_experts_per_tok=int(need("num_experts_per_tok")),
                moe_intermediate_size=int(need("intermediate_size")),
                router="softmax",
                norm_topk_prob=True,
                moe_layers=tuple(range(layers)),
            )
        elif model_type == "minimax_m2":
            scoring = cfg.get("scoring_func", "sigmoid")
            if scoring != "sigmoid":
                raise ConfigError(f"config.json: minimax_m2 scoring_func {scoring!r} is not supported")
            out.update(
                qk_norm="full" if cfg.get("use_qk_norm", True) else "none",
                num_experts=int(need("num_local_experts")),
                num_experts_per_tok=int(need("num_experts_per_tok")),
                moe_intermediate_size=int(need("intermediate_size")),
                router="sigmoid",
                norm_topk_prob=True,
                router_correction_bias=bool(cfg.get("use_routing_bias", True)),
                moe_layers=tuple(range(layers)),
            )
        return cls(**out)

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__ if f != "hf_config"}  # type: ignore[attr-defined]


def _as_list(x: Any) -> list[int]:
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return [int(i) for i in x]
    return [int(x)]
