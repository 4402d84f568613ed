"""Per-head QK-norm and rotary in one launch (Qwen3 and Qwen3-MoE attention).

What it computes is the two steps the attention layer ran one after the other, with their roundings:
tenk.kernels.rmsnorm over each head of q and of k (normalised in fp32, rounded to the input dtype,
times the weight in the promoted dtype), then tenk.kernels.rotary's neox rotation over the whole head
(cos/sin cast to that dtype, each product rounded, then the sum). The reference is exactly that
composition of the two references; on CPU it is what runs.

Why one launch: per decoder layer the GPU ran a norm over q's heads, one over k's and the rotation,
each reading and writing q or k again. Here each program loads a token's q and k heads once, in two
halves (the rotation pairs column c with c + head_dim / 2), and writes them normalised and rotated.
Only whole-head rotation is fused (rotary_dim == head_dim, as in Qwen3); partial rotary keeps the
two-step path.

q [T, Hq, D] and k [T, Hkv, D] may be strided views of the qkv output (D contiguous); the outputs
are new contiguous tensors, as the norm's were.
"""

from __future__ import annotations

import torch

from tenk.kernels._common import next_pow2, use_pdl
from tenk.kernels._tiles import wait_prior_grid
from tenk.kernels._triton import tl, triton
from tenk.kernels.rmsnorm import rms_norm_ref
from tenk.kernels.rotary import apply_rotary_ref

# Tests set it to run the Triton path on CPU tensors (under tenk.kernels.interpret.triton_interpreter).
FORCE_TRITON = False


@triton.jit
def _norm_rotate(x_ptr, w_ptr, o_ptr, t, s_t, s_h, heads, cos, sin, eps,
                 D: tl.constexpr, HALF: tl.constexpr, H_PAD: tl.constexpr):
    h = tl.arange(0, H_PAD)
    c = tl.arange(0, HALF)
    m = (h < heads)[:, None]
    p = x_ptr + t * s_t + h[:, None] * s_h + c[None, :]
    in_dtype = x_ptr.dtype.element_ty
    out_dtype = o_ptr.dtype.element_ty
    x1 = tl.load(p, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(p + HALF, mask=m, other=0.0).to(tl.float32)
    r = tl.rsqrt((tl.sum(x1 * x1, 1) + tl.sum(x2 * x2, 1)) / D + eps)[:, None]
    w1 = tl.load(w_ptr + c).to(tl.float32)[None, :]
    w2 = tl.load(w_ptr + HALF + c).to(tl.float32)[None, :]
    n1 = ((x1 * r).to(in_dtype).to(tl.float32) * w1).to(out_dtype).to(tl.float32)
    n2 = ((x2 * r).to(in_dtype).to(tl.float32) * w2).to(out_dtype).to(tl.float32)
    o1 = (n1 * cos).to(out_dtype).to(tl.float32) - (n2 * sin).to(out_dtype).to(tl.float32)
    o2 = (n2 * cos).to(out_dtype).to(tl.float32) + (n1 * sin).to(out_dtype).to(tl.float32)
    o = o_ptr + t * heads * D + h[:, None] * D + c[None, :]
    tl.store(o, o1.to(out_dtype), mask=m)
    tl.store(o + HALF, o2.to(out_dtype), mask=m)


@triton.jit
def _qk_norm_rope_kernel(
    q_ptr, k_ptr, wq_ptr, wk_ptr, qo_ptr, ko_ptr, pos_ptr, cache_ptr,
    s_qt, s_qh, s_kt, s_kh, s_ct, HQ, HKV, eps,
    D: tl.constexpr, HALF: tl.constexpr, HQ_PAD: tl.constexpr, HKV_PAD: tl.constexpr, PDL: tl.constexpr,
):
    wait_prior_grid(PDL)
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    c = tl.arange(0, HALF)
    dtype = qo_ptr.dtype.element_ty  # the rotation's dtype: what the norm wrote
    cos = tl.load(cache_ptr + pos * s_ct + c).to(dtype).to(tl.float32)[None, :]
    sin = tl.load(cache_ptr + pos * s_ct + HALF + c).to(dtype).to(tl.float32)[None, :]
    _norm_rotate(q_ptr, wq_ptr, qo_ptr, t, s_qt, s_qh, HQ, cos, sin, eps, D, HALF, HQ_PAD)
    _norm_rotate(k_ptr, wk_ptr, ko_ptr, t, s_kt, s_kh, HKV, cos, sin, eps, D, HALF, HKV_PAD)


def fusable(head_dim: int, rotary_dim: int) -> bool:
    """Whole-head rotation over a power-of-two head (the kernel's halves are whole tiles)."""
    return rotary_dim == head_dim and head_dim >= 4 and head_dim == next_pow2(head_dim)


def _check(q, k, wq, wk, positions, cos_sin_cache) -> None:
    if q.dim() != 3 or k.dim() != 3 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"q and k must be [T, heads, head_dim], got {tuple(q.shape)} and {tuple(k.shape)}")
    d = q.shape[2]
    if q.dtype != k.dtype or wq.dtype != wk.dtype:
        raise ValueError("q and k, and their norm weights, must share a dtype")
    if wq.shape != (d,) or wk.shape != (d,):
        raise ValueError(f"norm weights {tuple(wq.shape)}, {tuple(wk.shape)} must be ({d},)")
    if not fusable(d, cos_sin_cache.shape[-1]):
        raise ValueError(f"the fused QK-norm and rotary needs rotary_dim == head_dim (a power of two), got "
                         f"{cos_sin_cache.shape[-1]} and {d}")
    if positions.shape != (q.shape[0],):
        raise ValueError("positions must be [T]")


def qk_norm_rope_ref(q, k, wq, wk, eps: float, positions, cos_sin_cache):
    _check(q, k, wq, wk, positions, cos_sin_cache)
    return apply_rotary_ref(rms_norm_ref(q, wq, eps), rms_norm_ref(k, wk, eps), positions, cos_sin_cache, q.shape[2])


def qk_norm_rope_triton(q, k, wq, wk, eps: float, positions, cos_sin_cache):
    _check(q, k, wq, wk, positions, cos_sin_cache)
    if q.stride(2) != 1 or k.stride(2) != 1 or cos_sin_cache.stride(1) != 1:
        raise ValueError("q, k and cos_sin_cache must be contiguous along their last dimension")
    T, hq, d = q.shape
    hkv = k.shape[1]
    out_dtype = torch.promote_types(q.dtype, wq.dtype)
    qo = torch.empty(q.shape, dtype=out_dtype, device=q.device)
    ko = torch.empty(k.shape, dtype=out_dtype, device=k.device)
    if T == 0:
        return qo, ko
    pdl = use_pdl(q.device)
    _qk_norm_rope_kernel[(T,)](
        q, k, wq, wk, qo, ko, positions, cos_sin_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos_sin_cache.stride(0), hq, hkv, float(eps),
        D=d, HALF=d // 2, HQ_PAD=next_pow2(hq), HKV_PAD=next_pow2(hkv), PDL=pdl,
        num_warps=4 if hq * d >= 2048 else 1, launch_pdl=pdl,
    )
    return qo, ko


def qk_norm_rope(q, k, wq, wk, eps: float, positions, cos_sin_cache):
    """(q, k) normalised per head and rotated, each a new contiguous [T, heads, head_dim] tensor."""
    if q.is_cuda or FORCE_TRITON:
        return qk_norm_rope_triton(q, k, wq, wk, eps, positions, cos_sin_cache)
    return qk_norm_rope_ref(q, k, wq, wk, eps, positions, cos_sin_cache)
