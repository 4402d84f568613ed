"""Weight bytes on one GPU of a tensor-parallel replica, computed from the checkpoint's exact
tensor shapes (`checkpoint_tensor_specs`) the way tenk's layers shard them:

- column parallel (q, k, v, w1/w3, gate/up): output rows split over ranks; with fewer kv heads
  than ranks each rank holds one whole kv head (replicated, as vLLM does);
- row parallel (o, w2, down): input columns split; their biases are kept whole;
- experts: every rank holds every expert's slice of the FFN dimension (I / tp);
- embedding and lm_head: vocab-parallel, ceil(vocab / tp) rows per rank (the last is padded);
- MiniMax-M2's full-width q/k norms follow their heads; per-head norms, layer norms, routers
  and the router bias are replicated.

tests/plan/test_weights.py checks the bf16 figures against the parameters of tenk's own
model built on the meta device, for every family and TP size.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from tenk.errors import ConfigError
from tenk.models.checkpoint_specs import TensorSpec
from tenk.models.config import ModelConfig
from tenk.plan.quant_schemes import HP, F_FP8_BLOCK, QuantScheme, quantized_bytes, shard_alignment

_ITEMSIZE = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
_INDEX = re.compile(r"\.\d+\.")

GROUPS = ("embedding", "attention", "experts", "mlp", "router", "norms", "lm_head")


def itemsize(dtype: str) -> int:
    if dtype not in _ITEMSIZE:
        raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(_ITEMSIZE)}")
    return _ITEMSIZE[dtype]


@dataclass(frozen=True, slots=True)
class _Kind:
    """Specs that shard and cost the same: one row per (role, shape, format) with a count."""

    group: str
    role: str  # "vocab" | "col" | "col_kv" | "row" | "rep"
    shape: tuple[int, ...]
    fmt: str
    spec_dtype: str | None


@dataclass(slots=True)
class WeightsPerGpu:
    """What one GPU of a TP group holds, in bytes, and what a decode step touches."""

    tp: int
    scheme: str
    by_group: dict[str, int] = field(default_factory=dict)
    matmul_params_dense: int = 0  # local elements of every 2-D weight a token always multiplies
    matmul_params_experts: int = 0  # local elements of all routed experts (a token uses top_k/E)
    embedding_row_bytes: int = 0  # one embedding row: what a token's lookup reads
    problems: list[str] = field(default_factory=list)  # why this TP cannot shard this checkpoint

    @property
    def total(self) -> int:
        return sum(self.by_group.values())

    @property
    def experts(self) -> int:
        return self.by_group.get("experts", 0)

    @property
    def dense(self) -> int:
        """Bytes every decode step reads in full: all but embeddings and routed experts."""
        return self.total - self.experts - self.by_group.get("embedding", 0)


def _group_role(name: str, shape: tuple[int, ...], mc: ModelConfig) -> tuple[str, str]:
    if name == "model.embed_tokens.weight":
        return "embedding", "vocab"
    if name == "lm_head.weight":
        return "lm_head", "vocab"
    if "layernorm" in name or name == "model.norm.weight":
        return "norms", "rep"
    if ".self_attn." in name:
        if name.endswith(("q_norm.weight", "k_norm.weight")):
            if shape[0] == mc.head_dim and mc.qk_norm != "full":  # per-head norm, shared by all heads
                return "norms", "rep"
            return "norms", "col_kv" if ".k_norm." in name else "col"
        if ".o_proj." in name:
            return "attention", "row" if name.endswith(".weight") else "rep"
        if ".k_proj." in name or ".v_proj." in name:
            return "attention", "col_kv"
        return "attention", "col"
    if name.endswith((".gate.weight", ".e_score_correction_bias")):  # MoE router (not gate_proj)
        return "router", "rep"
    group = "experts" if ".experts." in name else "mlp"
    if any(p in name for p in (".w2.", ".down_proj.")):
        return group, "row" if name.endswith(".weight") else "rep"
    return group, "col"


def kinds_for(specs: list[TensorSpec], mc: ModelConfig, scheme: QuantScheme) -> Counter:
    """Aggregate the checkpoint's tensors (`checkpoint_tensor_specs(hf_config)`) into
    (kind -> count); the format decision is per module name, so a scheme that excludes single
    layers is honoured."""
    kinds: Counter = Counter()
    role_cache: dict[tuple[str, tuple[int, ...]], tuple[str, str]] = {}
    for s in specs:
        key = (_INDEX.sub(".N.", s.name), s.shape)
        if key not in role_cache:
            role_cache[key] = _group_role(s.name, s.shape, mc)
        group, role = role_cache[key]
        fmt = HP
        if s.name.endswith(".weight") and len(s.shape) == 2:
            fmt = scheme.format_of(s.name[: -len(".weight")], s.shape)
        kinds[_Kind(group, role, s.shape, fmt, s.dtype)] += 1
    return kinds


def _local_shape(kind: _Kind, mc: ModelConfig, tp: int) -> tuple[int, ...]:
    shape = kind.shape
    if tp == 1 or kind.role == "rep":
        return shape
    if kind.role == "vocab":
        return (-(-shape[0] // tp),) + shape[1:]
    if kind.role == "col_kv" and mc.num_kv_heads < tp:
        return (shape[0] // mc.num_kv_heads,) + shape[1:]  # one whole kv head per rank
    if kind.role in ("col", "col_kv"):
        return (shape[0] // tp,) + shape[1:]
    return shape[:1] + (shape[1] // tp,)  # row parallel: input features split


def tp_problems(mc: ModelConfig, tp: int) -> list[str]:
    """Why tenk's layers cannot split this model `tp` ways (the same divisions they make)."""
    out = []
    if mc.num_heads % tp:
        out.append(f"{mc.num_heads} attention heads do not split over {tp} GPUs")
    kv = mc.num_kv_heads
    if (kv >= tp and kv % tp) or (kv < tp and tp % kv):
        out.append(f"{kv} kv heads do not split over (or replicate onto) {tp} GPUs")
    if mc.is_moe and mc.moe_intermediate_size % tp:
        out.append(f"expert FFN width {mc.moe_intermediate_size} does not split over {tp} GPUs")
    if mc.intermediate_size and len(mc.moe_layers) < mc.num_layers and mc.intermediate_size % tp:
        out.append(f"MLP width {mc.intermediate_size} does not split over {tp} GPUs")
    return out


def weights_per_gpu(kinds: Counter, mc: ModelConfig, tp: int, dtype: str, scheme_name: str) -> WeightsPerGpu:
    """Bytes on one GPU for a replica of `tp` GPUs. `dtype` is the high-precision dtype the
    engine keeps unquantized weights in (bf16 on GPU)."""
    out = WeightsPerGpu(tp=tp, scheme=scheme_name, by_group={g: 0 for g in GROUPS})
    out.problems = tp_problems(mc, tp)
    if out.problems:
        return out
    hp_size = itemsize(dtype)
    for kind, count in kinds.items():
        local = _local_shape(kind, mc, tp)
        numel = 1
        for d in local:
            numel *= d
        if kind.fmt == HP:
            nbytes = numel * (itemsize(kind.spec_dtype) if kind.spec_dtype else hp_size)
        else:
            n, k = local
            align = shard_alignment(kind.fmt)
            sharded_dim = None
            if tp > 1 and kind.role == "row":
                sharded_dim = ("input", k)
            elif tp > 1 and kind.role in ("col", "col_kv") and kind.fmt == F_FP8_BLOCK:
                sharded_dim = ("output", n)
            if sharded_dim and sharded_dim[1] % align:
                msg = (f"{kind.fmt} {kind.group} weights of shape {kind.shape} split {tp} ways leave "
                       f"{sharded_dim[1]} {sharded_dim[0]} features per GPU, not a multiple of {align}")
                if msg not in out.problems:
                    out.problems.append(msg)
            nbytes = quantized_bytes(kind.fmt, n, k)
        out.by_group[kind.group] += nbytes * count
        if len(local) == 2 and kind.group != "embedding":
            if kind.group == "experts":
                out.matmul_params_experts += numel * count
            else:
                out.matmul_params_dense += numel * count
    out.embedding_row_bytes = mc.hidden_size * hp_size
    return out


def rope_table_bytes(mc: ModelConfig) -> int:
    """The engine's RoPE cos/sin table: one fp32 [max_position_embeddings, rotary_dim] buffer
    shared by every attention layer (tenk.models.layers.rotary). For MiniMax-M2 that is
    196,608 x 64 x 4 B = 50 MB per GPU, whatever the TP size."""
    return mc.max_position_embeddings * mc.rotary_dim * 4
