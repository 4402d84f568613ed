"""Tune the NVFP4 kernels' launch configs per (M bucket, N, K) on this GPU and write the table that
tenk.kernels.configs.nvfp4 reads (src/tenk/kernels/configs/nvfp4_<gpu>.json).

    python benchmarks/tune_nvfp4.py [--models qwen3,minimax] [--tp 1,2] [--tokens 1,16,...] [--dense]
                                    [--no-moe] [--budget-s 540] [--out PATH]
    python benchmarks/tune_nvfp4.py --guess --gpu h100   # no GPU: write the heuristic guesses ("tuned": false)
    python benchmarks/tune_nvfp4.py --refine --seed-from h100 [--no-search]   # an H200: start from the H100's winners

Knobs (coordinate descent, benchmarks/tuning.py): each block_m near the pairs per expert seeds its
own descent over, per GEMM, block_n with its warps, block_kq, num_stages, split_k, group_m, the
L2 prefetch before the PDL wait (0, 4,096 or 8,192 bytes a tile) and the half-wide tiles of partly
padded token blocks (narrow) and a register cap (maxnreg); for tiny batches "direct" (no
alignment launch); then the impl, fused or dequant; from 1,024 tokens on a GPU also the Gluon
"wgmma" MoE from a few measured tiles, then its tiles again (and a register cap).
--refine starts from the table's entries and searches only their kernels' knobs.
"""

from __future__ import annotations

import dataclasses
import sys

import torch
import tuning

from tenk.kernels.configs import nvfp4 as cfgs

GEMM_KNOBS = {
    # (block_n, num_warps); 16- and 32-row tiles are below a wgmma's 64 and compile to mma.sync (16 rows
    # on one warp: the most programs for the smallest batches; Qwen3-30B-A3B's 2-token w1|w3 on an H100)
    "tile": [(16, 1), (32, 2), (64, 2), (64, 4), (128, 4), (128, 8)],
    "block_kq": [16, 32, 64],
    "num_stages": [2, 3, 4, 5, 6],  # 6: Qwen3-30B-A3B's 1-token w1|w3 on 16-row, 1-warp tiles
    "split_k": [1, 2, 4, 8],
    "group_m": [1, 8, 32],  # token blocks that share a weight tile while it is in L2
    # whole tile shapes in one move: taller tiles re-read x less per weight byte (4 * block_m / rows),
    # but one knob at a time passes through slower neighbours first. For Qwen3-30B-A3B at 256
    # tokens on an H100 the first two (w1|w3, w2) beat the descent's winner by 1.06x.
    "whole_tile": [dict(block_n=64, num_warps=4, block_kq=64, num_stages=2),
                   dict(block_n=128, num_warps=4, block_kq=32, num_stages=3),
                   dict(block_n=128, num_warps=8, block_kq=32, num_stages=3)],
}
# the MoE's Triton GEMMs also prefetch their first K steps into L2 under PDL (Nvfp4Config.prefetch)
# and may run half-wide tiles for blocks whose pairs fit half of them (Nvfp4Config.narrow)
# and, with ptxas no longer serializing their wgmmas, a register cap can buy a fourth CTA an SM
# (Qwen3-30B-A3B's 256-token w1|w3: 156 registers uncapped)
MOE_KNOBS = {"prefetch": [0, 4096, 8192], "narrow": [False, True], "maxnreg": [0, 128, 168]}
IMPL = ("impl", lambda c: [dataclasses.replace(c, impl=v) for v in cfgs.IMPLS])
WGMMA_MIN_TOKENS = 1024  # below, the Triton kernels' smaller tiles won every bucket on an H100
# (w1|w3, w2) tiles (block_n, block_kq, num_stages, num_warps) the wgmma MoE starts from: the best
# seen on an H100 at 4,096 to 16,384 tokens for Qwen3-30B-A3B and MiniMax-M2
# (a fifth field: a register cap, Nvfp4Config.maxnreg)
WGMMA_TILES = [((64, 32, 2, 4), (64, 32, 2, 4)), ((64, 32, 2, 4), (128, 64, 2, 8)), ((128, 32, 3, 8), (128, 64, 2, 8)),
               ((64, 32, 2, 4), (128, 32, 2, 8, 128))]
# its knobs after the switch (no split-K; wgmma tiles are whole warp groups). The register cap pays
# only with a tile whose shared memory lets two CTAs share an SM, so that pair is also one move.
TWO_CTA_W2 = dict(block_n=128, num_warps=8, block_kq=32, num_stages=2, maxnreg=128)
WGMMA_KNOBS = {"tile": [(64, 4), (128, 4), (128, 8)], "block_kq": [16, 32, 64], "num_stages": [2, 3, 4],
               "maxnreg": [0, 128], "whole_tile": [TWO_CTA_W2]}
WGMMA_BLOCK_M = 128  # its token block where the fused winner's is smaller (64 lost at 4,096 tokens)


def wgmma_variants(c) -> list:
    """The wgmma MoE from each of WGMMA_TILES, at the current token block and at WGMMA_BLOCK_M."""
    out = []
    for bm in sorted({c.block_m, max(c.block_m, WGMMA_BLOCK_M)}):
        for tiles in WGMMA_TILES:
            gemms = [dataclasses.replace(g, block_m=bm, block_n=t[0], block_kq=t[1], num_stages=t[2], num_warps=t[3],
                                         split_k=1, maxnreg=t[4] if len(t) > 4 else 0, prefetch=0, narrow=False)
                     for g, t in zip((c.w13, c.w2), tiles)]
            out.append(dataclasses.replace(c, block_m=bm, impl="wgmma", direct=False, w13=gemms[0], w2=gemms[1]))
    return out


def moe_variants(t: int, e: int, k: int) -> list:
    knobs = {**GEMM_KNOBS, **MOE_KNOBS}
    variants = tuning.block_m_variants(tuning.block_m_values(t, e, k)) + tuning.gemm_variants("w13", knobs)
    variants += tuning.gemm_variants("w2", knobs) + tuning.direct_variants(t, k) + [IMPL]
    if t >= WGMMA_MIN_TOKENS and torch.cuda.is_available():
        # then the Gluon kernels' own descent, if the switch won
        only_wgmma = lambda make: lambda c: make(c) if c.impl == "wgmma" else []
        variants += [("impl.wgmma", wgmma_variants)]
        variants += [(name, only_wgmma(make)) for name, make in
                     tuning.gemm_variants("w13", WGMMA_KNOBS) + tuning.gemm_variants("w2", WGMMA_KNOBS)]
    return variants


def refine_variants(c) -> list:
    """--refine: the knobs of the entry's own kernels (the wgmma MoE's, else the Triton one's)."""
    knobs = WGMMA_KNOBS if c.impl == "wgmma" else {**GEMM_KNOBS, **MOE_KNOBS}
    return tuning.gemm_variants("w13", knobs) + tuning.gemm_variants("w2", knobs)


def make_experts(shape):
    """NVFP4 experts of a MoE shape in the kernel layout, made on tuning.DEVICE."""
    import moe_kernels as mk

    return mk.make_experts(shape, tuning.DEVICE, dense=False)[0]


def run_moe(x, experts, topk_weights, topk_ids, out, config):
    from tenk.kernels.nvfp4_moe import nvfp4_fused_moe

    return nvfp4_fused_moe(x, *experts, topk_weights, topk_ids, out=out, config=config)


def tune(args, table: tuning.TableFile, deadline: float) -> None:
    from tenk.kernels import nvfp4_gemm as ng

    def dense_weight(n, k, g):
        packed = torch.randint(0, 256, (n, k // 2), generator=g, device=tuning.DEVICE, dtype=torch.uint8)
        scale = (torch.rand(n, k // 16, generator=g, device=tuning.DEVICE) + 0.5).to(torch.float8_e4m3fn)
        return (*ng.pack_for_kernel(packed, scale), torch.full((1,), 0.01, device=tuning.DEVICE))

    tuning.tune_moe(args, table, deadline, make_experts, run_moe, cfgs.heuristic_moe, moe_variants, refine_variants)
    tuning.tune_dense(args, table, deadline, dense_weight,
                      lambda x, w, out, c: ng.nvfp4_gemm(x, *w, None, config=c, out=out),
                      cfgs.heuristic_dense, GEMM_KNOBS, cfgs.IMPLS)  # fmt: skip


if __name__ == "__main__":
    sys.exit(tuning.main(__doc__, "nvfp4", cfgs.heuristic_moe, cfgs.heuristic_dense, tune))
