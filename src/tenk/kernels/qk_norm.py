"""MiniMax-M2's full-width QK-norm: q is normalised over all of its heads at once (and k over
all of its), not head by head. transformers (MiniMaxM2Attention) computes, for x in (q, k):

    h = x.float(); h = h * rsqrt(h.pow(2).mean(-1) + eps); return weight * h.to(x.dtype)

Under tensor parallelism each rank holds a slice of the heads, so the sum of squares of every
row is all-reduced before the rsqrt; when kv heads are replicated over ranks, `k_replicas`
ranks hold the same k slice and the reduced k sum is divided by it.

On the GPU that is two launches and one all-reduce per layer for q and k together: one kernel
sums the squares of both into [T, 2] (fp32), the all-reduce sums that over the ranks, one kernel
normalises both. The torch path took about twenty small kernels and two all-reduces.

q and k may be [T, N] views with a row stride (slices of the fused qkv output); the outputs
are new contiguous tensors.
"""

from __future__ import annotations

from typing import Callable

import torch

from tenk.kernels._common import next_pow2
from tenk.kernels._triton import tl, triton

# Tests set it to run the Triton path on CPU tensors (under tenk.kernels.interpret.triton_interpreter).
FORCE_TRITON = False

AllReduce = Callable[[torch.Tensor], torch.Tensor] | None  # sums a [T, 2] fp32 tensor over the ranks, in place


@triton.jit
def _qk_sumsq_kernel(q_ptr, k_ptr, sq_ptr, s_q, s_k, NQ, NK, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    qc = tl.arange(0, BLOCK_Q)
    q = tl.load(q_ptr + row * s_q + qc, mask=qc < NQ, other=0.0).to(tl.float32)
    kc = tl.arange(0, BLOCK_K)
    k = tl.load(k_ptr + row * s_k + kc, mask=kc < NK, other=0.0).to(tl.float32)
    tl.store(sq_ptr + row * 2, tl.sum(q * q, 0))
    tl.store(sq_ptr + row * 2 + 1, tl.sum(k * k, 0))


@triton.jit
def _qk_norm_kernel(
    q_ptr, k_ptr, sq_ptr, wq_ptr, wk_ptr, qo_ptr, ko_ptr,
    s_q, s_k, NQ, NK, full_q, full_k, k_replicas, eps,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    in_dtype = q_ptr.dtype.element_ty
    sq_q = tl.load(sq_ptr + row * 2)
    sq_k = tl.load(sq_ptr + row * 2 + 1) / k_replicas
    qc = tl.arange(0, BLOCK_Q)
    q = tl.load(q_ptr + row * s_q + qc, mask=qc < NQ, other=0.0).to(tl.float32)
    qn = (q * tl.rsqrt(sq_q / full_q + eps)).to(in_dtype).to(tl.float32)  # rounded before the weight, as torch
    wq = tl.load(wq_ptr + qc, mask=qc < NQ, other=0.0).to(tl.float32)
    tl.store(qo_ptr + row * NQ + qc, (qn * wq).to(qo_ptr.dtype.element_ty), mask=qc < NQ)
    kc = tl.arange(0, BLOCK_K)
    k = tl.load(k_ptr + row * s_k + kc, mask=kc < NK, other=0.0).to(tl.float32)
    kn = (k * tl.rsqrt(sq_k / full_k + eps)).to(in_dtype).to(tl.float32)
    wk = tl.load(wk_ptr + kc, mask=kc < NK, other=0.0).to(tl.float32)
    tl.store(ko_ptr + row * NK + kc, (kn * wk).to(ko_ptr.dtype.element_ty), mask=kc < NK)


def _check(q: torch.Tensor, k: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor) -> None:
    if q.dim() != 2 or k.dim() != 2 or q.shape[0] != k.shape[0]:
        raise ValueError(f"q and k must be [T, N] with the same T, got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.stride(-1) != 1 or k.stride(-1) != 1:
        raise ValueError("the normalised dimension of q and k must be contiguous")
    if wq.shape != (q.shape[1],) or wk.shape != (k.shape[1],):
        raise ValueError(f"weights {tuple(wq.shape)}, {tuple(wk.shape)} do not match q {tuple(q.shape)}, k {tuple(k.shape)}")


# ---------------------------------------------------------------- reference


def full_width_qk_norm_ref(q, k, wq, wk, full_q: int, full_k: int, eps: float, k_replicas: int = 1,
                           all_reduce: AllReduce = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    _check(q, k, wq, wk)
    qf, kf = q.float(), k.float()
    sq = torch.cat([qf.pow(2).sum(-1, keepdim=True), kf.pow(2).sum(-1, keepdim=True)], dim=-1)
    if all_reduce is not None:
        sq = all_reduce(sq)
    sq_q, sq_k = sq[:, :1], sq[:, 1:] / k_replicas
    qn = qf * torch.rsqrt(sq_q / full_q + eps)
    kn = kf * torch.rsqrt(sq_k / full_k + eps)
    return wq * qn.to(q.dtype), wk * kn.to(k.dtype)


# ---------------------------------------------------------------- Triton


def full_width_qk_norm_triton(q, k, wq, wk, full_q: int, full_k: int, eps: float, k_replicas: int = 1,
                              all_reduce: AllReduce = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    _check(q, k, wq, wk)
    T, nq, nk = q.shape[0], q.shape[1], k.shape[1]
    sq = torch.empty(T, 2, dtype=torch.float32, device=q.device)
    qo = torch.empty(q.shape, dtype=torch.promote_types(q.dtype, wq.dtype), device=q.device)
    ko = torch.empty(k.shape, dtype=torch.promote_types(k.dtype, wk.dtype), device=k.device)
    if T == 0:
        return qo, ko
    bq, bk = next_pow2(nq), next_pow2(nk)
    per_warp = max(1, (bq + bk) // 512)  # ~16 values per thread
    warps = min(16, 1 << (per_warp.bit_length() - 1))  # a power of two
    _qk_sumsq_kernel[(T,)](q, k, sq, q.stride(0), k.stride(0), nq, nk, BLOCK_Q=bq, BLOCK_K=bk, num_warps=warps)
    if all_reduce is not None:
        sq = all_reduce(sq)
    _qk_norm_kernel[(T,)](
        q, k, sq, wq, wk, qo, ko, q.stride(0), k.stride(0), nq, nk, float(full_q), float(full_k),
        float(k_replicas), float(eps), BLOCK_Q=bq, BLOCK_K=bk, num_warps=warps,
    )  # fmt: skip
    return qo, ko


# ---------------------------------------------------------------- dispatch


def full_width_qk_norm(q, k, wq, wk, full_q: int, full_k: int, eps: float, k_replicas: int = 1,
                       all_reduce: AllReduce = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(normalised q, normalised k), each [T, N] contiguous in the promoted dtype of (x, weight)."""
    if q.is_cuda or FORCE_TRITON:
        return full_width_qk_norm_triton(q, k, wq, wk, full_q, full_k, eps, k_replicas, all_reduce)
    return full_width_qk_norm_ref(q, k, wq, wk, full_q, full_k, eps, k_replicas, all_reduce)
