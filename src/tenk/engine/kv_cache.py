"""KV cache sizing and allocation.

`kv_cache_num_blocks` is a pure function of the model shape and a memory budget, so `tenk plan`
prints exactly what the engine will allocate. Per layer the cache is K and V, each
`[num_blocks, block_size, num_kv_heads_per_rank, head_dim]`; one block therefore costs
2 * layers * block_size * kv_heads_per_rank * head_dim * dtype bytes. The dtype is the cache's
(`kv_cache_torch_dtype`): the model's, or fp8 e4m3 at one byte, which holds twice the tokens."""

from __future__ import annotations

import torch

from tenk.engine.kv_cache_dtype import check_kv_cache_dtype
from tenk.models.config import ModelConfig

CPU_DEFAULT_KV_BYTES = 1 << 30  # CPU without a configured size: at most 1 GiB of KV


def kv_cache_torch_dtype(kv_cache_dtype: str, model_dtype: torch.dtype) -> torch.dtype:
    """`--kv-cache-dtype` as a torch dtype: "auto" is the model's dtype, "fp8"/"fp8_e4m3" e4m3."""
    if check_kv_cache_dtype(kv_cache_dtype) == "auto":
        return model_dtype
    return torch.float8_e4m3fn


def kv_heads_per_rank(model_config: ModelConfig, tp_size: int = 1) -> int:
    # With fewer kv heads than ranks, heads are replicated: every rank holds one.
    return max(1, model_config.num_kv_heads // tp_size)


def kv_block_bytes(model_config: ModelConfig, block_size: int, dtype: torch.dtype, tp_size: int = 1) -> int:
    itemsize = torch.empty((), dtype=dtype).element_size()
    heads = kv_heads_per_rank(model_config, tp_size)
    return 2 * model_config.num_layers * block_size * heads * model_config.head_dim * itemsize


def kv_cache_num_blocks(
    model_config: ModelConfig,
    *,
    dtype: torch.dtype,
    block_size: int,
    tp_size: int = 1,
    gpu_memory_utilization: float = 0.9,
    total_bytes: int | None = None,
    used_bytes: int = 0,
    kv_cache_memory_bytes: int | None = None,
    num_kv_blocks: int | None = None,
    max_num_seqs: int = 256,
    max_model_len: int = 8192,
) -> int:
    """How many KV blocks one rank gets.

    - `num_kv_blocks` set: exactly that many.
    - `kv_cache_memory_bytes` set: as many as fit in it.
    - `total_bytes` set (a GPU): `total_bytes * gpu_memory_utilization - used_bytes`, where
      used_bytes is what the rank already needs (weights, peak activations, other processes).
    - otherwise (CPU): enough for max_num_seqs full-length sequences, at most 1 GiB.
    """
    if num_kv_blocks is not None:
        return int(num_kv_blocks)
    per_block = kv_block_bytes(model_config, block_size, dtype, tp_size)
    if kv_cache_memory_bytes is not None:
        budget = kv_cache_memory_bytes
    elif total_bytes is not None:
        budget = total_bytes * gpu_memory_utilization - used_bytes
    else:
        want_tokens = max_num_seqs * max_model_len
        budget = min(CPU_DEFAULT_KV_BYTES, want_tokens * per_block // block_size + per_block)
    return max(0, int(budget // per_block))


def allocate_kv_cache(
    num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
    dtype: torch.dtype, device: torch.device,
) -> torch.Tensor:
    """One tensor [2, layers, blocks, block_size, kv_heads, head_dim]; [0, l] is layer l's K.
    Zeroed on the GPU so padded CUDA-graph rows read finite values; on the CPU the torch
    reference only reads slots it wrote, and zeroing a large pool would cost seconds."""
    shape = (2, num_layers, num_blocks, block_size, num_kv_heads, head_dim)
    if device.type == "cuda":
        return torch.zeros(shape, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)
