"""NVFP4 and FP8 linear / MoE methods (the LinearMethod / MoEMethod protocols of quant/base.py).

Parameters are named as in ModelOpt checkpoints, so the loader's rename table is the same as
for bf16 weights (`...q_proj.weight_scale_2` -> `qkv_proj.weight_scale_2`, shard "q").
Each carries the attributes the layers' generic weight loaders read:

    output_dim / input_dim   which dims are split by tensor parallelism (weights and block scales
                             alike: a packed [N, K/2] weight and its [N, K/16] scales shard the same way)
    per_shard = True         a per-tensor scale, one entry per fused shard (q, k, v / gate, up)
    optional = True          input scales: tenk's kernels are weight-only, a checkpoint may lack them
    dummy_fill               what `--load-format dummy` writes, so random weights keep a sane size

MoE per-tensor scales are [E, 2] for w13 (w1 and w3 each their own, never merged) and [E] for w2.
Compute goes through tenk.quant.ops, one function per format.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tenk.errors import ConfigError
from tenk.quant import ops
from tenk.quant.formats import FP8, NVFP4, QuantConfig
from tenk.quant.nvfp4 import GROUP_SIZE

_NVFP4_DUMMY_GLOBAL = 0.01  # random codes (rms ~2.9) x E4M3 scales ~0.75 x this ~= 0.02, like a trained layer


def _param(layer: nn.Module, name: str, data: torch.Tensor, **attrs) -> nn.Parameter:
    p = nn.Parameter(data, requires_grad=False)
    for k, v in attrs.items():
        setattr(p, k, v)
    layer.register_parameter(name, p)
    return p


def _fill(value: float):
    return lambda p, g: p.data.fill_(value)


def _fill_fp8_weight(p: torch.Tensor, g: torch.Generator, chunk_elems: int = 64 << 20) -> None:
    """Unit normals in E4M3, made a few rows at a time: a MiniMax-M2 expert tensor holds over a
    billion values, and one fp32 temporary for it would take 5 GB of the GPU."""
    rows = p.data.view(-1, p.shape[-1]) if p.dim() > 1 else p.data.view(1, -1)
    step = max(1, chunk_elems // max(1, rows.shape[1]))
    for r in range(0, rows.shape[0], step):
        part = rows[r : r + step]
        part.copy_(torch.randn(part.shape, generator=g, device=p.device).clamp_(-448, 448).to(p.dtype))


def _relayout_for_kernels(layer: nn.Module, weight_name: str, scale_name: str) -> None:
    """On CUDA, re-lay a packed NVFP4 weight and its block scales once into the Triton kernels'
    layout (same bytes; tenk.kernels.nvfp4_gemm.pack_for_kernel). CPU weights keep the ModelOpt
    layout that the torch reference reads."""
    w, s = getattr(layer, weight_name), getattr(layer, scale_name)
    if not w.is_cuda or w.dtype != torch.uint8 or (w.shape[-1] * 2) % 64:
        return
    from tenk.kernels.nvfp4_gemm import pack_for_kernel

    w.data, s.data = pack_for_kernel(w.data, s.data)


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


# -------------------------------------------------------------------------------- NVFP4 linear


class Nvfp4LinearMethod:
    def create_weights(self, layer, input_size, output_partition_sizes, params_dtype):
        n, k, s = sum(output_partition_sizes), input_size, len(output_partition_sizes)
        _require(k % GROUP_SIZE == 0, f"NVFP4 needs each rank's input width divisible by 16, got {k}")
        _require(all(o % 2 == 0 for o in output_partition_sizes), f"NVFP4 shard widths must be even, got {output_partition_sizes}")
        _param(layer, "weight", torch.zeros(n, k // 2, dtype=torch.uint8), output_dim=0, input_dim=1)
        _param(layer, "weight_scale", torch.zeros(n, k // GROUP_SIZE, dtype=torch.float8_e4m3fn), output_dim=0, input_dim=1)
        _param(layer, "weight_scale_2", torch.full((s,), math.nan), output_dim=None, per_shard=True,
               dummy_fill=_fill(_NVFP4_DUMMY_GLOBAL))
        _param(layer, "input_scale", torch.ones(s), output_dim=None, per_shard=True, optional=True, dummy_fill=_fill(1.0))
        layer.shard_sizes = list(output_partition_sizes)

    def process_weights_after_loading(self, layer):
        if torch.isnan(layer.weight_scale_2).any():
            raise ConfigError("an NVFP4 layer was left without its weight_scale_2")
        if len(layer.shard_sizes) <= 3:  # the kernel takes up to three per-shard global scales (q|k|v)
            _relayout_for_kernels(layer, "weight", "weight_scale")

    def apply(self, layer, x, bias=None):
        return ops.nvfp4_linear(x, layer.weight, layer.weight_scale, layer.weight_scale_2, layer.shard_sizes, bias)


def _tile_experts(layer: nn.Module) -> None:
    """Re-laid experts go on into expert tiles (tenk.kernels.nvfp4_moe.tile_moe_experts: the decode
    GEMMs stream them in contiguous chunks) where whole tiles fit."""
    from tenk.kernels.nvfp4_moe import tile_moe_experts

    names = ("w13_weight", "w13_weight_scale", "w2_weight", "w2_weight_scale")
    params = [getattr(layer, n) for n in names]
    for p, t in zip(params, tile_moe_experts(*(p.data for p in params), getattr(layer, "top_k", 8))):
        p.data = t


# ----------------------------------------------------------------------------------- NVFP4 MoE


class Nvfp4MoEMethod:
    def create_weights(self, layer, num_experts, hidden_size, intermediate_size, params_dtype):
        e, h, i = num_experts, hidden_size, intermediate_size
        _require(h % GROUP_SIZE == 0 and i % GROUP_SIZE == 0,
                 f"NVFP4 experts need hidden ({h}) and per-rank FFN width ({i}) divisible by 16")
        _param(layer, "w13_weight", torch.zeros(e, 2 * i, h // 2, dtype=torch.uint8))
        _param(layer, "w13_weight_scale", torch.zeros(e, 2 * i, h // GROUP_SIZE, dtype=torch.float8_e4m3fn))
        _param(layer, "w13_weight_scale_2", torch.full((e, 2), math.nan), dummy_fill=_fill(_NVFP4_DUMMY_GLOBAL))
        _param(layer, "w13_input_scale", torch.ones(e, 2), optional=True, dummy_fill=_fill(1.0))
        _param(layer, "w2_weight", torch.zeros(e, h, i // 2, dtype=torch.uint8))
        _param(layer, "w2_weight_scale", torch.zeros(e, h, i // GROUP_SIZE, dtype=torch.float8_e4m3fn))
        _param(layer, "w2_weight_scale_2", torch.full((e,), math.nan), dummy_fill=_fill(_NVFP4_DUMMY_GLOBAL))
        _param(layer, "w2_input_scale", torch.ones(e), optional=True, dummy_fill=_fill(1.0))

    def process_weights_after_loading(self, layer):
        if torch.isnan(layer.w13_weight_scale_2).any() or torch.isnan(layer.w2_weight_scale_2).any():
            raise ConfigError("an NVFP4 expert was left without its weight_scale_2")
        if (layer.w13_weight.shape[-1] * 2) % 64 == 0 and (layer.w2_weight.shape[-1] * 2) % 64 == 0:
            _relayout_for_kernels(layer, "w13_weight", "w13_weight_scale")  # both or neither: ops
            _relayout_for_kernels(layer, "w2_weight", "w2_weight_scale")  # dispatches on the pair
            _tile_experts(layer)

    def apply(self, layer, x, topk_weights, topk_ids):
        return ops.nvfp4_moe(
            x, layer.w13_weight, layer.w13_weight_scale, layer.w13_weight_scale_2,
            layer.w2_weight, layer.w2_weight_scale, layer.w2_weight_scale_2, topk_weights, topk_ids,
        )


# ---------------------------------------------------------------------------------- FP8 linear


class Fp8LinearMethod:
    """scheme "tensor": weight_scale [S] per fused shard; "channel": [N]; "block": [N/bn, K/bk]."""

    def __init__(self, scheme: str = "tensor", block: tuple[int, int] = (128, 128)):
        self.scheme, self.block = scheme, tuple(block)

    def create_weights(self, layer, input_size, output_partition_sizes, params_dtype):
        n, k, s = sum(output_partition_sizes), input_size, len(output_partition_sizes)
        _param(layer, "weight", torch.zeros(n, k, dtype=torch.float8_e4m3fn), output_dim=0, input_dim=1,
               dummy_fill=_fill_fp8_weight)
        if self.scheme == "block":
            bn, bk = self.block
            _require(all(o % bn == 0 for o in output_partition_sizes) and k % bk == 0,
                     f"block FP8 needs every rank's shard widths {output_partition_sizes} divisible by {bn} "
                     f"and its input width {k} by {bk} (as vLLM asks too); quantize per tensor "
                     f"(`tenk quantize --fp8-scheme tensor`), or with tensor parallelism a smaller size may fit")
            scale = torch.full((n // bn, k // bk), math.nan)
            _param(layer, "weight_scale", scale, output_dim=0, input_dim=1, dummy_fill=_fill(0.02))
        elif self.scheme == "channel":
            _param(layer, "weight_scale", torch.full((n,), math.nan), output_dim=0, input_dim=None, dummy_fill=_fill(0.02))
        else:
            _param(layer, "weight_scale", torch.full((s,), math.nan), output_dim=None, per_shard=True, dummy_fill=_fill(0.02))
        _param(layer, "input_scale", torch.ones(s), output_dim=None, per_shard=True, optional=True, dummy_fill=_fill(1.0))
        layer.shard_sizes = list(output_partition_sizes)

    def process_weights_after_loading(self, layer):
        if torch.isnan(layer.weight_scale).any():
            raise ConfigError("an FP8 layer was left without its weight_scale")

    def apply(self, layer, x, bias=None):
        return ops.fp8_linear(x, layer.weight, layer.weight_scale, self.scheme, layer.shard_sizes, bias, self.block)


# ------------------------------------------------------------------------------------- FP8 MoE


class Fp8MoEMethod:
    def __init__(self, scheme: str = "tensor", block: tuple[int, int] = (128, 128)):
        if scheme not in ("tensor", "block"):
            raise ConfigError(f"FP8 experts with per-{scheme} scales are not supported")
        self.scheme, self.block = scheme, tuple(block)

    def create_weights(self, layer, num_experts, hidden_size, intermediate_size, params_dtype):
        e, h, i = num_experts, hidden_size, intermediate_size
        _param(layer, "w13_weight", torch.zeros(e, 2 * i, h, dtype=torch.float8_e4m3fn), dummy_fill=_fill_fp8_weight)
        _param(layer, "w2_weight", torch.zeros(e, h, i, dtype=torch.float8_e4m3fn), dummy_fill=_fill_fp8_weight)
        if self.scheme == "block":
            bn, bk = self.block
            _require(i % bn == 0 and i % bk == 0 and h % bn == 0 and h % bk == 0,
                     f"block FP8 experts need the per-rank FFN width ({i}) and hidden size ({h}) divisible by "
                     f"{bn}; use a smaller tensor-parallel size or expert parallelism")
            _param(layer, "w13_weight_scale", torch.full((e, 2 * i // bn, h // bk), math.nan), dummy_fill=_fill(0.02))
            _param(layer, "w2_weight_scale", torch.full((e, h // bn, i // bk), math.nan), dummy_fill=_fill(0.02))
        else:
            _param(layer, "w13_weight_scale", torch.full((e, 2), math.nan), dummy_fill=_fill(0.02))
            _param(layer, "w2_weight_scale", torch.full((e,), math.nan), dummy_fill=_fill(0.02))
        _param(layer, "w13_input_scale", torch.ones(e, 2), optional=True, dummy_fill=_fill(1.0))
        _param(layer, "w2_input_scale", torch.ones(e), optional=True, dummy_fill=_fill(1.0))

    def process_weights_after_loading(self, layer):
        if torch.isnan(layer.w13_weight_scale).any() or torch.isnan(layer.w2_weight_scale).any():
            raise ConfigError("an FP8 expert was left without its weight_scale")

    def apply(self, layer, x, topk_weights, topk_ids):
        return ops.fp8_moe(
            x, layer.w13_weight, layer.w13_weight_scale, layer.w2_weight, layer.w2_weight_scale,
            topk_weights, topk_ids, self.scheme, self.block,
        )


# ------------------------------------------------------------------------------------- factory

# tenk's MoE layer is `<layer>.mlp.experts`; checkpoints name one expert's projections thus:
_EXPERT_ALIASES = ("{p}.0.gate_proj", "{p}.0.up_proj", "{p}.0.down_proj", "{b}.0.w1", "{b}.0.w3", "{b}.0.w2")


def get_quant_method(quant_config: QuantConfig | None, layer_kind: str, prefix: str):
    """The method for one layer: None (the layer's unquantized default) when the checkpoint
    leaves it in high precision. `layer_kind` is "linear" or "moe"; `prefix` is tenk's module
    name (`model.layers.0.self_attn.qkv_proj`, `model.layers.0.mlp.experts`)."""
    if quant_config is None:
        return None
    if layer_kind == "linear":
        if not quant_config.is_quantized(prefix):
            return None
        if quant_config.format == NVFP4:
            return Nvfp4LinearMethod()
        return Fp8LinearMethod(quant_config.fp8_scheme, quant_config.weight_block_size or (128, 128))
    if layer_kind == "moe":
        block_name = prefix.replace(".mlp.experts", ".block_sparse_moe.experts")
        names = [a.format(p=prefix, b=block_name) for a in _EXPERT_ALIASES]
        if not quant_config.is_quantized_any(names):
            return None
        if quant_config.format == NVFP4:
            return Nvfp4MoEMethod()
        if quant_config.format == FP8:
            return Fp8MoEMethod(quant_config.fp8_scheme, quant_config.weight_block_size or (128, 128))
    return None


def quant_factory(quant_config: QuantConfig | None):
    """`(layer_kind, prefix) -> method or None`, the callable the model constructors take."""
    if quant_config is None:
        return None
    return lambda layer_kind, prefix: get_quant_method(quant_config, layer_kind, prefix)


def weight_bytes_by_format(model: nn.Module) -> dict[str, int]:
    """Bytes of parameters per storage format, for the start-up log: {"nvfp4": ..., "bfloat16": ...}.
    A quantized layer's scales count with its format; everything else under its dtype."""
    names = {Nvfp4LinearMethod: "nvfp4", Nvfp4MoEMethod: "nvfp4", Fp8LinearMethod: "fp8", Fp8MoEMethod: "fp8"}
    out: dict[str, int] = {}
    seen: set[int] = set()
    for mod in model.modules():
        fmt = names.get(type(getattr(mod, "quant_method", None)))
        for p in mod.parameters(recurse=False):
            if id(p) in seen:  # tied embeddings count once
                continue
            seen.add(id(p))
            key = fmt or str(p.dtype).removeprefix("torch.")
            out[key] = out.get(key, 0) + p.numel() * p.element_size()
    return out
