"""Tile order shared by tenk's GEMM kernels (dense and grouped, bf16, NVFP4 and FP8)."""

from __future__ import annotations

from tenk.kernels._triton import tl, triton


@triton.jit
def grouped_tile(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """Program id -> (pid_m, pid_n): GROUP_M row tiles are walked down one column of tiles before
    moving to the next column, so programs running together share their weight tiles in L2
    (the order of Triton's matmul tutorial)."""
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % group) % size_m, (pid % group) // size_m


@triton.jit
def dense_tile(M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's out^T tile [BN, BM] of a dense weight-only GEMM: (pid_k, pid_n, offs_m,
    offs_n, m_ok, n_ok, rows), where rows are the weight rows to read (masked rows re-read row 0;
    the store drops them)."""
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BM), tl.cdiv(N, BN), GROUP_M)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    n_ok = offs_n < N
    return tl.program_id(1), pid_n, offs_m, offs_n, offs_m < M, n_ok, tl.where(n_ok, offs_n, 0).to(tl.int64)


@triton.jit
def shard_scale(s_ptr, offs_n, end0, end1, NUM_SHARDS: tl.constexpr, BN: tl.constexpr):
    """Per-row scale [BN] of fused projections with one scale per shard (q|k|v, gate|up): shard
    0 ends at row end0, shard 1 at end1."""
    if NUM_SHARDS == 1:
        s = tl.load(s_ptr + tl.zeros([BN], tl.int32))
    elif NUM_SHARDS == 2:
        s = tl.where(offs_n < end0, tl.load(s_ptr), tl.load(s_ptr + 1))
    else:
        s = tl.where(offs_n < end0, tl.load(s_ptr), tl.where(offs_n < end1, tl.load(s_ptr + 1), tl.load(s_ptr + 2)))
    return s


@triton.jit
def store_tile(acc, out_ptr, bias_ptr, offs_m, offs_n, m_ok, n_ok, pid_k, s_om, s_os, HAS_BIAS: tl.constexpr,
               SPLIT_K: tl.constexpr):
    """Write an fp32 out^T tile: with SPLIT_K == 1 (+ bias) in out's dtype, else as this split's
    fp32 partial at out + pid_k * s_os (the split-K reduce kernel adds the bias)."""
    out_ptrs = out_ptr + offs_m.to(tl.int64)[None, :] * s_om + offs_n[:, None]
    mask = n_ok[:, None] & m_ok[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[:, None]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptrs + pid_k.to(tl.int64) * s_os, acc, mask=mask)


@triton.jit
def wait_prior_grid(PDL: tl.constexpr):
    """Under programmatic dependent launch (_common.use_pdl): block until the previous kernel in the
    stream has finished and its writes are visible, then let the next one launch. Called first,
    before any global read or write, by every CTA: a kernel that returned without waiting could
    finish before its predecessor, and a successor waiting on it would then read too early. The
    successor launches once every CTA here has called this, so all of this grid is resident and
    its CTAs never queue behind the successor's. Reads of what was written before the previous
    launch began are safe before it (that launch waited for its own predecessor before releasing
    this grid): the NVFP4 MoE's L2 prefetch reads the ids and block experts so."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
