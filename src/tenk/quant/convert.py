"""Rename and rescale checkpoint tensors into tenk's in-memory convention (ModelOpt's), one
tensor at a time, so the model loader can call it while it streams shards.

    ModelOpt NVFP4:        weight (U8), weight_scale (E4M3), weight_scale_2 (F32 multiplier), input_scale
    compressed-tensors:    weight_packed -> weight, weight_scale -> weight_scale,
                           weight_global_scale (a divisor) -> weight_scale_2 = 1 / global,
                           input_global_scale (a divisor)  -> input_scale    = 1 / global
    HF FP8 (block):        weight_scale_inv -> weight_scale (same numbers: both are multipliers)
    ModelOpt FP8_PB_WO:    weight_scale [N/128, 1, K/128, 1] -> [N/128, K/128]

Per-tensor scales become 0-d tensors whatever shape the file used ([] or [1]). Input scales
are optional: tenk's Hopper kernels run W4A16 / W8A16 and never read them; a checkpoint that
lacks some (the public MiniMax-M2.7 NVFP4 one) loads the same.

`to_compressed_tensors` is the reverse map for NVFP4, used to hand tenk's output to the
compressed-tensors library (whose own checkpoints keep global scales as shape [1]).
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Iterator

import torch

from tenk.errors import CheckpointError
from tenk.quant.formats import COMPRESSED_TENSORS, HF_FP8, MODELOPT, QuantConfig

# (name, tensor) -> (name, tensor), or None to drop the tensor.
TensorAdapter = Callable[[str, torch.Tensor], "tuple[str, torch.Tensor] | None"]

_PER_TENSOR_SUFFIXES = ("weight_scale_2", "input_scale", "k_scale", "v_scale")


def _split(name: str) -> tuple[str, str]:
    module, _, param = name.rpartition(".")
    return module, param


def _scalar(name: str, t: torch.Tensor) -> torch.Tensor:
    if t.numel() != 1:
        raise CheckpointError(f"{name} should hold one number, it has shape {tuple(t.shape)}")
    return t.reshape(()).float()


def _reciprocal(name: str, t: torch.Tensor) -> torch.Tensor:
    t = _scalar(name, t)
    if not bool(torch.isfinite(t)) or float(t) == 0:
        raise CheckpointError(f"{name} is {float(t)}, it cannot be inverted into a scale")
    return torch.reciprocal(t)


def adapt_modelopt(name: str, t: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    module, param = _split(name)
    if param in _PER_TENSOR_SUFFIXES:
        return name, _scalar(name, t)
    if param == "weight_scale" and t.ndim == 4:  # FP8_PB_WO: [N/128, 1, K/128, 1]
        return name, t.reshape(t.shape[0], t.shape[2])
    if param == "weight_scale" and t.dtype == torch.float32 and t.ndim <= 1 and t.numel() == 1:  # FP8 per tensor
        return name, t.reshape(())
    return name, t


def adapt_compressed_tensors(name: str, t: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    module, param = _split(name)
    if param == "weight_packed":
        if t.dtype != torch.uint8:
            raise CheckpointError(f"{name} should be uint8 packed NVFP4, it is {t.dtype}")
        return f"{module}.weight", t
    if param == "weight_global_scale":
        return f"{module}.weight_scale_2", _reciprocal(name, t)
    if param == "input_global_scale":
        return f"{module}.input_scale", _reciprocal(name, t)
    if param in ("weight_zero_point", "input_zero_point"):
        if bool(torch.any(t.float() != 0)):
            raise CheckpointError(f"{name} is non-zero: asymmetric NVFP4 is not supported")
        return None
    if param == "weight_shape":  # older pack-quantized checkpoints store the unpacked shape
        return None
    if param in ("k_scale", "v_scale"):
        return name, _scalar(name, t)
    return name, t


def adapt_hf_fp8(name: str, t: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    module, param = _split(name)
    # A block scale keeps its 2-D shape even when it has one block (a 128x128 weight).
    if param == "weight_scale_inv":
        t = t.float()
        return f"{module}.weight_scale", t.reshape(()) if t.ndim <= 1 and t.numel() == 1 else t
    if param == "weight_scale" and t.ndim <= 1 and t.numel() == 1:
        return name, t.reshape(()).float()
    if param in _PER_TENSOR_SUFFIXES:
        return name, _scalar(name, t)
    return name, t


def tensor_adapter(qcfg: QuantConfig | None) -> TensorAdapter:
    """The per-tensor rename+transform for a checkpoint of this format (identity when None)."""
    if qcfg is None:
        return lambda name, t: (name, t)
    return {
        MODELOPT: adapt_modelopt,
        COMPRESSED_TENSORS: adapt_compressed_tensors,
        HF_FP8: adapt_hf_fp8,
    }[qcfg.checkpoint_format]


def adapt_tensors(
    qcfg: QuantConfig | None, tensors: Iterator[tuple[str, torch.Tensor]]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream (name, tensor) pairs through `tensor_adapter(qcfg)`, dropping what it drops."""
    adapt = tensor_adapter(qcfg)
    for name, t in tensors:
        out = adapt(name, t)
        if out is not None:
            yield out


# ---------------------------------------------------------------------- tenk -> compressed-tensors


_TO_CT = {"weight": "weight_packed", "weight_scale_2": "weight_global_scale", "input_scale": "input_global_scale"}


def ct_name(name: str, quantized: bool) -> str:
    """A ModelOpt NVFP4 tensor name -> its compressed-tensors name."""
    module, param = _split(name)
    return f"{module}.{_TO_CT[param]}" if quantized and param in _TO_CT else name


def to_compressed_tensors(name: str, t: torch.Tensor, quantized: bool) -> tuple[str, torch.Tensor]:
    """One tensor of a ModelOpt NVFP4 checkpoint -> its compressed-tensors name and value.
    `quantized` says whether `name`'s module is NVFP4 (its `weight` is packed). Global scales
    are divisors there, stored with shape [1]."""
    param = _split(name)[1]
    if quantized and param in ("weight_scale_2", "input_scale"):
        t = torch.reciprocal(t.float()).reshape(1)
    return ct_name(name, quantized), t


def compressed_tensors_config(qcfg: QuantConfig, has_input_scales: bool) -> dict:
    """config.json `quantization_config` that the compressed-tensors library reads for a
    checkpoint converted with `to_compressed_tensors`."""
    from tenk.quant.formats import NVFP4

    if qcfg.format != NVFP4:
        raise CheckpointError("only NVFP4 checkpoints convert to compressed-tensors")
    weights = {
        "num_bits": 4,
        "type": "float",
        "strategy": "tensor_group",
        "symmetric": True,
        "dynamic": False,
        "group_size": 16,
        "scale_dtype": "torch.float8_e4m3fn",
        "zp_dtype": "torch.float8_e4m3fn",
    }
    group: dict = {"targets": ["Linear"], "weights": weights, "format": "nvfp4-pack-quantized"}
    if has_input_scales:
        group["input_activations"] = {**weights, "dynamic": "local", "observer": "static_minmax"}
    return {
        "quant_method": "compressed-tensors",
        "format": "nvfp4-pack-quantized",
        "quantization_status": "compressed",
        "config_groups": {"group_0": group},
        "ignore": [modelopt_pattern_to_ct(p) for p in qcfg.exclude],
        "kv_cache_scheme": None,
    }


def modelopt_pattern_to_ct(pattern: str) -> str:
    """ModelOpt excludes are fnmatch wildcards; compressed-tensors' `ignore` takes exact names
    or "re:" regexes (matched with re.match)."""
    if pattern.startswith("re:") or not any(ch in pattern for ch in "*?["):
        return pattern
    return "re:" + fnmatch.translate(pattern)
