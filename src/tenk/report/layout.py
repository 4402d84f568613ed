"""The `config.layout` block (FORMAT.md) of a served configuration: one GPU's (on CPU: one
replica's) weights, KV cache, reserve and capacity, from the checkpoint and from what the
running engine reported.

- weights: every checkpoint tensor as the engine holds it: floating-point tensors in the
  engine's dtype, packed ones (NVFP4 U8, FP8, scales) at their stored size, divided by TP.
  `--load-format dummy` has no files: the model's tensor list gives the sizes, routed experts
  at NVFP4's size when the config declares NVFP4 (what `tenk quantize` would write).
- KV cache: the blocks the engine allocated x the bytes of one block (tenk.engine.kv_cache).
- reserve (GPU only): device memory the engine process took beyond weights and KV cache
  (activation workspace, CUDA graphs, its CUDA context), measured around its start.
"""

from __future__ import annotations

import json
from pathlib import Path

_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}


def weights_bytes(model_dir: str | Path, dtype: str) -> int:
    """Bytes of weights one unsharded replica holds when it computes in `dtype`."""
    from tenk.quant.safetensors_io import checkpoint_tensors

    itemsize = _ITEMSIZE[dtype]
    if any(Path(model_dir).glob("*.safetensors")):
        tensors = checkpoint_tensors(model_dir)
        # quantization scales keep their stored precision; other floats take the compute dtype
        return sum(
            (t.nbytes // _stored_itemsize(t.dtype)) * itemsize
            if t.dtype in _FLOAT_DTYPES and "scale" not in t.name.rsplit(".", 1)[-1] else t.nbytes
            for t in tensors
        )
    # no files (a dummy-weights folder): sizes from the model's tensor list
    from tenk.models.checkpoint_specs import checkpoint_tensor_specs

    config = json.loads((Path(model_dir) / "config.json").read_text())
    q = config.get("quantization_config") or {}
    nvfp4 = str(q.get("quant_algo", "")).upper() == "NVFP4"
    total = 0
    for s in checkpoint_tensor_specs(config):
        if nvfp4 and ".experts." in s.name and s.name.endswith(".weight") and len(s.shape) == 2:
            # what `tenk quantize` writes for a routed expert: packed E2M1 pairs, one E4M3 scale
            # per 16 values, one fp32 global scale
            total += s.numel // 2 + s.numel // 16 + 4
        else:
            total += s.numel * itemsize
    return total


def _stored_itemsize(st_dtype: str) -> int:
    return {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}[st_dtype]


def kv_bytes(model_dir: str | Path, num_blocks: int, block_size: int, dtype: str, tp: int = 1) -> int:
    import torch

    from tenk.engine.kv_cache import kv_block_bytes
    from tenk.models.config import ModelConfig

    cfg = ModelConfig.from_dir(str(model_dir))
    return num_blocks * kv_block_bytes(cfg, block_size, getattr(torch, dtype), tp)


def layout_block(*, model_dir: str | Path, dtype: str, block_size: int, info: dict, tp: int, dp: int,
                 quantization: str, weights: int | None = None) -> dict:  # fmt: skip
    """The layout block of `dp` identical replicas of `tp` GPUs each; `info` is what
    Replica.info reported for one of them."""
    w = weights if weights is not None else weights_bytes(model_dir, dtype) // tp
    kv = kv_bytes(model_dir, info["num_kv_blocks"], block_size, dtype, tp)
    block = {
        "tp": tp, "dp": dp, "device": info["device"], "quantization": quantization, "dtype": dtype,
        "weights_bytes_per_gpu": w, "kv_bytes_per_gpu": kv, "kv_tokens": info["kv_capacity_tokens"],
    }  # fmt: skip
    if info["device"] == "cuda":
        block.update(
            gpus=tp * dp, gpu_name=info.get("gpu_name"), gpu_memory_bytes=info.get("gpu_memory_bytes"),
            reserve_bytes_per_gpu=max(0, info.get("engine_bytes", 0) // tp - w - kv),
        )  # fmt: skip
    return block
