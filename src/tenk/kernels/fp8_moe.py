"""Fused MoE with FP8 E4M3 experts on Hopper (W8A16): the contract of tenk.kernels.moe.fused_moe
with 8-bit w1|w3 and w2, as MiniMax-M2's official checkpoint ships them (DESIGN.md "Fused MoE").

Shapes (T tokens, H hidden, I expert FFN width, E experts, k experts per token, P = T * k pairs):
  x                 [T, H] bf16 / fp16 (fp32 under the interpreter)
  w13_weight        [E, 2I, H] E4M3, gate rows (w1) then up rows (w3)
  w2_weight         [E, H, I] E4M3
  scheme "block":   w13_weight_scale [E, 2I/bn, H/bk], w2_weight_scale [E, H/bn, I/bk] fp32 (bn, bk = block)
  scheme "tensor":  w13_weight_scale [E, 2] (w1's, w3's: never merged), w2_weight_scale [E] fp32
  topk_weights [T, k] fp32, topk_ids [T, k] int (-1: expert not on this rank, contributes nothing)

Same pipeline as nvfp4_moe (no host sync, CUDA-graph safe): moe_align_block_size_triton groups the
pairs into expert blocks of block_m (tiny batches skip it: "direct", one block per pair); one
grouped GEMM for w1|w3 (gate and up side by side, SiLU*mul in the epilogue), one for w2, the
weighted combine; small batches split K (fp32 partials, finished by nvfp4_moe's reduce kernels).
The GEMM is fp8_gemm's: weight tiles converted to x's dtype in registers, block scales applied to
each K step's fp32 product (BLOCK_N | bn, BLOCK_K | bk), per-tensor scales in the epilogue.
`fp8_fused_moe_ref` (dequantize + fused_moe_ref) has the same signature.
"""

from __future__ import annotations

import torch

from tenk.kernels._common import use_pdl
from tenk.kernels._tiles import grouped_tile, wait_prior_grid
from tenk.kernels._triton import tl, triton
from tenk.kernels.configs.fp8 import Fp8Config, Fp8MoeConfig, block_scales_fit, fit_block_k, fit_block_n, moe_config
from tenk.kernels.fp8_gemm import FP8_BLOCK, _accumulate, dequantize_block, use_asm
from tenk.kernels.moe import fused_moe_ref, moe_block, store_moe_tile
from tenk.kernels.nvfp4_moe import run_moe_stages

SCHEMES = ("tensor", "block")


# ---------------------------------------------------------------- reference


def _check(x, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids, scheme, block) -> tuple[int, int, int, int, int]:
    T, H = x.shape
    E, two_i, h = w13.shape
    inter = two_i // 2
    if h != H or two_i % 2 or tuple(w2.shape) != (E, H, inter):
        raise ValueError(f"FP8 expert weights do not fit: x {tuple(x.shape)}, w13 {tuple(w13.shape)}, w2 {tuple(w2.shape)}")
    if scheme == "block":
        bn, bk = block
        want13, want2 = (E, -(-two_i // bn), -(-H // bk)), (E, -(-H // bn), -(-inter // bk))
        fits = tuple(w13_scale.shape) == want13 and tuple(w2_scale.shape) == want2
    elif scheme == "tensor":
        want13, want2 = (E, 2), (E,)
        fits = w13_scale.numel() == 2 * E and w2_scale.numel() == E
    else:
        raise ValueError(f"unknown FP8 MoE scheme {scheme!r} (choose from {SCHEMES})")
    if not fits:
        raise ValueError(f"FP8 {scheme} scales {tuple(w13_scale.shape)} / {tuple(w2_scale.shape)} do not fit "
                         f"experts {E}x{two_i}x{H}; want {want13} / {want2}")
    if topk_ids.shape != topk_weights.shape or topk_ids.shape[0] != T:
        raise ValueError("topk_ids and topk_weights must both be [T, k]")
    return T, H, E, inter, topk_ids.shape[1]


def dequantize_experts(w13_weight, w13_weight_scale, w2_weight, w2_weight_scale, scheme, dtype,
                       block=FP8_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(w13 [E, 2I, H], w2 [E, H, I]) in dtype: E4M3 * scale in fp32, rounded once (the numbers of
    tenk.quant.ops.fp8_moe's reference). Vectorised over the experts given."""
    if scheme == "block":
        return (dequantize_block(w13_weight, w13_weight_scale, tuple(block), dtype),
                dequantize_block(w2_weight, w2_weight_scale, tuple(block), dtype))
    E, two_i, _ = w13_weight.shape
    g13 = w13_weight_scale.float().reshape(E, 2).repeat_interleave(two_i // 2, dim=1).unsqueeze(-1)  # [E, 2I, 1]
    return ((w13_weight.float() * g13).to(dtype),
            (w2_weight.float() * w2_weight_scale.float().reshape(E, 1, 1)).to(dtype))


def fp8_fused_moe_ref(x, w13_weight, w13_weight_scale, w2_weight, w2_weight_scale, topk_weights, topk_ids,
                      scheme, block=FP8_BLOCK, out=None, config=None) -> torch.Tensor:
    """Dequantize every expert exactly (in x's dtype), then the plain-PyTorch fused MoE."""
    _check(x, w13_weight, w13_weight_scale, w2_weight, w2_weight_scale, topk_weights, topk_ids, scheme, tuple(block))
    w13, w2 = dequantize_experts(w13_weight, w13_weight_scale, w2_weight, w2_weight_scale, scheme, x.dtype, block)
    return fused_moe_ref(x, w13, w2, topk_weights, topk_ids, out)


# ---------------------------------------------------------------- grouped GEMM


@triton.jit(do_not_specialize=["num_pairs", "max_padded"])
def _fp8_moe_gemm_kernel(
    a_ptr, w_ptr, s_ptr, out_ptr, sorted_ptr, expert_ptr,
    num_pairs, max_padded, N, K, s_ar, s_we, s_wn, s_se, s_sn, s_sk, s_or, s_os,
    TOPK: tl.constexpr, GATED: tl.constexpr, A_BY_TOKEN: tl.constexpr, SPLIT_K: tl.constexpr, DIRECT: tl.constexpr,
    BLOCK_SCALES: tl.constexpr, SBN: tl.constexpr, SBK: tl.constexpr, EVEN_K: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, USE_ASM: tl.constexpr,
    PDL: tl.constexpr,
):
    """For each expert block of BM pairs: out[pair, :N] = A[row] @ dequant(W[e])^T (rows: the pair's
    token for w13, the pair itself for w2), computed as out^T tiles [BN, BM].
    Scales: BLOCK_SCALES: s[e, row // SBN, k // SBK] on each K step's product; else per tensor in the
    epilogue, s[e, 0] (gate / w2) and s[e, 1] (up) at s_ptr + e * s_se (+ s_sn).
    GATED (w1|w3): W[e] rows [0, N) are the gate, [N, 2N) the up projection; with SPLIT_K == 1 the
    epilogue writes silu(gate) * up rounded like the unfused path, else fp32 partials
    [split, pair, 2N] (gate | up) for nvfp4_moe's _silu_mul_reduce_kernel.
    Not GATED (w2): out = acc in out's dtype, or fp32 partials [split, pair, N].
    DIRECT (tiny batches, no alignment): token block m is pair m alone, expert_ptr holds the flat
    topk_ids; a token's top-k experts differ, so no weight is read twice."""
    wait_prior_grid(PDL)
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    if DIRECT:
        num_m = num_pairs
    else:
        num_m = tl.cdiv(max_padded, BM)
    num_n = tl.cdiv(N, BN)
    pid_m, pid_n = grouped_tile(pid, num_m, num_n, GROUP_M)
    e, row_ok, safe, a_row = moe_block(pid_m, num_pairs, max_padded, sorted_ptr, expert_ptr, TOPK, A_BY_TOKEN,
                                       DIRECT, BM)
    if e < 0:
        return
    offs_n = pid_n * BN + tl.arange(0, BN)
    n_ok = offs_n < N
    rows = tl.where(n_ok, offs_n, 0).to(tl.int64)
    w_rows = w_ptr + e * s_we + rows[:, None] * s_wn
    x_cols = a_ptr + a_row[None, :] * s_ar
    s_tile = s_ptr + e * s_se + ((pid_n * BN) // SBN).to(tl.int64) * s_sn
    steps = tl.cdiv(tl.cdiv(K, BK), SPLIT_K)
    k0 = pid_k * steps * BK
    k1 = tl.minimum(K, k0 + steps * BK)
    COMPUTE: tl.constexpr = a_ptr.dtype.element_ty
    acc = tl.zeros([BN, BM], tl.float32)
    acc_up = tl.zeros([BN, BM], tl.float32)
    acc, acc_up = _accumulate(acc, acc_up, w_rows, N * s_wn, s_tile, (N // SBN) * s_sn, s_sk, x_cols, row_ok[None, :],
                              k0, k1, K, BK, SBK, BLOCK_SCALES, EVEN_K, COMPUTE, USE_ASM, COMPUTE == tl.float32, GATED)
    if not BLOCK_SCALES:
        acc = acc * tl.load(s_ptr + e * s_se)
        if GATED:
            acc_up = acc_up * tl.load(s_ptr + e * s_se + s_sn)
    store_moe_tile(acc, acc_up, out_ptr, safe, row_ok, offs_n, n_ok, pid_k, s_or, s_os, N, GATED, SPLIT_K)


def _gemm(a, w, s, out, align, num_pairs, n, topk, gated, a_by_token, cfg: Fp8Config, split, block):
    """align: moe_align_block_size's triple, or the flat topk_ids alone (direct mode).
    s: block scales [E, rows/bn, K/bk], or per-tensor scales [E, 1 or 2] (block None)."""
    direct = isinstance(align, torch.Tensor)
    sorted_ids, expert_ids = (align, align) if direct else align[:2]
    max_padded = num_pairs if direct else sorted_ids.numel()
    k = w.shape[2]
    sbn, sbk = block if block else (None, None)
    bn = fit_block_n(cfg.block_n, sbn)
    bk = fit_block_k(cfg.block_k, k, sbk)
    blocks = num_pairs if direct else triton.cdiv(max_padded, cfg.block_m)
    grid = (blocks * triton.cdiv(n, bn), split)
    pdl = use_pdl(a.device)
    _fp8_moe_gemm_kernel[grid](
        a, w, s, out, sorted_ids, expert_ids,
        num_pairs, max_padded, n, k, a.stride(0), w.stride(0), w.stride(1),
        s.stride(0), s.stride(1), s.stride(2) if block else 0, out.stride(-2), out.stride(0) if split > 1 else 0,
        TOPK=topk, GATED=gated, A_BY_TOKEN=a_by_token, SPLIT_K=split, DIRECT=direct,
        BLOCK_SCALES=block is not None, SBN=sbn or 1, SBK=sbk or 1, EVEN_K=k % bk == 0,
        BM=cfg.block_m, BN=bn, BK=bk, GROUP_M=cfg.group_m, USE_ASM=use_asm(a), PDL=pdl,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, launch_pdl=pdl,
    )


def _splits(cfg: Fp8Config, k: int, block) -> int:
    return max(1, min(cfg.split_k, triton.cdiv(k, fit_block_k(cfg.block_k, k, block[1] if block else None))))


def supports(x: torch.Tensor, w13_weight: torch.Tensor, w2_weight: torch.Tensor, scheme: str, block=FP8_BLOCK) -> bool:
    """What the Triton FP8 MoE takes: E4M3 experts, float activations, scale blocks that whole
    16-wide tiles fill and that do not straddle the gate / up boundary."""
    if w13_weight.dtype != torch.float8_e4m3fn or w2_weight.dtype != torch.float8_e4m3fn:
        return False
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32) or scheme not in SCHEMES:
        return False
    return scheme != "block" or (block_scales_fit(tuple(block)) and (w13_weight.shape[1] // 2) % block[0] == 0)


def fp8_fused_moe(x, w13_weight, w13_weight_scale, w2_weight, w2_weight_scale, topk_weights, topk_ids,
                  scheme, block=FP8_BLOCK, out: torch.Tensor | None = None,
                  config: Fp8MoeConfig | None = None) -> torch.Tensor:
    """The Triton FP8 MoE (W8A16). No host sync: capturable in a CUDA graph."""
    block = tuple(block)
    T, H, E, inter, k = _check(x, w13_weight, w13_weight_scale, w2_weight, w2_weight_scale, topk_weights, topk_ids,
                               scheme, block)
    if not supports(x, w13_weight, w2_weight, scheme, block):
        raise ValueError(f"fp8_fused_moe takes E4M3 experts with 16-aligned scale blocks, got {w13_weight.dtype}, {block}")
    if out is None:
        out = torch.empty_like(x)
    if T == 0:
        return out
    if w13_weight.stride(-1) != 1 or w2_weight.stride(-1) != 1:
        raise ValueError("FP8 expert weights must be contiguous along their last dimension")
    if x.stride(1) != 1:
        x = x.contiguous()
    topk_weights = topk_weights.contiguous()  # the combine indexes it as [T * k]
    if scheme == "block":
        s13, s2, blk = w13_weight_scale.float(), w2_weight_scale.float(), block
    else:
        s13 = w13_weight_scale.float().reshape(E, 2).unsqueeze(-1)  # [E, 2, 1]: gate at [e, 0], up at [e, 1]
        s2 = w2_weight_scale.float().reshape(E, 1, 1)
        blk = None
    cfg = config or moe_config(T, E, H, inter, k, x.device)
    P = T * k

    def gemm(first, a, dst, align, split):
        if first:
            _gemm(a, w13_weight, s13, dst, align, P, inter, k, True, True, cfg.w13, split, blk)
        else:
            _gemm(a, w2_weight, s2, dst, align, P, H, k, False, False, cfg.w2, split, blk)

    return run_moe_stages(x, topk_weights, topk_ids, out, E, inter, cfg.block_m, cfg.direct,
                          _splits(cfg.w13, H, blk), _splits(cfg.w2, inter, blk), gemm)
