"""The NVFP4 MoE's grouped GEMM for prefill-sized batches on Hopper, in Gluon (Triton's lower-level
dialect): the work of nvfp4_moe._nvfp4_moe_gemm_kernel (aligned token blocks, whole K), with the
wgmma issued asynchronously.

Why a second kernel: the dequantized weights are wgmma's register operand. Triton's tl.dot waits for
each such MMA before the next instruction, so within a warp group the decode of the next quarter
never overlaps the tensor cores. Here each MMA stays in flight while the next quarter is decoded
(one outstanding group, its A registers kept alive until it retires), and one K step's four x
quarters arrive in one cp.async copy. Measured on an H100 by tune_nvfp4.py (whole MoE calls, the
table's Triton winners timed in the same runs): 1.04x to 1.21x for Qwen3-30B-A3B and MiniMax-M2 at
2,048 to 16,384 tokens, but a tie with the dequant path for Qwen3 at 16,384.

An expert's last token block holds its pair count mod block_m (the rest is padding): a block whose
pairs fit half or a quarter of it runs a tile that wide (`_tile`'s BMT), so it does 2x or 4x less MMA
work on padding. With uniform routing that is a third of MiniMax-M2's 128-pair blocks at 4,096
tokens (128 +- 11 pairs an expert). Measured on an H100 against the kernel without it, whole MoE
calls at the table's configs alternated in one run: 1.02x-1.05x at 4,096 tokens, 1.00x-1.05x at
16,384 (benchmarks/results/moe_wgmma_narrow_bench_ab_h100.json).

The epilogue re-lays each tile through shared memory so a thread stores 16-byte runs of an out row
(see _tile). On an H100 against the 2-byte stores of the MMA layout, whole MoE calls alternated:
1.06x (Qwen3-30B-A3B) and 1.01x-1.03x (MiniMax-M2) at 4,096 tokens, 1.05x-1.10x at 16,384, and
1.03x output tok/s end to end on 4,096-token prompts (benchmarks/results/moe_wgmma_store_ab_h100.json).

Same weight layouts (rows or expert tiles), decode asm and rounding as the Triton kernel
(tenk.kernels.nvfp4_gemm), so the results are bit for bit the Triton kernel's;
nvfp4_moe.nvfp4_fused_moe_ref is the reference of both.
GPU only (Gluon has no interpreter): on CPU, or where Gluon is missing, the MoE falls back to the
Triton kernel.
"""

from __future__ import annotations

import torch

try:  # Gluon ships with Triton >= 3.5
    import triton
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
    from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma, warpgroup_mma_wait
except Exception:  # pragma: no cover - exercised only with an older Triton
    gluon = None

from tenk.kernels._tiles import grouped_tile
from tenk.kernels.moe import moe_out_values
from tenk.kernels.nvfp4_gemm import _ASM_Q0, _ASM_Q1, _ASM_Q2, _ASM_Q3, tile_cols, tile_offsets, tile_step

AVAILABLE = gluon is not None


def usable(x: torch.Tensor) -> bool:
    """The Gluon kernel runs bf16 activations on a Hopper-or-newer GPU with Gluon installed, with
    rows 16-byte aligned (its cp.async copies move 16 bytes; weights always are: K % 64 == 0)."""
    return (AVAILABLE and x.is_cuda and x.dtype == torch.bfloat16 and x.stride(0) % 8 == 0
            and torch.cuda.get_device_capability(x.device)[0] >= 9)


if AVAILABLE:
    # nvfp4_gemm's scale recipe, converting once per pair of elements: a thread's two adjacent K
    # elements share their 16-group's scale word, so the asm reads the first and writes each quarter's
    # scale into both halves of a bf16x2 (prmt)
    _ASM_SCALES2 = gl.constexpr(
        "{ .reg .b16 lo, hi; .reg .b32 a, b; mov.b32 {lo, hi}, $4; "
        "cvt.rn.f16x2.e4m3x2 a, lo; cvt.rn.f16x2.e4m3x2 b, hi; "
        "shr.b32 a, a, 3; and.b32 a, a, 0x0FFF0FFF; add.u32 a, a, 0x73007300; "
        "shr.b32 b, b, 3; and.b32 b, b, 0x0FFF0FFF; add.u32 b, b, 0x73007300; "
        "prmt.b32 $0, a, a, 0x1010; prmt.b32 $1, a, a, 0x3232; prmt.b32 $2, b, b, 0x1010; "
        "prmt.b32 $3, b, b, 0x3232; }"
    )
    _QUARTER_ASM = gl.constexpr(tuple(a.value for a in (_ASM_Q0, _ASM_Q1, _ASM_Q2, _ASM_Q3)))  # nvfp4_gemm's decode

    @triton.constexpr_function
    def _smem_layout(cols, bits):
        return gl.NVMMASharedLayout(swizzle_byte_width=min(128, cols * bits // 8), element_bitwidth=bits, rank=2)

    @triton.constexpr_function
    def _copy_layout(bkq, num_warps):
        """16-byte vectors along a tile's contiguous K columns."""
        return gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[32 // (bkq // 8), bkq // 8],
                                warps_per_cta=[num_warps, 1], order=[1, 0])

    @gluon.jit
    def _decode(h, J: gl.constexpr):
        return gl.inline_asm_elementwise(_QUARTER_ASM[J], "=r,r", [h], dtype=gl.bfloat16, is_pure=True, pack=2)

    @gluon.jit
    def _scales(sv):
        return gl.inline_asm_elementwise(_ASM_SCALES2, "=r,=r,=r,=r,r,r", [sv], dtype=(gl.bfloat16,) * 4,
                                         is_pure=True, pack=2)

    @gluon.jit
    def _issue(step, buf, h_smem, hu_smem, x_smem, w_base, up_off, x_base, x_ok, cols, wcols, Q,
               GATED: gl.constexpr, BKQ: gl.constexpr, TN: gl.constexpr, TQ: gl.constexpr, XR: gl.constexpr):
        """cp.async of K step `step` into ring slot buf: the weight tile (and the up half's), and x's
        four quarters stacked as one [XR = 4 * tile width, BKQ] tile at the slot's start. Steps past K
        copy nothing."""
        kk = step * BKQ
        kmask = gl.expand_dims(kk + cols < Q, 0)
        w = w_base + tile_step(kk, BKQ, TN, TQ) + wcols
        cp.async_copy_global_to_shared(h_smem.index(buf), w, mask=kmask)
        if GATED:
            cp.async_copy_global_to_shared(hu_smem.index(buf), w + up_off, mask=kmask)
        cp.async_copy_global_to_shared(x_smem.index(buf).slice(0, XR, dim=0), x_base + gl.expand_dims(kk + cols, 0),
                                       mask=x_ok & kmask)

    @gluon.jit
    def _tile(pid_m, pid_n, e, a_ptr, wq_ptr, sq_ptr, gs_ptr, out_ptr, sorted_ptr, h_smem, hu_smem, x_smem,
              num_pairs, N, Q, s_ar, s_we, s_wn, s_sn, s_se, s_ge, s_or,
              TOPK: gl.constexpr, GATED: gl.constexpr, A_BY_TOKEN: gl.constexpr, BM: gl.constexpr, BMT: gl.constexpr,
              BN: gl.constexpr, BKQ: gl.constexpr, STAGES: gl.constexpr, TN: gl.constexpr, TQ: gl.constexpr,
              NUM_WARPS: gl.constexpr):
        """The out^T tile [BN, BMT] of the first BMT pairs of block pid_m (BM pairs apart): BMT < BM
        serves blocks whose valid pairs (always at the front) fit it, with 2x or 4x less MMA work."""
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                      instr_shape=[16, BMT, 16])
        a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        ld: gl.constexpr = _copy_layout(BKQ, NUM_WARPS)

        # x: row q * BMT + m of the stacked tile is the block's pair m, columns of quarter q
        r4 = gl.arange(0, 4 * BMT, layout=gl.SliceLayout(1, ld))
        pairs = gl.load(sorted_ptr + pid_m * BM + r4 % BMT)
        row_ok = pairs < num_pairs
        safe = gl.where(row_ok, pairs, 0)
        if A_BY_TOKEN:
            a_row = safe // TOPK
        else:
            a_row = safe
        x_base = a_ptr + gl.expand_dims(a_row.to(gl.int64) * s_ar + (r4 // BMT) * Q, 1)
        x_ok = gl.expand_dims(row_ok, 1)
        cols = gl.arange(0, BKQ, layout=gl.SliceLayout(0, ld))
        rows = pid_n * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, ld))
        # masked rows re-read valid ones; the store drops them
        w_off, unused = tile_offsets(rows, N, s_wn, s_sn, TN, TQ)
        w_base = wq_ptr + e * s_we + gl.expand_dims(w_off, 1)
        wcols = gl.expand_dims(tile_cols(cols, BKQ, TN, TQ), 0)
        up_off = N * s_wn

        # scale words are read straight into the MMA operand layout (element k: its 16-group's word)
        rows_a = pid_n * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, a_l))
        cols_a = gl.arange(0, BKQ, layout=gl.SliceLayout(0, a_l))
        unused, s_off = tile_offsets(rows_a, N, s_wn, s_sn, TN, TQ)
        s_base = sq_ptr + e * s_se + gl.expand_dims(s_off, 1) + gl.expand_dims((cols_a // 16) * TN, 0)
        su_off = N * s_sn

        steps = gl.cdiv(Q, BKQ)
        for s in gl.static_range(STAGES - 1):
            _issue(s, s, h_smem, hu_smem, x_smem, w_base, up_off, x_base, x_ok, cols, wcols, Q, GATED, BKQ, TN, TQ,
                   4 * BMT)
            cp.commit_group()

        acc = gl.zeros([BN, BMT], gl.float32, layout=mma)
        acc_u = gl.zeros([BN, BMT], gl.float32, layout=mma)
        for j in range(steps):
            # this step's scale words first: their latency runs under the wait, barrier and next copies
            sv = gl.load(s_base + j * (BKQ // 16 * TN))
            svu = sv
            if GATED:
                svu = gl.load(s_base + su_off + j * (BKQ // 16 * TN))
            buf = j % STAGES
            cp.wait_group(STAGES - 2)
            gl.thread_barrier()  # every thread's copies of step j landed; slot j - 1's readers are done
            nxt = j + STAGES - 1
            _issue(nxt, nxt % STAGES, h_smem, hu_smem, x_smem, w_base, up_off, x_base, x_ok, cols, wcols, Q, GATED,
                   BKQ, TN, TQ, 4 * BMT)
            cp.commit_group()

            sc = _scales(sv)
            h = h_smem.index(buf).load(a_l)
            if GATED:
                su = _scales(svu)
                hu = hu_smem.index(buf).load(a_l)
            # one MMA in flight while the next quarter decodes (gate and up alternate when GATED);
            # each A operand is kept alive through the wait that retires its MMA
            xb = x_smem.index(buf).slice(0, BMT, dim=0).permute((1, 0))
            prev = _decode(h, 0) * sc[0]
            acc = warpgroup_mma(prev, xb, acc, is_async=True)
            if GATED:
                cur = _decode(hu, 0) * su[0]
                acc_u = warpgroup_mma(cur, xb, acc_u, is_async=True)
                acc_u, prev = warpgroup_mma_wait(1, deps=(acc_u, prev))
                prev = cur
            for q in gl.static_range(1, 4):
                xb = x_smem.index(buf).slice(q * BMT, BMT, dim=0).permute((1, 0))
                cur = _decode(h, q) * sc[q]
                acc = warpgroup_mma(cur, xb, acc, is_async=True)
                acc, prev = warpgroup_mma_wait(1, deps=(acc, prev))
                prev = cur
                if GATED:
                    cur = _decode(hu, q) * su[q]
                    acc_u = warpgroup_mma(cur, xb, acc_u, is_async=True)
                    acc_u, prev = warpgroup_mma_wait(1, deps=(acc_u, prev))
                    prev = cur
            # the next step re-fills this slot: no MMA may still read it then
            if GATED:
                acc, acc_u, prev = warpgroup_mma_wait(0, deps=(acc, acc_u, prev))
            else:
                acc, prev = warpgroup_mma_wait(0, deps=(acc, prev))
        cp.wait_group(0)

        g = acc * (gl.load(gs_ptr + e * s_ge) * 256.0)  # 256 undoes the kernel layout's 2^-8
        u = acc_u
        if GATED:
            u = acc_u * (gl.load(gs_ptr + e * s_ge + 1) * 256.0)
        val = moe_out_values(g, u, out_ptr.dtype.element_ty, GATED)
        # an out row is one of the tile's pairs, contiguous along the tile's weight rows, which the MMA
        # layout spreads over 8 threads: stored from it, every thread wrote 2-byte values (an
        # STG.U16 with its own 64-bit address a value; Qwen3-30B-A3B's w2 kernel shrank from 4,096 to
        # 3,552 sm_90 instructions without them). Re-laid through shared memory (stmatrix.trans; the
        # scratch mostly reuses the drained ring), each thread stores 16-byte runs of a row.
        TW: gl.constexpr = min(32, BN // 8)
        st: gl.constexpr = gl.BlockedLayout(size_per_thread=[8, 1], threads_per_warp=[TW, 32 // TW],
                                            warps_per_cta=[1, NUM_WARPS], order=[0, 1])
        v = gl.convert_layout(val, st)
        offs_n = pid_n * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, st))
        pairs_o = gl.load(sorted_ptr + pid_m * BM + gl.arange(0, BMT, layout=gl.SliceLayout(0, st)))
        ok_o = pairs_o < num_pairs
        safe_o = gl.where(ok_o, pairs_o, 0).to(gl.int64)
        gl.store(out_ptr + gl.expand_dims(safe_o * s_or, 0) + gl.expand_dims(offs_n, 1), v,
                 mask=gl.expand_dims(offs_n < N, 1) & gl.expand_dims(ok_o, 0))

    @gluon.jit(do_not_specialize=["num_pairs", "max_padded"])  # token counts: no variant per batch size
    def _nvfp4_moe_wgmma_kernel(
        a_ptr, wq_ptr, sq_ptr, gs_ptr, out_ptr, sorted_ptr, expert_ptr,
        num_pairs, max_padded, N, Q, s_ar, s_we, s_wn, s_se, s_sn, s_ge, s_or,
        TOPK: gl.constexpr, GATED: gl.constexpr, A_BY_TOKEN: gl.constexpr,
        BM: gl.constexpr, BN: gl.constexpr, BKQ: gl.constexpr, GROUP_M: gl.constexpr, STAGES: gl.constexpr,
        TN: gl.constexpr, TQ: gl.constexpr, NARROW: gl.constexpr, num_warps: gl.constexpr,
    ):
        """out^T tile [BN weight rows, BM pairs] of one expert block, as _nvfp4_moe_gemm_kernel
        (SPLIT_K 1, aligned blocks, either weight layout): GATED writes silu(gate) * up rounded like
        the unfused path.
        NARROW: an expert's last block holds its count mod BM pairs (the rest is padding; at 4,096
        tokens of MiniMax-M2, 128 +- 11 pairs an expert, a third of the 128-row tiles); a block with at
        most BM/2 (BM/4) of them runs the BM/2 (BM/4) wide tile instead, the rows it drops all padding."""
        pid_m, pid_n = grouped_tile(gl.program_id(0), gl.cdiv(max_padded, BM), gl.cdiv(N, BN), GROUP_M)
        e = gl.load(expert_ptr + pid_m).to(gl.int64)
        if e < 0:  # past the used blocks (moe_align_block_size's contract)
            return

        h_sl: gl.constexpr = _smem_layout(BKQ, 16)
        h_smem = gl.allocate_shared_memory(gl.int16, [STAGES, BN, BKQ], h_sl)
        if GATED:
            hu_smem = gl.allocate_shared_memory(gl.int16, [STAGES, BN, BKQ], h_sl)
        else:
            hu_smem = h_smem
        x_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, 4 * BM, BKQ], _smem_layout(BKQ, 16))

        valid = BM
        if NARROW > 0:
            cnt: gl.constexpr = gl.BlockedLayout(size_per_thread=[1], threads_per_warp=[32], warps_per_cta=[num_warps],
                                                 order=[0])
            ids = gl.load(sorted_ptr + pid_m * BM + gl.arange(0, BM, layout=cnt))
            valid = gl.sum((ids < num_pairs).to(gl.int32), axis=0)
        if valid > BM // 2 or NARROW == 0:
            _tile(pid_m, pid_n, e, a_ptr, wq_ptr, sq_ptr, gs_ptr, out_ptr, sorted_ptr, h_smem, hu_smem, x_smem,
                  num_pairs, N, Q, s_ar, s_we, s_wn, s_sn, s_se, s_ge, s_or,
                  TOPK, GATED, A_BY_TOKEN, BM, BM, BN, BKQ, STAGES, TN, TQ, num_warps)
        elif valid > BM // 4 or NARROW == 1:
            _tile(pid_m, pid_n, e, a_ptr, wq_ptr, sq_ptr, gs_ptr, out_ptr, sorted_ptr, h_smem, hu_smem, x_smem,
                  num_pairs, N, Q, s_ar, s_we, s_wn, s_sn, s_se, s_ge, s_or,
                  TOPK, GATED, A_BY_TOKEN, BM, BM // 2, BN, BKQ, STAGES, TN, TQ, num_warps)
        else:
            _tile(pid_m, pid_n, e, a_ptr, wq_ptr, sq_ptr, gs_ptr, out_ptr, sorted_ptr, h_smem, hu_smem, x_smem,
                  num_pairs, N, Q, s_ar, s_we, s_wn, s_sn, s_se, s_ge, s_or,
                  TOPK, GATED, A_BY_TOKEN, BM, BM // 4, BN, BKQ, STAGES, TN, TQ, num_warps)


NARROW_STEPS = 2  # tile widths BM, BM/2, BM/4 (see _nvfp4_moe_wgmma_kernel)
MIN_TILE = 16  # wgmma's token dimension: the narrowest tile worth a variant


def narrow_steps(block_m: int) -> int:
    """How many times a block_m-pair block may halve its tile (at most NARROW_STEPS, to MIN_TILE)."""
    steps = 0
    while steps < NARROW_STEPS and block_m >> (steps + 1) >= MIN_TILE:
        steps += 1
    return steps


def moe_gemm_wgmma(a, wq, sq, gs, out, sorted_ids, expert_ids, num_pairs: int, n: int, topk: int, gated: bool,
                   a_by_token: bool, cfg, block_kq: int, layout) -> None:
    """One grouped GEMM of the fused MoE (nvfp4_moe._gemm's contract, no split-K, aligned blocks);
    layout: nvfp4_gemm.expert_layout of the weights."""
    tn, tq, _, q, s_we, s_wn, s_se, s_sn = layout
    max_padded = sorted_ids.numel()
    grid = (triton.cdiv(max_padded, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    _nvfp4_moe_wgmma_kernel[grid](
        a, wq, sq, gs, out, sorted_ids, expert_ids,
        num_pairs, max_padded, n, q, a.stride(0), s_we, s_wn, s_se, s_sn,
        gs.stride(0), out.stride(-2),
        TOPK=topk, GATED=gated, A_BY_TOKEN=a_by_token, BM=cfg.block_m, BN=cfg.block_n, BKQ=block_kq,
        GROUP_M=cfg.group_m, STAGES=max(2, cfg.num_stages), TN=tn, TQ=tq, NARROW=narrow_steps(cfg.block_m),
        num_warps=cfg.num_warps, **cfg.launch_options(),
    )
