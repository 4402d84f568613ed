"""Read a quantized checkpoint back as plain weights: what its numbers mean, exactly.

`dequantized_weights` yields (module, weight) for every quantized module of an NVFP4 / FP8
checkpoint in any of the formats tenk reads; `dequantize_checkpoint` writes a plain
checkpoint (no quantization_config) that transformers loads, so a model running the
quantized format can be checked against the same model running these weights in fp32.
Both stream one module at a time.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import torch

from tenk.errors import CheckpointError, ConfigError
from tenk.quant.convert import tensor_adapter
from tenk.quant.formats import QuantConfig, detect_quant_config
from tenk.quant.fp8 import dequantize_fp8
from tenk.quant.nvfp4 import dequantize_nvfp4
from tenk.quant.safetensors_io import (
    DTYPE_NAMES,
    DTYPES,
    INDEX_NAME,
    OutTensor,
    ShardedWriter,
    TensorInfo,
    TensorReader,
    checkpoint_tensors,
)

_QUANTIZED_WEIGHTS = ("weight", "weight_packed")
_SCALES = {"weight_scale", "weight_scale_inv", "weight_scale_2", "weight_global_scale", "input_scale",
           "input_global_scale", "weight_zero_point", "input_zero_point", "weight_shape", "k_scale", "v_scale"}


def dequantize_params(params: dict[str, torch.Tensor], qcfg: QuantConfig, dtype: torch.dtype) -> torch.Tensor:
    """One module's tensors in tenk's in-memory convention (`weight`, `weight_scale`,
    `weight_scale_2`) -> its dequantized weight."""
    w = params["weight"]
    if w.dtype == torch.uint8:
        if "weight_scale" not in params or "weight_scale_2" not in params:
            raise CheckpointError("an NVFP4 weight needs weight_scale and weight_scale_2")
        return dequantize_nvfp4(w, params["weight_scale"], params["weight_scale_2"], dtype)
    if w.dtype == torch.float8_e4m3fn:
        if "weight_scale" not in params:
            raise CheckpointError("an FP8 weight needs its weight_scale")
        s = params["weight_scale"]
        if s.ndim == 1 and s.numel() == w.shape[0] and s.numel() > 1:  # per output channel
            return (w.float() * s.float().unsqueeze(1)).to(dtype)
        return dequantize_fp8(w, s, qcfg.weight_block_size, dtype)
    return w.to(dtype)


def _modules(infos: list[TensorInfo]) -> dict[str, dict[str, TensorInfo]]:
    mods: dict[str, dict[str, TensorInfo]] = defaultdict(dict)
    for info in infos:
        module, _, param = info.name.rpartition(".")
        mods[module][param] = info
    return mods


def _is_quantized(params: dict[str, TensorInfo]) -> bool:
    w = params.get("weight") or params.get("weight_packed")
    return w is not None and w.dtype in ("U8", "F8_E4M3")


def _dequantize_module(reader: TensorReader, params: dict[str, TensorInfo], adapt, qcfg: QuantConfig, dtype) -> torch.Tensor:
    loaded = {}
    for info in params.values():
        out = adapt(info.name, reader.read(info))
        if out is not None:
            loaded[out[0].rpartition(".")[2]] = out[1]
    return dequantize_params(loaded, qcfg, dtype)


def dequantized_weights(model_dir: str | Path, dtype: torch.dtype = torch.float32) -> Iterator[tuple[str, torch.Tensor]]:
    """(module name, dequantized weight) for every quantized module, in checkpoint order."""
    model_dir = Path(model_dir)
    qcfg = detect_quant_config(model_dir)
    if qcfg is None:
        raise ConfigError(f"{model_dir} is not a quantized checkpoint")
    adapt = tensor_adapter(qcfg)
    with TensorReader() as reader:
        for module, params in _modules(checkpoint_tensors(model_dir)).items():
            if _is_quantized(params):
                yield module, _dequantize_module(reader, params, adapt, qcfg, dtype)


def dequantize_checkpoint(src: str | Path, dst: str | Path, dtype: torch.dtype = torch.float32) -> QuantConfig:
    """Write SRC's weights dequantized (quantized modules) or cast (the rest of the float
    tensors) to `dtype` into DST, with config.json minus its quantization block."""
    src, dst = Path(src), Path(dst)
    qcfg = detect_quant_config(src)
    if qcfg is None:
        raise ConfigError(f"{src} is not a quantized checkpoint")
    adapt = tensor_adapter(qcfg)
    mods = _modules(checkpoint_tensors(src))
    out_dtype = DTYPE_NAMES[dtype]
    jobs: list[tuple[OutTensor, str, TensorInfo | None]] = []  # (output, module, source tensor or None = dequantize)
    for module, params in mods.items():
        quantized = _is_quantized(params)
        for param, info in params.items():
            if param in ("input_scale", "k_scale", "v_scale") or (quantized and param in _SCALES):
                continue  # activation / KV scales and the weight's own scales have no plain counterpart
            if quantized and param in _QUANTIZED_WEIGHTS:
                n, k = info.shape[0], info.shape[1] * (2 if info.dtype == "U8" else 1)
                jobs.append((OutTensor(f"{module}.weight", out_dtype, (n, k)), module, None))
            else:
                dt = out_dtype if info.dtype in ("BF16", "F16", "F32") else info.dtype
                jobs.append((OutTensor(info.name, dt, info.shape), module, info))
    writer = ShardedWriter(dst, [j[0] for j in jobs])
    try:
        with TensorReader() as reader:
            for spec, module, info in jobs:
                if info is None:
                    t = _dequantize_module(reader, mods[module], adapt, qcfg, dtype)
                else:
                    t = reader.read(info).to(DTYPES[spec.dtype])
                writer.write(spec.name, t)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    config = json.loads((src / "config.json").read_text())
    config.pop("quantization_config", None)
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for f in src.iterdir():
        if f.is_file() and f.name not in ("config.json", "hf_quant_config.json", INDEX_NAME) and not f.name.endswith(".safetensors"):
            shutil.copy2(f, dst / f.name)
    return qcfg
