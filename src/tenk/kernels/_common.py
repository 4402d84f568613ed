"""Small helpers shared by the Triton launchers (no kernels here)."""

from __future__ import annotations

import functools
import os

import torch

# fp8 e4m3 (the "fn" variant: no infinities) saturates here; values beyond become NaN in torch casts.
FP8_E4M3_MAX = 448.0


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of the tensor's GPU; a small stand-in on CPU (Triton interpreter runs)."""
    if device.type != "cuda":
        return 4
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in (torch.float8_e4m3fn, torch.float8_e5m2)


def scale_value(scale: float | torch.Tensor) -> float:
    """Per-tensor KV scales are fixed after loading, so they travel as Python floats (a CUDA graph
    bakes them in). Reading a tensor here would be a host sync, so tensors are refused."""
    if isinstance(scale, torch.Tensor):
        raise TypeError("pass KV-cache scales as Python floats (read them once at load time)")
    return float(scale)


@functools.lru_cache(maxsize=None)
def _pdl_capable(index: int) -> bool:
    # ROCm reports gfx9 parts as capability 9.x too; griddepcontrol is NVIDIA's
    return torch.version.hip is None and torch.cuda.get_device_capability(index)[0] >= 9


def use_pdl(device: torch.device) -> bool:
    """Launch a chain of dependent kernels with programmatic dependent launch (Hopper and later):
    each launch is set up while its predecessor drains, instead of after it. Every kernel launched
    this way calls _tiles.wait_prior_grid before it touches global memory. TENK_PDL=0 turns it off
    (read per call, so a benchmark can time both in one process)."""
    if device.type != "cuda" or os.environ.get("TENK_PDL", "1") == "0":
        return False
    return _pdl_capable(device.index if device.index is not None else torch.cuda.current_device())
