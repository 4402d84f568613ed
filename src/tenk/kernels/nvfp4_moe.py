"""Fused MoE with NVFP4 experts on Hopper: the contract of tenk.kernels.moe.fused_moe with 4-bit
w1|w3 and w2 (DESIGN.md "Quantized formats", "Fused MoE").

Shapes (T tokens, H hidden, I expert FFN width, E experts, k experts per token, P = T * k pairs):
  x                    [T, H] bf16 (fp32 under the interpreter)
  w13_weight           [E, 2I, H/2] uint8 (ModelOpt) or [E, 2I, H/4] int16 (kernel layout, nvfp4_gemm;
                       expert tiles: [E, 2I/32, H/4/TQ, 32, TQ])
  w13_weight_scale     [E, 2I, H/16] E4M3               or [E, 2I, H/64] int32 (tiles: [E, 2I/32, H/64, 32])
  w13_weight_scale_2   [E, 2] fp32: w1's global scale (gate rows), w3's (up rows), never merged
  w2_weight            [E, H, I/2] / [E, H, I/4];  w2_weight_scale [E, H, I/16] / [E, H, I/64]
  w2_weight_scale_2    [E] fp32
  topk_weights [T, k] fp32, topk_ids [T, k] int (-1: expert not on this rank, contributes nothing)

Fused path (no host sync, CUDA-graph safe): moe_align_block_size groups the pairs into expert
blocks of block_m (one launch; tiny batches skip it: "direct" mode, one block per pair); one launch of the grouped GEMM for w1|w3 (gate and up accumulated side by
side, each scaled by its own global scale, SiLU*mul in the epilogue); one for w2; the weighted
combine. Small batches split K (fp32 partials, summed by the SiLU / combine kernels).
Dequant path (large batches, where tensor-core throughput matters more than bytes): dequantize
the experts to bf16 once per call, in chunks of at most `scratch_bytes`, and run the bf16
torch._grouped_mm MoE. Wgmma path (prefill sizes on Hopper): the fused path with both grouped GEMMs
as Gluon kernels whose MMAs overlap the dequantization (nvfp4_moe_wgmma; the Triton kernels run its
tiles where Gluon cannot). The launch config (tenk.kernels.configs.nvfp4) picks the path by batch
size.
(A third path, dequantizing each expert tile once into a scratch panel and then running plain
GEMMs over it, measured 1.6x to 5.4x slower than the fused kernel at 1,024 to 16,384 tokens on an
H100: Triton's wgmma waits for each MMA whose operand was produced in registers, so the
dequantization never overlaps the tensor cores; it was removed.)
Weights come in either kernel layout: rows, or the expert tiles the engine stores on a GPU
(tile_moe_experts: chunks of 32 rows by the decode K step, read whole by each step; results are
identical).
Under PDL a decode GEMM's grid is resident while the launch before it finishes, and DRAM idles
meanwhile (the one-CTA align before w1|w3; w1|w3's last programs before w2): where the table sets
Nvfp4Config.prefetch, the first programs fetch their tiles' first K steps into L2 then
(prefetch_args). H100, whole calls against the previous table, isolated and in chains of 4:
1.01x-1.04x at 8-256 tokens where the tuner turned it on (benchmarks/results/moe_prefetch_table_ab*);
every program prefetching measured 0.88x-1.01x (each one counting its block's expert costs more than
the prefetch brings, moe_prefetch_h100.json).
`nvfp4_fused_moe_ref` (dequantize + fused_moe_ref) has the same signature.
"""

from __future__ import annotations

import os
from collections import Counter

import torch

from tenk.kernels._common import next_pow2, num_sms, use_pdl
from tenk.kernels._tiles import grouped_tile, wait_prior_grid
from tenk.kernels._triton import tl, triton
from tenk.kernels.configs.nvfp4 import Nvfp4MoeConfig, moe_config
from tenk.kernels.moe import (
    block_pairs,
    fused_moe_grouped_mm,
    fused_moe_ref,
    fused_moe_triton,
    moe_align_block_size,
    store_moe_tile,
)
from tenk.kernels.nvfp4_gemm import (
    TILE_ROWS,
    _accumulate,
    dequantize,
    dequantize_kernel_layout,
    expert_layout,
    fit_block_kq,
    nonempty_splits,
    tile_experts,
    tile_offsets,
    to_kernel_layout,
    to_modelopt_layout,
    use_asm,
)
from tenk.kernels.nvfp4_moe_wgmma import moe_gemm_wgmma, usable as wgmma_usable

SCRATCH_BYTES = 4 << 30  # most bf16 expert bytes the dequant path materialises at once


# ---------------------------------------------------------------- reference


def _logical(w: torch.Tensor) -> tuple[int, int, int]:
    """(E, N, K) of expert weights in any layout: ModelOpt uint8 [E, N, K/2], kernel rows int16
    [E, N, K/4], expert tiles int16 [E, N/TN, Q/TQ, TN, TQ] (Q = K/4)."""
    if w.dim() == 5:
        return w.shape[0], w.shape[1] * w.shape[3], w.shape[2] * w.shape[4] * 4
    return w.shape[0], w.shape[1], w.shape[2] * (4 if w.dtype == torch.int16 else 2)


def _check(x, w13q, w2q, topk_weights, topk_ids) -> tuple[int, int, int, int, int]:
    T, H = x.shape
    if w13q.dim() not in (3, 5) or w2q.dim() != w13q.dim():
        raise ValueError(f"NVFP4 expert weights must be [E, N, K/2] or kernel-laid, got w13 {tuple(w13q.shape)}, "
                         f"w2 {tuple(w2q.shape)}")
    E, two_i, h = _logical(w13q)
    e2, h2, inter2 = _logical(w2q)
    inter = two_i // 2
    if h != H or two_i % 2 or (e2, h2) != (E, H) or inter2 != inter:
        raise ValueError(f"NVFP4 expert weights do not fit: x {tuple(x.shape)}, w13 {tuple(w13q.shape)}, "
                         f"w2 {tuple(w2q.shape)}")
    if topk_ids.shape != topk_weights.shape or topk_ids.shape[0] != T:
        raise ValueError("topk_ids and topk_weights must both be [T, k]")
    return T, H, E, inter, topk_ids.shape[1]


def dequantize_experts(w13_weight, w13_weight_scale, w13_weight_scale_2, w2_weight, w2_weight_scale,
                       w2_weight_scale_2, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(w13 [E, 2I, H], w2 [E, H, I]) in dtype, each value code * block scale * its global scale
    rounded once (w1 rows with w13_weight_scale_2[:, 0], w3 rows with [:, 1])."""
    w13, s13 = to_modelopt_layout(w13_weight, w13_weight_scale)
    w2, s2 = to_modelopt_layout(w2_weight, w2_weight_scale)
    E = w13.shape[0]
    inter = w13.shape[1] // 2
    base = dequantize(w13, s13, torch.ones(E, device=w13.device))
    g13 = w13_weight_scale_2.float().reshape(E, 2).repeat_interleave(inter, dim=1).unsqueeze(-1)  # [E, 2I, 1]
    return (base * g13).to(dtype), dequantize(w2, s2, w2_weight_scale_2.float().reshape(E)).to(dtype)


def nvfp4_fused_moe_ref(x, w13_weight, w13_weight_scale, w13_weight_scale_2, w2_weight, w2_weight_scale,
                        w2_weight_scale_2, topk_weights, topk_ids, out=None, config=None) -> torch.Tensor:
    """Dequantize the experts exactly (in x's dtype), then the plain-PyTorch fused MoE."""
    _check(x, w13_weight, w2_weight, topk_weights, topk_ids)
    w13, w2 = dequantize_experts(w13_weight, w13_weight_scale, w13_weight_scale_2, w2_weight, w2_weight_scale,
                                 w2_weight_scale_2, x.dtype)
    return fused_moe_ref(x, w13, w2, topk_weights, topk_ids, out)


# ---------------------------------------------------------------- expert tiles (load time)

TILE_FOR_TOKENS = (16, 64, 256)  # the decode buckets whose K steps the tiles are cut for
TILES_ENV = "TENK_NVFP4_EXPERT_TILES"  # "0": keep the row layout (to compare; results are identical)


def tile_moe_experts(w13q, w13s, w2q, w2s, top_k: int, device=None):
    """Kernel-layout experts -> expert tiles (nvfp4_gemm.tile_experts) whose chunks are as wide as
    the K steps the launch table runs at decode sizes (the most common block_kq over
    TILE_FOR_TOKENS), where whole 32-row tiles fit (w1's and w3's rows apart). Returns the four
    tensors, unchanged where they do not tile or TENK_NVFP4_EXPERT_TILES=0."""
    if w13q.dim() != 3 or w13q.dtype != torch.int16 or os.environ.get(TILES_ENV, "1") == "0":
        return w13q, w13s, w2q, w2s
    E, two_i, q13 = w13q.shape
    H, q2 = w2q.shape[1], w2q.shape[2]
    if (two_i // 2) % TILE_ROWS or H % TILE_ROWS:
        return w13q, w13s, w2q, w2s
    cfgs = [moe_config(t, E, H, two_i // 2, top_k, device or w13q.device) for t in TILE_FOR_TOKENS]
    cols13 = Counter(fit_block_kq(c.w13, q13) for c in cfgs).most_common(1)[0][0]
    cols2 = Counter(fit_block_kq(c.w2, q2) for c in cfgs).most_common(1)[0][0]
    return (*tile_experts(w13q, w13s, cols13), *tile_experts(w2q, w2s, cols2))


# ---------------------------------------------------------------- token/expert alignment

ALIGN_ONE_CTA_MAX_PAIRS = 2048  # above, the multi-CTA kernels win on an H100 (see moe_align_block_size_triton)
ALIGN_MIN_CHUNK = 256
ALIGN_CTA_PAIRS = 1024  # pairs (and padded slots) per program of the multi-CTA kernels
ALIGN_CTA_BLOCKS = 64  # token blocks per program when the multi-CTA scatter writes block experts


def align_chunk(num_pairs: int) -> int:
    """Pairs the one-CTA align kernel reads per pass: all of them at once (a power of two, so few
    variants compile: the MoE warm-up's token buckets cover them). One CTA runs the kernel, so each
    pass is a serial round trip to memory (and, when scattering, a batch of atomics)."""
    return min(ALIGN_ONE_CTA_MAX_PAIRS, max(ALIGN_MIN_CHUNK, next_pow2(num_pairs)))


@triton.jit
def _align_count(ids_ptr, p0, P, NB: tl.constexpr, BP: tl.constexpr):
    """Histogram of pairs [p0, p0 + BP) over NB bins; bin NB - 1 collects -1 ids and masked lanes."""
    offs = p0 + tl.arange(0, BP)
    ids = tl.load(ids_ptr + offs, mask=offs < P, other=-1).to(tl.int32)
    return tl.histogram(tl.where(ids >= 0, ids, NB - 1), NB)


@triton.jit
def _align_counts(ids_ptr, P, NB: tl.constexpr, BP: tl.constexpr):
    """Pairs per expert over all P pairs, in passes of BP (_align_count's bins)."""
    counts = tl.zeros([NB], tl.int32)
    for p0 in range(0, P, BP):
        counts += _align_count(ids_ptr, p0, P, NB, BP)
    return counts


@triton.jit
def _align_runs(counts, cursor_ptr, npp_ptr, E, BM: tl.constexpr, NB: tl.constexpr):
    """Each expert's run padded to a multiple of BM: cursors at the run starts, the padded total
    (num_tokens_post_padded); returns (the runs' ends, the total)."""
    e = tl.arange(0, NB)
    counts = tl.where(e < E, counts, 0)
    padded = (counts + BM - 1) // BM * BM
    pad_end = tl.cumsum(padded, 0)
    total = tl.sum(padded, 0)
    tl.store(cursor_ptr + e, pad_end - padded)
    tl.store(npp_ptr, total)
    return pad_end, total


@triton.jit
def _align_fill(sorted_ptr, s0, max_padded, P, BP: tl.constexpr):
    offs = s0 + tl.arange(0, BP)
    tl.store(sorted_ptr + offs, tl.zeros([BP], tl.int32) + P, mask=offs < max_padded)


@triton.jit
def _align_scatter(ids_ptr, sorted_ptr, cursor_ptr, p0, P, BP: tl.constexpr, SCOPE: tl.constexpr):
    """Each valid pair of [p0, p0 + BP) takes the next slot of its expert's run. SCOPE of the
    cursor atomics: "cta" when this CTA alone touches the cursors, else "gpu"."""
    offs = p0 + tl.arange(0, BP)
    ids = tl.load(ids_ptr + offs, mask=offs < P, other=-1).to(tl.int32)
    ok = ids >= 0
    # relaxed: only unique slots matter (the default acq_rel fences cost ~4 us at 2,048 pairs)
    slot = tl.atomic_add(cursor_ptr + tl.where(ok, ids, 0), tl.full([BP], 1, tl.int32), mask=ok, sem="relaxed",
                         scope=SCOPE)
    tl.store(sorted_ptr + slot, offs, mask=ok)


@triton.jit(do_not_specialize=["P", "max_padded", "num_blocks"])
def _moe_align_kernel(ids_ptr, sorted_ptr, expert_ptr, npp_ptr, cursor_ptr, P, E, max_padded, num_blocks,
                      BM: tl.constexpr, NB: tl.constexpr, BP: tl.constexpr, NBLK: tl.constexpr,
                      PDL: tl.constexpr):
    """moe_align_block_size in one launch of one CTA (decode batches: the torch version is ~25 tiny
    launches). Histogram -> padded prefix sums -> block experts; then each pair takes a slot with an
    atomic on its expert's cursor. NB > E.
    Block b's expert is the number of experts whose padded run ends at or before block b: a
    histogram of the run ends over NBLK > num_blocks bins, summed up (a searchsorted per block over
    all experts cost ~8 us at 2,048 pairs and 128 experts on an H100; this is one pass)."""
    wait_prior_grid(PDL)
    pad_end, total = _align_runs(_align_counts(ids_ptr, P, NB, BP), cursor_ptr, npp_ptr, E, BM, NB)
    for s0 in range(0, max_padded, BP):
        _align_fill(sorted_ptr, s0, max_padded, P, BP)
    e = tl.arange(0, NB)
    ends = tl.histogram(tl.where(e < E, pad_end // BM, NBLK - 1), NBLK)  # bin NBLK - 1: beyond every block
    b = tl.arange(0, NBLK)
    tl.store(expert_ptr + b, tl.where(b * BM < total, tl.cumsum(ends, 0), -1), mask=b < num_blocks)
    tl.debug_barrier()  # cursors and the P fill are visible to every thread of the CTA
    for p0 in range(0, P, BP):
        _align_scatter(ids_ptr, sorted_ptr, cursor_ptr, p0, P, BP, "cta")


@triton.jit(do_not_specialize=["P", "max_padded"])
def _align_count_kernel(ids_ptr, sorted_ptr, counts_ptr, P, max_padded, NB: tl.constexpr, BP: tl.constexpr,
                        PDL: tl.constexpr):
    """Multi-CTA align, 1 of 3: program i fills padded slots [i*BP, (i+1)*BP) with P and adds its
    pairs' histogram into counts (zeroed by the caller)."""
    wait_prior_grid(PDL)
    i = tl.program_id(0)
    _align_fill(sorted_ptr, i * BP, max_padded, P, BP)
    if i * BP < P:
        h = _align_count(ids_ptr, i * BP, P, NB, BP)
        tl.atomic_add(counts_ptr + tl.arange(0, NB), h, mask=h > 0, sem="relaxed")


@triton.jit
def _align_runs_kernel(counts_ptr, cursor_ptr, ends_ptr, npp_ptr, E, BM: tl.constexpr, NB: tl.constexpr,
                       PDL: tl.constexpr):
    """Multi-CTA align, 2 of 3 (one CTA): run starts (cursors), ends and the padded total."""
    wait_prior_grid(PDL)
    pad_end, _ = _align_runs(tl.load(counts_ptr + tl.arange(0, NB)), cursor_ptr, npp_ptr, E, BM, NB)
    tl.store(ends_ptr + tl.arange(0, NB), pad_end)


@triton.jit(do_not_specialize=["P", "num_blocks"])
def _align_scatter_kernel(ids_ptr, sorted_ptr, expert_ptr, cursor_ptr, ends_ptr, npp_ptr, P, E, num_blocks,
                          BM: tl.constexpr, NB: tl.constexpr, BP: tl.constexpr, BLK: tl.constexpr,
                          PDL: tl.constexpr):
    """Multi-CTA align, 3 of 3: program i places pairs [i*BP, (i+1)*BP) and writes the experts of
    token blocks [i*BLK, (i+1)*BLK): the number of runs that end at or before each block."""
    wait_prior_grid(PDL)
    i = tl.program_id(0)
    if i * BP < P:
        _align_scatter(ids_ptr, sorted_ptr, cursor_ptr, i * BP, P, BP, "gpu")
    b = i * BLK + tl.arange(0, BLK)
    if i * BLK < num_blocks:
        e = tl.arange(0, NB)
        ends = tl.load(ends_ptr + e)
        before = tl.sum(((ends[None, :] <= b[:, None] * BM) & (e[None, :] < E)).to(tl.int32), 1)
        expert = tl.where(b * BM < tl.load(npp_ptr), before, -1)
        tl.store(expert_ptr + b, expert, mask=b < num_blocks)


@triton.jit
def _block_expert(ids_ptr, P, pid_m, E, BM: tl.constexpr, NB: tl.constexpr, BP: tl.constexpr):
    """The expert moe_align_block_size gives token block pid_m, worked out from the flat ids alone
    (E or more: a block past the used ones): the number of experts whose padded run ends at or
    before the block, as the align kernels count it."""
    counts = _align_counts(ids_ptr, P, NB, BP)
    e = tl.arange(0, NB)
    ends = tl.cumsum(tl.where(e < E, (counts + BM - 1) // BM, 0), 0)
    return tl.sum((ends <= pid_m).to(tl.int32), 0)


# one bulk L2 prefetch per element, and a second one where the flag is set (no result: $0 is a dummy)
_PREFETCH_ASM = tl.constexpr(
    "{ .reg .pred p; setp.ne.b32 p, $4, 0; cp.async.bulk.prefetch.L2.global [$1], $3; "
    "@p cp.async.bulk.prefetch.L2.global [$2], $5; mov.b32 $0, 0; }"
) if tl else None


@triton.jit
def _prefetch_first_steps(wq_ptr, sq_ptr, e, pid_n, N, s_we, s_wn, s_se, s_sn, GATED: tl.constexpr,
                          BN: tl.constexpr, TN: tl.constexpr, PF: tl.constexpr, PIECES: tl.constexpr):
    """Bulk L2 prefetch of the first PF bytes of each 32-row expert tile this program's rows start
    (and of the up half's), with their scale words, in PIECES pieces a tile spread over the threads.
    Expert tiles keep a tile's K chunks in order, so its first K steps are one contiguous run."""
    NG: tl.constexpr = max(1, BN // TN)
    R: tl.constexpr = NG * (2 if GATED else 1)
    i = tl.arange(0, R * PIECES)
    region = i // PIECES
    piece = i % PIECES
    group = tl.minimum((pid_n * BN) // TN + region % NG, N // TN - 1).to(tl.int64)
    half = (region >= NG).to(tl.int64)
    w = wq_ptr + e * s_we + group * (TN * s_wn) + half * (N * s_wn) + piece * (PF // PIECES // 2)
    s = sq_ptr + e * s_se + group * (TN * s_sn) + half * (N * s_sn)
    s = s.to(tl.pointer_type(tl.int16), bitcast=True)  # the asm takes operands of one type
    tl.inline_asm_elementwise(_PREFETCH_ASM, "=r,l,l,r,r,r",
                              [w, s, tl.full([R * PIECES], PF // PIECES, tl.int32), (piece == 0).to(tl.int32),
                               tl.full([R * PIECES], max(16, PF // 8), tl.int32)],
                              dtype=tl.int32, is_pure=False, pack=1)


def moe_align_block_size_triton(topk_ids: torch.Tensor, num_experts: int, block_m: int, chunk: int | None = None,
                                one_cta: bool | None = None):
    """tenk.kernels.moe.moe_align_block_size's contract (same blocks, same padding, same expert ids),
    except that pairs inside an expert's run are in arbitrary order (the GEMM rows are independent,
    so results do not change). Up to ALIGN_ONE_CTA_MAX_PAIRS pairs (one_cta None) one launch of one
    CTA; above, three launches over the pairs (count + fill, runs, scatter + block experts), as a
    single CTA's serial passes grow with the batch (26-34 us in a graph at 8,192 pairs on an H100,
    against 14 us for the three).
    chunk: pairs per pass of the one-CTA kernel (a power of two; default align_chunk)."""
    flat = topk_ids.reshape(-1)
    P = flat.numel()
    if P == 0:
        return moe_align_block_size(topk_ids, num_experts, block_m)
    dev = flat.device
    max_padded = P + min(num_experts, P) * (block_m - 1)
    num_blocks = triton.cdiv(max_padded, block_m)
    nb = next_pow2(num_experts + 1)
    sorted_ids = torch.empty(max_padded, dtype=torch.int32, device=dev)
    expert_ids = torch.empty(num_blocks, dtype=torch.int32, device=dev)
    npp = torch.empty(1, dtype=torch.int32, device=dev)
    cursor = torch.empty(nb, dtype=torch.int32, device=dev)
    pdl = use_pdl(dev)
    if one_cta if one_cta is not None else P <= ALIGN_ONE_CTA_MAX_PAIRS:
        _moe_align_kernel[(1,)](flat, sorted_ids, expert_ids, npp, cursor, P, num_experts, max_padded, num_blocks,
                                BM=block_m, NB=nb, BP=chunk or align_chunk(P), NBLK=next_pow2(num_blocks + 1),
                                PDL=pdl, num_warps=8, launch_pdl=pdl)
        return sorted_ids, expert_ids, npp
    counts = torch.zeros(nb, dtype=torch.int32, device=dev)
    ends = torch.empty(nb, dtype=torch.int32, device=dev)
    bp = ALIGN_CTA_PAIRS
    _align_count_kernel[(triton.cdiv(max_padded, bp),)](flat, sorted_ids, counts, P, max_padded, NB=nb, BP=bp,
                                                        PDL=pdl, num_warps=4, launch_pdl=pdl)
    _align_runs_kernel[(1,)](counts, cursor, ends, npp, num_experts, BM=block_m, NB=nb, PDL=pdl, num_warps=4,
                             launch_pdl=pdl)
    grid = max(triton.cdiv(P, bp), triton.cdiv(num_blocks, ALIGN_CTA_BLOCKS))
    _align_scatter_kernel[(grid,)](flat, sorted_ids, expert_ids, cursor, ends, npp, P, num_experts, num_blocks,
                                   BM=block_m, NB=nb, BP=bp, BLK=ALIGN_CTA_BLOCKS, PDL=pdl, num_warps=4,
                                   launch_pdl=pdl)
    return sorted_ids, expert_ids, npp


# ---------------------------------------------------------------- grouped GEMM


@triton.jit(do_not_specialize=["num_pairs", "max_padded", "num_experts", "pf_programs"])
def _nvfp4_moe_gemm_kernel(
    a_ptr, wq_ptr, sq_ptr, gs_ptr, out_ptr, sorted_ptr, expert_ptr, ids_ptr,
    num_pairs, max_padded, N, Q, s_ar, s_we, s_wn, s_se, s_sn, s_ge, s_or, s_os, num_experts, pf_programs,
    TOPK: tl.constexpr, GATED: tl.constexpr, A_BY_TOKEN: tl.constexpr, SPLIT_K: tl.constexpr, DIRECT: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BKQ: tl.constexpr, GROUP_M: tl.constexpr, USE_ASM: tl.constexpr,
    TN: tl.constexpr, TQ: tl.constexpr, PDL: tl.constexpr,
    PF: tl.constexpr, PF_PIECES: tl.constexpr, PF_NB: tl.constexpr, PF_BP: tl.constexpr, NARROW: tl.constexpr,
):
    """For each expert block of BM pairs: out[pair, :N] = A[row] @ dequant(W[e])^T (rows: the pair's
    token for w13, the pair itself for w2), computed as out^T tiles [BN, BM].
    GATED (w1|w3): W[e] rows [0, N) are the gate, [N, 2N) the up projection; with SPLIT_K == 1 the
    epilogue writes silu(gate * gs[e, 0]) * (up * gs[e, 1]) rounded like the unfused path, else fp32
    partials [split, pair, 2N] (gate | up, already scaled) for _silu_mul_reduce_kernel.
    Not GATED (w2): out = acc * gs[e] in out's dtype, or fp32 partials [split, pair, N].
    DIRECT (tiny batches, no alignment): token block m is pair m alone, expert_ptr holds the flat
    topk_ids; a token's top-k experts differ, so no weight is read twice.
    TN, TQ: the weight layout (TN 1: rows; else expert tiles of TN x TQ chunks, nvfp4_gemm.TILE_ROWS);
    the up half of w1|w3 starts N rows on in either (N * s_wn, N * s_sn: TN divides N).
    PF > 0 (expert tiles, PDL): programs below pf_programs first prefetch PF bytes of their tiles'
    first K steps into L2 (prefetch_args); ids_ptr: the flat topk ids, for w1|w3's.
    NARROW (Nvfp4Config.narrow, aligned blocks of 32 or more): a block with at most BM/2 pairs runs
    the BM/2 wide tile (the rows it drops are padding)."""
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    if DIRECT:
        num_m = num_pairs
    else:
        num_m = tl.cdiv(max_padded, BM)
    num_n = tl.cdiv(N, BN)
    pid_m, pid_n = grouped_tile(pid, num_m, num_n, GROUP_M)
    if PF > 0:
        # Under PDL the grid is resident while the previous launch finishes (the one-CTA align for
        # w1|w3, w1|w3's last programs for w2) and DRAM is mostly idle, so the first programs fetch
        # their first K steps into L2 meanwhile. What they read before the wait was written before
        # the previous launch began (it waited for its own predecessor before letting this grid
        # launch): w1|w3 counts its block's expert from the flat ids, w2 reads the aligned one.
        if pid < pf_programs:
            if GATED:
                pf_e = _block_expert(ids_ptr, num_pairs, pid_m, num_experts, BM, PF_NB, PF_BP)
            else:
                pf_e = tl.load(expert_ptr + pid_m)
            if (pf_e >= 0) & (pf_e < num_experts):
                _prefetch_first_steps(wq_ptr, sq_ptr, pf_e, pid_n, N, s_we, s_wn, s_se, s_sn, GATED, BN, TN, PF,
                                      PF_PIECES)
    wait_prior_grid(PDL)
    e = tl.load(expert_ptr + pid_m).to(tl.int64)  # moe_block's expert: -1 past the used blocks
    if e < 0:
        return
    if NARROW:
        # an expert's last block holds its pair count mod BM (valid pairs first, then padding): one
        # whose pairs fit half the block runs the half-wide tile, half the MMA and x reads
        row_ok, unused, unused2 = block_pairs(pid_m, num_pairs, max_padded, sorted_ptr, TOPK, A_BY_TOKEN, DIRECT, BM)
        if tl.sum(row_ok.to(tl.int32), 0) <= BM // 2:
            _moe_tile(pid_m, pid_n, pid_k, e, a_ptr, wq_ptr, sq_ptr, gs_ptr, out_ptr, sorted_ptr, num_pairs,
                      max_padded, N, Q, s_ar, s_we, s_wn, s_se, s_sn, s_ge, s_or, s_os,
                      TOPK, GATED, A_BY_TOKEN, SPLIT_K, DIRECT, BM, BM // 2, BN, BKQ, USE_ASM, TN, TQ)
            return
    _moe_tile(pid_m, pid_n, pid_k, e, a_ptr, wq_ptr, sq_ptr, gs_ptr, out_ptr, sorted_ptr, num_pairs,
              max_padded, N, Q, s_ar, s_we, s_wn, s_se, s_sn, s_ge, s_or, s_os,
              TOPK, GATED, A_BY_TOKEN, SPLIT_K, DIRECT, BM, BM, BN, BKQ, USE_ASM, TN, TQ)


@triton.jit
def _moe_tile(pid_m, pid_n, pid_k, e, a_ptr, wq_ptr, sq_ptr, gs_ptr, out_ptr, sorted_ptr, num_pairs, max_padded, N, Q,
              s_ar, s_we, s_wn, s_se, s_sn, s_ge, s_or, s_os,
              TOPK: tl.constexpr, GATED: tl.constexpr, A_BY_TOKEN: tl.constexpr, SPLIT_K: tl.constexpr,
              DIRECT: tl.constexpr, BM: tl.constexpr, BMT: tl.constexpr, BN: tl.constexpr, BKQ: tl.constexpr,
              USE_ASM: tl.constexpr, TN: tl.constexpr, TQ: tl.constexpr):
    """The out^T tile [BN, BMT] of the first BMT pairs of token block pid_m (blocks BM pairs apart)
    for K split pid_k of expert e (_nvfp4_moe_gemm_kernel's work)."""
    row_ok, safe, a_row = block_pairs(pid_m, num_pairs, max_padded, sorted_ptr, TOPK, A_BY_TOKEN, DIRECT, BM, BMT)
    offs_n = pid_n * BN + tl.arange(0, BN)
    n_ok = offs_n < N
    w_off, s_off = tile_offsets(offs_n, N, s_wn, s_sn, TN, TQ)
    w_rows = wq_ptr + e * s_we + w_off[:, None]
    s_rows = sq_ptr + e * s_se + s_off[:, None]
    x_cols = a_ptr + a_row[None, :] * s_ar
    steps = tl.cdiv(Q // BKQ, SPLIT_K)
    k0 = pid_k * steps * BKQ
    k1 = tl.minimum(Q, k0 + steps * BKQ)
    COMPUTE: tl.constexpr = a_ptr.dtype.element_ty
    acc = tl.zeros([BN, BMT], tl.float32)
    acc_up = tl.zeros([BN, BMT], tl.float32)
    acc, acc_up = _accumulate(acc, acc_up, w_rows, s_rows, N * s_wn, N * s_sn, x_cols, row_ok[None, :], k0, k1, Q,
                              BN, BKQ, COMPUTE, USE_ASM, COMPUTE == tl.float32, GATED, TN, TQ)

    g = acc * (tl.load(gs_ptr + e * s_ge) * 256.0)  # 256 undoes the kernel layout's 2^-8
    u = acc_up
    if GATED:
        u = acc_up * (tl.load(gs_ptr + e * s_ge + 1) * 256.0)
    store_moe_tile(g, u, out_ptr, safe, row_ok, offs_n, n_ok, pid_k, s_or, s_os, N, GATED, SPLIT_K)


@triton.jit
def _silu_mul_reduce_kernel(part_ptr, ids_ptr, out_ptr, N, s_pr, s_ps, s_or,
                            SPLIT_K: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """act[pair] = silu(sum_s gate) * sum_s up from the split-K partials, rounded like the fused
    epilogue; rows of -1 pairs are not written (their partials, never written by the GEMM, are read
    anyway, so the loads need not wait for the id)."""
    wait_prior_grid(PDL)
    p = tl.program_id(0).to(tl.int64)
    ok = tl.load(ids_ptr + p) >= 0
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = c < N
    g = tl.zeros([BLOCK], tl.float32)
    u = tl.zeros([BLOCK], tl.float32)
    # the pointer steps split by split: s * s_ps passes int32 at MiniMax-M2 prefill sizes with 8 splits
    base = part_ptr + p * s_pr
    for s in tl.static_range(SPLIT_K):
        g += tl.load(base + c, mask=m, other=0.0)
        u += tl.load(base + N + c, mask=m, other=0.0)
        base += s_ps
    dtype = out_ptr.dtype.element_ty
    g = g.to(dtype).to(tl.float32)
    u = u.to(dtype).to(tl.float32)
    s = (g / (1.0 + tl.exp(-g))).to(dtype).to(tl.float32)
    tl.store(out_ptr + p * s_or + c, (s * u).to(dtype), mask=m & ok)


@triton.jit
def _combine_splits_kernel(y_ptr, w_ptr, ids_ptr, out_ptr, H, s_yr, s_ys, s_ot,
                           TOPK: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """out[t] = sum_j w[t, j] * sum_s y[s, t * k + j] over valid experts, in fp32, fixed order.
    The rows of -1 pairs (never written: garbage) are read too and zeroed after the load, so every
    load of the program is in flight at once instead of the rows waiting for the ids."""
    wait_prior_grid(PDL)
    t = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = c < H
    acc = tl.zeros([BLOCK], tl.float32)
    for j in tl.static_range(TOPK):
        p = t * TOPK + j
        ok = tl.load(ids_ptr + p) >= 0
        w = tl.load(w_ptr + p).to(tl.float32)
        y = tl.zeros([BLOCK], tl.float32)
        part = y_ptr + p * s_yr + c
        for s in tl.static_range(SPLIT_K):  # stepped, not s * s_ys (see _silu_mul_reduce_kernel)
            y += tl.load(part, mask=m, other=0.0).to(tl.float32)
            part += s_ys
        acc += tl.where(ok, w, 0.0) * tl.where(ok, y, 0.0)
    tl.store(out_ptr + t * s_ot + c, acc.to(out_ptr.dtype.element_ty), mask=m)


PREFETCH_CTAS_PER_SM = 4  # the programs that prefetch: about the first wave of a decode GEMM's grid


def prefetch_args(cfg, gated: bool, split: int, direct: bool, pdl: bool, tn: int, q: int, num_pairs: int,
                  num_experts: int, device: torch.device) -> tuple[int, dict]:
    """(programs, kernel constexprs) of a GEMM's L2 prefetch before its PDL wait (Nvfp4Config.prefetch;
    PF 0 when off). Only with PDL (without it nothing runs meanwhile), aligned blocks, whole K per
    program and expert tiles; w1|w3 only up to the one-CTA align's size, as each prefetching program
    counts the pairs per expert itself."""
    meta = {"PF": 0, "PF_PIECES": 1, "PF_NB": 2, "PF_BP": 2}
    nbytes = min(cfg.prefetch, tn * q * 2)  # at most one 32-row tile's whole K run
    if (nbytes < 16 or not pdl or direct or split != 1 or tn == 1
            or (gated and num_pairs > ALIGN_ONE_CTA_MAX_PAIRS)):
        return 0, meta
    regions = max(1, cfg.block_n // tn) * (2 if gated else 1)
    meta.update(PF=nbytes, PF_PIECES=max(1, min(cfg.num_warps * 32 // regions, nbytes // 16)))
    if gated:  # the pairs per expert, counted in chunks of PF_BP over PF_NB bins (as the align kernels)
        meta.update(PF_NB=next_pow2(num_experts + 1), PF_BP=min(ALIGN_ONE_CTA_MAX_PAIRS, max(256, next_pow2(num_pairs))))
    return PREFETCH_CTAS_PER_SM * num_sms(device), meta


def _gemm(a, wq, sq, layout, gs, out, align, num_pairs, n, topk, gated, a_by_token, cfg, split, wgmma=False,
          flat_ids: torch.Tensor | None = None, num_experts: int = 0):
    """align: moe_align_block_size's triple, or the flat topk_ids alone (direct mode). wgmma: the
    Gluon kernel (nvfp4_moe_wgmma) instead of the Triton one. Weights in either layout (layout:
    their expert_layout). flat_ids, num_experts: for cfg.prefetch (prefetch_args)."""
    direct = isinstance(align, torch.Tensor)
    sorted_ids, expert_ids = (align, align) if direct else align[:2]
    max_padded = num_pairs if direct else sorted_ids.numel()
    tn, tq, _, q = layout[:4]
    bkq = fit_block_kq(cfg, q)
    if wgmma:
        moe_gemm_wgmma(a, wq, sq, gs, out, sorted_ids, expert_ids, num_pairs, n, topk, gated, a_by_token, cfg, bkq,
                       layout)
        return
    blocks = num_pairs if direct else triton.cdiv(max_padded, cfg.block_m)
    grid = (blocks * triton.cdiv(n, cfg.block_n), split)
    s_or = out.stride(-2)
    s_os = out.stride(0) if split > 1 else 0
    s_we, s_wn, s_se, s_sn = layout[4:]
    pdl = use_pdl(a.device)
    pf_programs, pf_meta = prefetch_args(cfg, gated, split, direct, pdl, tn, q, num_pairs, num_experts, a.device)
    _nvfp4_moe_gemm_kernel[grid](
        a, wq, sq, gs, out, sorted_ids, expert_ids, flat_ids if flat_ids is not None else expert_ids,
        num_pairs, max_padded, n, q, a.stride(0), s_we, s_wn, s_se, s_sn,
        gs.stride(0), s_or, s_os, num_experts, pf_programs,
        TOPK=topk, GATED=gated, A_BY_TOKEN=a_by_token, SPLIT_K=split, DIRECT=direct,
        BM=cfg.block_m, BN=cfg.block_n, BKQ=bkq, GROUP_M=cfg.group_m, USE_ASM=use_asm(a), TN=tn, TQ=tq, PDL=pdl,
        NARROW=cfg.narrow and not direct and cfg.block_m >= 32,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, launch_pdl=pdl, **pf_meta, **cfg.launch_options(),
    )


def _splits(cfg, q: int) -> int:
    return nonempty_splits(cfg.split_k, q // fit_block_kq(cfg, q))


def run_moe_stages(x, topk_weights, topk_ids, out, num_experts: int, inter: int, block_m: int, direct: bool,
                   split13: int, split2: int, gemm) -> torch.Tensor:
    """The launches of a fused MoE around its two grouped GEMMs, shared by the NVFP4 and FP8 MoEs:
    align the (token, expert) pairs (or not, in direct mode), w1|w3 with SiLU-mul fused (split-K:
    fp32 partials summed by _silu_mul_reduce_kernel), w2 (split-K: partials), the weighted combine.
    gemm(first, a, out, align, split) launches one grouped GEMM: first=True is w1|w3 on x by
    token, False is w2 on the activations by pair."""
    T, H = x.shape
    k = topk_ids.shape[1]
    P = T * k
    flat_ids = topk_ids.reshape(-1)
    pdl = use_pdl(x.device)
    align = flat_ids if direct else moe_align_block_size_triton(topk_ids, num_experts, block_m)
    act = torch.empty((P, inter), dtype=x.dtype, device=x.device)  # rows of -1 pairs stay unwritten
    if split13 == 1:
        gemm(True, x, act, align, 1)
    else:
        part = torch.empty((split13, P, 2 * inter), dtype=torch.float32, device=x.device)
        gemm(True, x, part, align, split13)
        block = min(1024, next_pow2(inter))
        _silu_mul_reduce_kernel[(P, triton.cdiv(inter, block))](
            part, flat_ids, act, inter, part.stride(1), part.stride(0), act.stride(0),
            SPLIT_K=split13, BLOCK=block, PDL=pdl, num_warps=4, launch_pdl=pdl,
        )
    y = torch.empty((split2, P, H), dtype=torch.float32 if split2 > 1 else x.dtype, device=x.device)
    gemm(False, act, y, align, split2)
    block = min(1024, next_pow2(H))
    _combine_splits_kernel[(T, triton.cdiv(H, block))](
        y, topk_weights, flat_ids, out, H, y.stride(1), y.stride(0), out.stride(0),
        TOPK=k, SPLIT_K=split2, BLOCK=block, PDL=pdl, num_warps=4, launch_pdl=pdl,
    )
    return out


def _fused(x, w13q, w13s, g13, w2q, w2s, g2, topk_weights, topk_ids, out, cfg: Nvfp4MoeConfig):
    E = w13q.shape[0]
    l13, l2 = expert_layout(w13q, w13s), expert_layout(w2q, w2s)
    two_i, q13, q2 = l13[2], l13[3], l2[3]
    k = topk_ids.shape[1]
    P = x.shape[0] * k

    wgmma = cfg.impl == "wgmma" and wgmma_usable(x)  # else its tiles run in the Triton kernel

    def gemm(first, a, dst, align, split):
        if first:
            _gemm(a, w13q, w13s, l13, g13, dst, align, P, two_i // 2, k, True, True, cfg.w13, split, wgmma,
                  flat_ids=topk_ids.reshape(-1), num_experts=E)
        else:
            _gemm(a, w2q, w2s, l2, g2, dst, align, P, x.shape[1], k, False, False, cfg.w2, split, wgmma,
                  num_experts=E)

    return run_moe_stages(x, topk_weights, topk_ids, out, E, two_i // 2, cfg.block_m, cfg.direct,
                          _splits(cfg.w13, q13), _splits(cfg.w2, q2), gemm)


def _dequant_path(x, w13q, w13s, g13, w2q, w2s, g2, topk_weights, topk_ids, out, scratch_bytes: int):
    """Dequantize experts to x's dtype (chunks of at most scratch_bytes) and run the bf16 grouped MoE
    (torch._grouped_mm; other dtypes on the GPU: tenk's Triton grouped GEMM)."""
    grouped = fused_moe_grouped_mm if x.dtype == torch.bfloat16 or not x.is_cuda else fused_moe_triton
    E = w13q.shape[0]
    two_i, q13 = expert_layout(w13q, w13s)[2:4]
    H = x.shape[1]
    per_expert = (two_i * 4 * q13 + H * 4 * expert_layout(w2q, w2s)[3]) * x.element_size()
    chunk = max(1, min(E, scratch_bytes // per_expert))
    if chunk >= E:
        w13 = dequantize_kernel_layout(w13q, w13s, g13, x.dtype, gs_mode=2)
        w2 = dequantize_kernel_layout(w2q, w2s, g2, x.dtype, gs_mode=1)
        return grouped(x, w13, w2, topk_weights, topk_ids, out)
    acc = torch.zeros(out.shape, dtype=torch.float32, device=x.device)
    part = torch.empty_like(out)
    ids = topk_ids.to(torch.int32)
    for e0 in range(0, E, chunk):
        e1 = min(E, e0 + chunk)
        w13 = dequantize_kernel_layout(w13q[e0:e1], w13s[e0:e1], g13[e0:e1], x.dtype, gs_mode=2)
        w2 = dequantize_kernel_layout(w2q[e0:e1], w2s[e0:e1], g2[e0:e1], x.dtype, gs_mode=1)
        local = torch.where((ids >= e0) & (ids < e1), ids - e0, -1)
        acc += grouped(x, w13, w2, topk_weights, local, part).float()
        del w13, w2
    return out.copy_(acc)


def nvfp4_fused_moe(x, w13_weight, w13_weight_scale, w13_weight_scale_2, w2_weight, w2_weight_scale,
                    w2_weight_scale_2, topk_weights, topk_ids, out: torch.Tensor | None = None,
                    config: Nvfp4MoeConfig | None = None, scratch_bytes: int = SCRATCH_BYTES) -> torch.Tensor:
    """The Triton NVFP4 MoE (either weight layout; the ModelOpt one is re-laid per call, which is
    slow: re-lay once at load time with nvfp4_gemm.pack_for_kernel)."""
    T, H, E, inter, k = _check(x, w13_weight, w2_weight, topk_weights, topk_ids)
    if out is None:
        out = torch.empty_like(x)
    if T == 0:
        return out
    if x.stride(1) != 1:
        x = x.contiguous()
    topk_weights = topk_weights.contiguous()  # the combine indexes it as [T * k]
    w13q, w13s = to_kernel_layout(w13_weight, w13_weight_scale)
    w2q, w2s = to_kernel_layout(w2_weight, w2_weight_scale)
    g13 = w13_weight_scale_2.float().reshape(E, 2).contiguous()
    g2 = w2_weight_scale_2.float().reshape(E, 1).contiguous()
    cfg = config or moe_config(T, E, H, inter, k, x.device)
    if cfg.impl == "dequant":
        return _dequant_path(x, w13q, w13s, g13, w2q, w2s, g2, topk_weights, topk_ids, out, scratch_bytes)
    return _fused(x, w13q, w13s, g13, w2q, w2s, g2, topk_weights, topk_ids, out, cfg)
