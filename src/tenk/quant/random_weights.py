"""Random quantized checkpoints: the tensor list of a config with every targeted linear weight
replaced by what `tenk quantize` writes for it (NVFP4 in the ModelOpt layout, FP8 per-tensor or
block-128), filled with random codes and scales, and the same quantization_config.

No bf16 copy is ever made: the writer streams the 4-bit codes and scales directly, so an
8-layer MiniMax-M2 in NVFP4 (about 19 GB) is written in a few MB of RAM and takes a quarter of
the disk its bf16 source would. Dequantized weights come out near normal(0, 0.02), like the
bf16 writer's (tenk.models.checkpoint_writer.GLOBAL_SCALE).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tenk.errors import ConfigError
from tenk.models.checkpoint_specs import TensorSpec, checkpoint_tensor_specs
from tenk.models.checkpoint_writer import GLOBAL_SCALE, INIT_STD, WrittenCheckpoint, write_random_checkpoint
from tenk.quant.quantize import QuantizeOptions, _quant_configs, _quantized_outputs, choose_target, compress_exclude

_DTYPE = {"U8": "uint8", "F8_E4M3": "float8_e4m3fn", "F32": "float32"}


def _spec(name: str, dtype: str, shape: tuple[int, ...], weight_dtype: str) -> TensorSpec:
    param = name.rsplit(".", 1)[1]
    if param == "weight":
        return TensorSpec(name, shape, "bytes" if dtype == "uint8" else "unit_normal", dtype)
    if dtype == "float8_e4m3fn":  # NVFP4 block scales
        return TensorSpec(name, shape, "scale", dtype)
    # per-tensor global scale (NVFP4 weight_scale_2, FP8 weight_scale) or FP8 block scales
    value = GLOBAL_SCALE[weight_dtype] if param != "weight_scale_inv" else INIT_STD
    return TensorSpec(name, shape, "global_scale", dtype, value)


def quantized_specs(hf_config: dict[str, Any], opts: QuantizeOptions) -> tuple[list[TensorSpec], list[str], list[str]]:
    """(tensor specs in file order, quantized modules, 2-D weights kept in high precision)."""
    specs: list[TensorSpec] = []
    quantized: list[str] = []
    kept: list[str] = []
    for spec in checkpoint_tensor_specs(hf_config):
        module, _, param = spec.name.rpartition(".")
        if param != "weight" or len(spec.shape) != 2:
            specs.append(spec)
            continue
        if not choose_target(module, spec.shape, opts):
            kept.append(module)
            specs.append(spec)
            continue
        quantized.append(module)
        outs = _quantized_outputs(module, spec.shape[0], spec.shape[1], opts)
        weight_dtype = _DTYPE[outs[0].dtype]
        specs.extend(_spec(o.name, _DTYPE[o.dtype], tuple(o.shape), weight_dtype) for o in outs)
    return specs, quantized, kept


def write_random_quantized_checkpoint(hf_config: dict[str, Any], out_dir: str | Path, opts: QuantizeOptions,
                                      **writer_kwargs) -> WrittenCheckpoint:
    """write_random_checkpoint's files, with the weights `opts` targets in its format and the
    config (and hf_quant_config.json for ModelOpt formats) saying so, as `tenk quantize` writes."""
    specs, quantized, kept = quantized_specs(hf_config, opts)
    if not quantized:
        what = "routed experts" if opts.targets == "experts" else "linear layers"
        raise ConfigError(f"this model has no {what} to quantize (try --targets all-linear?)")
    excluded = kept + (["lm_head"] if not any(k.endswith("lm_head") for k in kept) else [])
    hf_quant, qc = _quant_configs(opts, compress_exclude(excluded, quantized))
    written = write_random_checkpoint(hf_config, out_dir, specs=specs, extra_config={"quantization_config": qc},
                                      **writer_kwargs)
    if hf_quant is not None:
        (Path(out_dir) / "hf_quant_config.json").write_text(json.dumps(hf_quant, indent=2) + "\n")
    return written


def quantized_nbytes(hf_config: dict[str, Any], opts: QuantizeOptions, dtype: str = "bf16") -> int:
    from tenk.models.checkpoint_writer import resolve_dtype, tensor_nbytes

    return sum(tensor_nbytes(s, resolve_dtype(dtype)) for s in quantized_specs(hf_config, opts)[0])
