"""Rotary position embedding, neox style (rotate half), over the first rotary_dim dims of each head.

q [T, Hq, D] and k [T, Hkv, D] (views of the qkv output are fine: any token/head stride, D
contiguous) are rotated *in place* and returned. Dims past rotary_dim pass through untouched, which
is partial rotary (MiniMax-M2 rotates 64 of 128).

cos_sin_cache [max_position, rotary_dim]: cos of the rotary_dim/2 frequencies, then their sin, as
vLLM lays it out; `rope_cos_sin_cache` builds it the way transformers' default RoPE computes cos/sin
(fp32). The torch path rounds like transformers' `q * cos + rotate_half(q) * sin` in the model
dtype: cos/sin cast to the dtype of q, each product rounded, then the sum rounded. The Triton path
writes the same roundings, but on sm_90 LLVM narrows them to bf16 operations and contracts one
product with the sum into an FMA, so a bf16 element can differ from transformers' by rounding.
"""

from __future__ import annotations

import torch

from tenk.kernels._common import next_pow2, use_pdl
from tenk.kernels._tiles import wait_prior_grid
from tenk.kernels._triton import tl, triton

# Tests set it to run the Triton path on CPU tensors (under tenk.kernels.interpret.triton_interpreter).
FORCE_TRITON = False


def rope_cos_sin_cache(rotary_dim: int, max_position: int, base: float, device=None) -> torch.Tensor:
    """Default (unscaled) RoPE table, fp32 [max_position, rotary_dim] = [cos | sin]."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))
    freqs = torch.arange(max_position, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(device)


@triton.jit
def _rotate(x_ptr, t, s_t, s_h, heads, cos, sin, c, c_ok,
            HALF: tl.constexpr, H_PAD: tl.constexpr):
    h = tl.arange(0, H_PAD)
    m = (h < heads)[:, None] & c_ok[None, :]
    p = x_ptr + t * s_t + h[:, None] * s_h + c[None, :]
    dtype = x_ptr.dtype.element_ty
    x1 = tl.load(p, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(p + HALF, mask=m, other=0.0).to(tl.float32)
    o1 = (x1 * cos).to(dtype).to(tl.float32) - (x2 * sin).to(dtype).to(tl.float32)
    o2 = (x2 * cos).to(dtype).to(tl.float32) + (x1 * sin).to(dtype).to(tl.float32)
    tl.store(p, o1.to(dtype), mask=m)
    tl.store(p + HALF, o2.to(dtype), mask=m)


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, pos_ptr, cache_ptr,
    s_qt, s_qh, s_kt, s_kh, s_ct, HQ, HKV,
    HALF: tl.constexpr, HALF_PAD: tl.constexpr, HQ_PAD: tl.constexpr, HKV_PAD: tl.constexpr, PDL: tl.constexpr,
):
    wait_prior_grid(PDL)
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    c = tl.arange(0, HALF_PAD)
    c_ok = c < HALF
    dtype = q_ptr.dtype.element_ty
    cos = tl.load(cache_ptr + pos * s_ct + c, mask=c_ok, other=0.0).to(dtype).to(tl.float32)[None, :]
    sin = tl.load(cache_ptr + pos * s_ct + HALF + c, mask=c_ok, other=0.0).to(dtype).to(tl.float32)[None, :]
    _rotate(q_ptr, t, s_qt, s_qh, HQ, cos, sin, c, c_ok, HALF, HQ_PAD)
    _rotate(k_ptr, t, s_kt, s_kh, HKV, cos, sin, c, c_ok, HALF, HKV_PAD)


def _check(q, k, positions, cos_sin_cache, rotary_dim) -> None:
    if q.dim() != 3 or k.dim() != 3 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"q and k must be [T, heads, head_dim], got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.dtype != k.dtype:
        raise ValueError("q and k must have the same dtype")
    if rotary_dim % 2 or not 0 < rotary_dim <= q.shape[2]:
        raise ValueError(f"rotary_dim {rotary_dim} must be even and at most head_dim {q.shape[2]}")
    if cos_sin_cache.shape[-1] != rotary_dim:
        raise ValueError(f"cos_sin_cache has {cos_sin_cache.shape[-1]} columns, expected rotary_dim={rotary_dim}")
    if positions.shape != (q.shape[0],):
        raise ValueError("positions must be [T]")


def apply_rotary_ref(q, k, positions, cos_sin_cache, rotary_dim):
    _check(q, k, positions, cos_sin_cache, rotary_dim)
    half = rotary_dim // 2
    cs = cos_sin_cache[positions]  # [T, rotary_dim]
    cos = cs[:, :half].to(q.dtype)
    sin = cs[:, half:].to(q.dtype)
    cos = torch.cat((cos, cos), dim=-1)[:, None, :]
    sin = torch.cat((sin, sin), dim=-1)[:, None, :]
    for x in (q, k):
        xr = x[..., :rotary_dim]
        rotated = torch.cat((-xr[..., half:], xr[..., :half]), dim=-1)  # transformers' rotate_half
        x[..., :rotary_dim] = xr * cos + rotated * sin
    return q, k


def apply_rotary_triton(q, k, positions, cos_sin_cache, rotary_dim):
    _check(q, k, positions, cos_sin_cache, rotary_dim)
    if q.stride(2) != 1 or k.stride(2) != 1 or cos_sin_cache.stride(1) != 1:
        raise ValueError("q, k and cos_sin_cache must be contiguous along their last dimension")
    T, hq, _ = q.shape
    hkv = k.shape[1]
    if T == 0:
        return q, k
    half = rotary_dim // 2
    pdl = use_pdl(q.device)
    _rotary_kernel[(T,)](
        q, k, positions, cos_sin_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos_sin_cache.stride(0), hq, hkv,
        HALF=half, HALF_PAD=next_pow2(half), HQ_PAD=next_pow2(hq), HKV_PAD=next_pow2(hkv), PDL=pdl,
        num_warps=4 if hq * half >= 1024 else 1, launch_pdl=pdl,
    )
    return q, k


def apply_rotary(q, k, positions, cos_sin_cache, rotary_dim):
    """In place on q and k; returns them."""
    if q.is_cuda or FORCE_TRITON:
        return apply_rotary_triton(q, k, positions, cos_sin_cache, rotary_dim)
    return apply_rotary_ref(q, k, positions, cos_sin_cache, rotary_dim)
