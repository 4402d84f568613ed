"""Fused MoE experts: out = sum_k w_k * w2_e(silu(gate_e x) * up_e x) over each token's top-k experts.

Shapes (T tokens, H hidden, I expert FFN width, E experts on this rank, k experts per token,
P = T * k token/expert pairs, pair p = t * k + j):
  x            [T, H]
  w13          [E, 2I, H]   gate rows first, then up (transformers' gate_up_proj; w1 | w3)
  w2           [E, H, I]
  topk_weights [T, k] fp32
  topk_ids     [T, k] int   -1 = expert not on this rank (expert parallel): contributes nothing
  out          [T, H]

Two GPU paths, no Python loop over experts and no host sync in either:
- "grouped_mm" (bf16): sort pairs by expert, gather x rows, `torch._grouped_mm` for w13,
  SiLU*mul (Triton), `torch._grouped_mm` for w2, weighted combine (Triton).
- "triton": vLLM-style. `moe_align_block_size` pads each expert's pairs to a multiple of BLOCK_M;
  one Triton grouped GEMM for w13 with SiLU*mul in its epilogue, one for w2, the same combine.
`fused_moe_ref` is the plain-PyTorch reference (a loop over the experts present; the CPU path).
A packed-weight variant (NVFP4) is meant to sit beside these behind `fused_moe`'s signature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tenk.kernels._common import next_pow2
from tenk.kernels._tiles import grouped_tile
from tenk.kernels._triton import tl, triton
from tenk.kernels.activation import silu_and_mul_ref, silu_and_mul_triton

DEFAULT_GPU_IMPL = "grouped_mm"  # for bf16; other dtypes always take "triton"


def _check(x, w13, w2, topk_weights, topk_ids) -> tuple[int, int, int, int, int]:
    T, H = x.shape
    E, two_i, h2 = w13.shape
    if h2 != H or two_i % 2 or w2.shape != (E, H, two_i // 2):
        raise ValueError(f"expert weights do not fit: x {tuple(x.shape)}, w13 {tuple(w13.shape)}, w2 {tuple(w2.shape)}")
    if topk_ids.shape != topk_weights.shape or topk_ids.shape[0] != T:
        raise ValueError("topk_ids and topk_weights must both be [T, k]")
    return T, H, E, two_i // 2, topk_ids.shape[1]


# ---------------------------------------------------------------- reference


def fused_moe_ref(x, w13, w2, topk_weights, topk_ids, out: torch.Tensor | None = None) -> torch.Tensor:
    T, H, E, _, k = _check(x, w13, w2, topk_weights, topk_ids)
    flat = topk_ids.reshape(-1).long()
    valid = flat >= 0
    order = torch.argsort(flat.masked_fill(~valid, E), stable=True)  # pairs grouped by expert
    counts = torch.bincount(flat[valid], minlength=E).tolist()
    weights = topk_weights.reshape(-1).float()
    acc = torch.zeros(T, H, dtype=torch.float32, device=x.device)
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        pairs = order[start : start + n]
        start += n
        tok = pairs // k
        h = F.linear(x[tok], w13[e])  # [n, 2I]
        a = silu_and_mul_ref(h)  # [n, I]
        y = F.linear(a, w2[e])  # [n, H]
        acc.index_add_(0, tok, y.float() * weights[pairs, None])
    if out is None:
        return acc.to(x.dtype)
    return out.copy_(acc)


# ---------------------------------------------------------------- combine


@triton.jit
def _combine_kernel(
    y_ptr, row_ptr, w_ptr, ids_ptr, out_ptr, H, s_yr, s_ot,
    TOPK: tl.constexpr, HAS_ROW_MAP: tl.constexpr, BLOCK: tl.constexpr,
):
    """out[t] = sum_j w[t, j] * y[row(t, j)] over valid experts, in fp32, fixed order (deterministic)."""
    t = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = c < H
    acc = tl.zeros([BLOCK], tl.float32)
    for j in tl.static_range(TOPK):
        p = t * TOPK + j
        e = tl.load(ids_ptr + p)
        w = tl.load(w_ptr + p).to(tl.float32)
        if HAS_ROW_MAP:
            row = tl.load(row_ptr + p).to(tl.int64)
        else:
            row = p
        y = tl.load(y_ptr + row * s_yr + c, mask=m & (e >= 0), other=0.0)  # rows of -1 pairs are never read
        acc += tl.where(e >= 0, w, 0.0) * y.to(tl.float32)
    tl.store(out_ptr + t * s_ot + c, acc.to(out_ptr.dtype.element_ty), mask=m)


def _combine(y, row_map, topk_weights, topk_ids, out):
    T, k = topk_ids.shape
    H = out.shape[1]
    block = min(1024, next_pow2(H))
    _combine_kernel[(T, triton.cdiv(H, block))](
        y, row_map if row_map is not None else y, topk_weights, topk_ids, out, H, y.stride(0), out.stride(0),
        TOPK=k, HAS_ROW_MAP=row_map is not None, BLOCK=block, num_warps=4,
    )
    return out


# ---------------------------------------------------------------- grouped_mm path


def fused_moe_grouped_mm(x, w13, w2, topk_weights, topk_ids, out: torch.Tensor | None = None) -> torch.Tensor:
    T, H, E, inter, k = _check(x, w13, w2, topk_weights, topk_ids)
    if out is None:
        out = torch.empty_like(x)
    if T == 0:
        return out
    flat = topk_ids.reshape(-1)
    key = torch.where(flat < 0, E, flat).to(torch.int32)  # -1 pairs sort last, past offs[-1]
    sorted_key, order = torch.sort(key, stable=True)
    experts = torch.arange(E, device=x.device, dtype=torch.int32)
    offs = torch.searchsorted(sorted_key, experts, right=True).to(torch.int32)  # [E] cumulative row ends
    xs = x.index_select(0, order // k)  # [P, H] rows in expert order
    h = torch._grouped_mm(xs, w13.transpose(1, 2), offs=offs)  # [P, 2I]; rows past offs[-1] are garbage
    a = silu_and_mul_triton(h)  # [P, I]
    y = torch._grouped_mm(a, w2.transpose(1, 2), offs=offs)  # [P, H]
    row_of_pair = torch.empty_like(order)
    row_of_pair[order] = torch.arange(order.numel(), device=x.device, dtype=order.dtype)
    return _combine(y, row_of_pair, topk_weights, topk_ids, out)


# ---------------------------------------------------------------- Triton grouped GEMM path


def moe_align_block_size(
    topk_ids: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """vLLM's contract, in device-side torch ops (no host sync):
    sorted_token_ids [max_padded] int32: pair ids grouped by expert, each expert's run padded to a
        multiple of block_m with the value P (= topk_ids.numel(), "no pair");
    expert_ids [max_padded / block_m] int32: the expert of each block, -1 past the last one;
    num_tokens_post_padded [1] int32: the used length of sorted_token_ids.
    max_padded = P + min(E, P) * (block_m - 1) is known on the host, so grids built on it are fixed."""
    flat = topk_ids.reshape(-1)
    P = flat.numel()
    dev = flat.device
    E = num_experts
    key = torch.where(flat < 0, E, flat).long()
    sorted_key, order = torch.sort(key, stable=True)
    counts = torch.zeros(E + 1, dtype=torch.int64, device=dev).scatter_add_(0, key, torch.ones_like(key))[:E]
    padded = (counts + block_m - 1) // block_m * block_m
    pad_end = torch.cumsum(padded, 0)
    pad_start = pad_end - padded
    start = torch.cumsum(counts, 0) - counts
    max_padded = P + min(E, P) * (block_m - 1)
    e = sorted_key.clamp(max=E - 1)
    dest = pad_start[e] + torch.arange(P, device=dev) - start[e]
    dest = torch.where(sorted_key < E, dest, max_padded)  # -1 pairs go to a dump slot
    sorted_ids = torch.full((max_padded + 1,), P, dtype=torch.int32, device=dev)
    sorted_ids.scatter_(0, dest, order.to(torch.int32))
    block_start = torch.arange(0, max_padded, block_m, device=dev)
    expert_ids = torch.searchsorted(pad_end, block_start, right=True)
    expert_ids = torch.where(expert_ids < E, expert_ids, -1).to(torch.int32)
    return sorted_ids[:max_padded], expert_ids, pad_end[-1:].to(torch.int32)


@triton.jit
def block_pairs(pid_m, num_pairs, max_padded, sorted_ptr, TOPK: tl.constexpr, A_BY_TOKEN: tl.constexpr,
                DIRECT: tl.constexpr, BM: tl.constexpr, BMT: tl.constexpr = 0):
    """The (token, expert) pairs of token block pid_m in a grouped MoE GEMM (bf16, NVFP4, FP8):
    (row_ok [BM], pair index with padding rows clamped to 0, the A row each reads: its token for
    w1|w3, the pair itself for w2). DIRECT: block m is pair m alone, no alignment. BMT > 0: only
    the block's first BMT pairs (a narrower tile; blocks stay BM apart)."""
    W: tl.constexpr = BMT if BMT > 0 else BM
    if DIRECT:
        pair = tl.where(tl.arange(0, W) == 0, pid_m, num_pairs)
    else:
        offs_m = pid_m * BM + tl.arange(0, W)
        pair = tl.load(sorted_ptr + offs_m, mask=offs_m < max_padded, other=num_pairs)
    row_ok = pair < num_pairs
    safe = tl.where(row_ok, pair, 0).to(tl.int64)
    if A_BY_TOKEN:
        a_row = safe // TOPK
    else:
        a_row = safe
    return row_ok, safe, a_row


@triton.jit
def moe_block(pid_m, num_pairs, max_padded, sorted_ptr, expert_ptr, TOPK: tl.constexpr, A_BY_TOKEN: tl.constexpr,
              DIRECT: tl.constexpr, BM: tl.constexpr):
    """Token block pid_m of a grouped MoE GEMM (bf16, NVFP4, FP8): (its expert, then block_pairs).
    Blocks past the used length hold expert -1 (moe_align_block_size's contract, kept by the
    one-CTA align kernel too), so the caller returns on e < 0 without reading
    num_tokens_post_padded."""
    e = tl.load(expert_ptr + pid_m).to(tl.int64)
    row_ok, safe, a_row = block_pairs(pid_m, num_pairs, max_padded, sorted_ptr, TOPK, A_BY_TOKEN, DIRECT, BM)
    return e, row_ok, safe, a_row


@triton.jit
def store_moe_tile(g, u, out_ptr, safe, row_ok, offs_n, n_ok, pid_k, s_or, s_os, N, GATED: tl.constexpr,
                   SPLIT_K: tl.constexpr):
    """Write a grouped GEMM's scaled fp32 out^T tile for its pairs (the epilogue of the NVFP4 MoE's
    Triton kernel and of the FP8 MoE's). GATED (g: gate, u: up): with SPLIT_K == 1
    moe_out_values, else fp32 partials [split, pair, 2N] (gate | up) for _silu_mul_reduce_kernel.
    Not GATED (u unused): g in out's dtype, or fp32 partials [split, pair, N]."""
    out_ptrs = out_ptr + safe[None, :] * s_or + offs_n[:, None]
    mask = n_ok[:, None] & row_ok[None, :]
    if SPLIT_K == 1:
        tl.store(out_ptrs, moe_out_values(g, u, out_ptr.dtype.element_ty, GATED), mask=mask)
    else:
        part = out_ptrs + pid_k.to(tl.int64) * s_os
        tl.store(part, g, mask=mask)
        if GATED:
            tl.store(part + N, u, mask=mask)


@triton.jit
def moe_out_values(g, u, dtype: tl.constexpr, GATED: tl.constexpr):
    """A grouped GEMM's fp32 tile in out's dtype (also the Gluon MoE's epilogue): GATED silu(g) * u,
    each rounded to dtype as the unfused path rounds; else g (u unused)."""
    if GATED:
        g = g.to(dtype).to(tl.float32)
        u = u.to(dtype).to(tl.float32)
        s = (g / (1.0 + tl.exp(-g))).to(dtype).to(tl.float32)
        out = (s * u).to(dtype)
    else:
        out = g.to(dtype)
    return out


@triton.jit(do_not_specialize=["num_pairs", "max_padded"])
def _moe_gemm_kernel(
    a_ptr, w_ptr, c_ptr, sorted_ptr, expert_ptr,
    num_pairs, max_padded, N, K,
    s_ar, s_we, s_wn, s_cr,
    TOPK: tl.constexpr, GATED: tl.constexpr, A_BY_TOKEN: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, IEEE: tl.constexpr,
):
    """C[pair, :N] = A[row] @ W[e]^T for the pairs of each expert block. GATED: W[e] holds gate rows
    [0, N) and up rows [N, 2N); C = silu(gate) * up, rounded like the unfused path."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(max_padded, BM)
    num_n = tl.cdiv(N, BN)
    pid_m, pid_n = grouped_tile(pid, num_m, num_n, GROUP_M)
    e, row_ok, safe, a_row = moe_block(pid_m, num_pairs, max_padded, sorted_ptr, expert_ptr, TOPK, A_BY_TOKEN,
                                       False, BM)
    if e < 0:
        return
    offs_n = pid_n * BN + tl.arange(0, BN)
    n_ok = offs_n < N
    offs_k = tl.arange(0, BK)
    a_ptrs = a_ptr + a_row[:, None] * s_ar + offs_k[None, :]
    w_ptrs = w_ptr + e * s_we + offs_n[None, :].to(tl.int64) * s_wn + offs_k[:, None]
    acc = tl.zeros([BM, BN], tl.float32)
    acc_up = tl.zeros([BM, BN], tl.float32)
    for kb in range(0, tl.cdiv(K, BK)):
        k_ok = offs_k < K - kb * BK
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(a, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc)
        if GATED:
            wu = tl.load(w_ptrs + N * s_wn, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            if IEEE:
                acc_up = tl.dot(a, wu, acc_up, input_precision="ieee")
            else:
                acc_up = tl.dot(a, wu, acc_up)
        a_ptrs += BK
        w_ptrs += BK
    dtype = c_ptr.dtype.element_ty
    if GATED:
        g = acc.to(dtype).to(tl.float32)
        u = acc_up.to(dtype).to(tl.float32)
        s = (g / (1.0 + tl.exp(-g))).to(dtype).to(tl.float32)
        res = (s * u).to(dtype)
    else:
        res = acc.to(dtype)
    c_ptrs = c_ptr + safe[:, None] * s_cr + offs_n[None, :]
    tl.store(c_ptrs, res, mask=row_ok[:, None] & n_ok[None, :])


@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int


def default_config(num_pairs: int, num_experts: int, dtype: torch.dtype) -> GemmConfig:
    """By pairs per expert: few (decode) -> thin M tiles that stream weights; many -> square tiles."""
    per_expert = num_pairs / max(1, num_experts)
    if dtype == torch.float32:
        return GemmConfig(16 if per_expert <= 16 else 32, 32, 32, 8, 4, 2)
    if per_expert <= 16:
        return GemmConfig(16, 64, 128, 1, 4, 4)
    if per_expert <= 64:
        return GemmConfig(32, 64, 128, 4, 4, 3)
    if per_expert <= 256:
        return GemmConfig(64, 128, 64, 8, 8, 3)
    return GemmConfig(128, 128, 64, 8, 8, 3)


def _moe_gemm(a, w, c, align, num_pairs, n, k, topk, gated, a_by_token, cfg: GemmConfig):
    sorted_ids, expert_ids = align[:2]
    max_padded = sorted_ids.numel()
    grid = (triton.cdiv(max_padded, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    _moe_gemm_kernel[grid](
        a, w, c, sorted_ids, expert_ids,
        num_pairs, max_padded, n, k,
        a.stride(0), w.stride(0), w.stride(1), c.stride(0),
        TOPK=topk, GATED=gated, A_BY_TOKEN=a_by_token,
        BM=cfg.block_m, BN=cfg.block_n, BK=cfg.block_k, GROUP_M=cfg.group_m, IEEE=a.dtype == torch.float32,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )


def fused_moe_triton(
    x, w13, w2, topk_weights, topk_ids, out: torch.Tensor | None = None, config: GemmConfig | None = None
) -> torch.Tensor:
    T, H, E, inter, k = _check(x, w13, w2, topk_weights, topk_ids)
    if out is None:
        out = torch.empty_like(x)
    if T == 0:
        return out
    for name, t in (("x", x), ("w13", w13), ("w2", w2)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous along its last dimension")
    P = T * k
    cfg = config or default_config(P, E, x.dtype)
    align = moe_align_block_size(topk_ids, E, cfg.block_m)
    act = torch.empty((P, inter), dtype=x.dtype, device=x.device)  # rows of -1 pairs stay unwritten
    _moe_gemm(x, w13, act, align, P, inter, H, k, True, True, cfg)
    y = torch.empty((P, H), dtype=x.dtype, device=x.device)
    _moe_gemm(act, w2, y, align, P, H, inter, k, False, False, cfg)
    return _combine(y, None, topk_weights, topk_ids, out)


# ---------------------------------------------------------------- entry point


def fused_moe(x, w13, w2, topk_weights, topk_ids, out: torch.Tensor | None = None, impl: str | None = None):
    """Dispatch: the reference on CPU; on CUDA `impl` ("grouped_mm" | "triton"), default by dtype."""
    if not x.is_cuda:
        return fused_moe_ref(x, w13, w2, topk_weights, topk_ids, out)
    impl = impl or (DEFAULT_GPU_IMPL if x.dtype == torch.bfloat16 else "triton")
    if impl == "grouped_mm":
        return fused_moe_grouped_mm(x, w13, w2, topk_weights, topk_ids, out)
    if impl == "triton":
        return fused_moe_triton(x, w13, w2, topk_weights, topk_ids, out)
    raise ValueError(f"unknown fused_moe impl {impl!r} (choose 'grouped_mm' or 'triton')")
