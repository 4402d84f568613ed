"""Tune the FP8 (W8A16) kernels' launch configs per (M bucket, N, K) on this GPU and write the table
that tenk.kernels.configs.fp8 reads (src/tenk/kernels/configs/fp8_<gpu>.json).

    python benchmarks/tune_fp8.py [--models qwen3,minimax] [--tp 1,2] [--tokens 1,16,...] [--dense]
                                  [--no-moe] [--budget-s 540] [--out PATH]
    python benchmarks/tune_fp8.py --guess --gpu h100   # no GPU: write the heuristic guesses ("tuned": false)
    python benchmarks/tune_fp8.py --refine --seed-from h100 [--no-search]   # an H200: start from the H100's winners

Weights: random E4M3 codes with block-128 scales (the official FP8 checkpoints' layout), made on
the GPU. Knobs (coordinate descent, benchmarks/tuning.py): each block_m near the pairs per expert
seeds its own descent over, per GEMM, block_n with its warps, block_k, num_stages, split_k; for
tiny batches "direct" (no alignment launch); for the dense GEMM also the impl, fused or dequant
(dequantize once + cuBLAS).
"""

from __future__ import annotations

import sys

import torch
import tuning

from tenk.kernels.configs import fp8 as cfgs
from tenk.kernels.configs import nvfp4 as tables

BLOCK = (128, 128)
GEMM_KNOBS = {
    # (block_n, num_warps); 32-row tiles on 2 warps compile to mma.sync (the NVFP4 MoE's decode winners)
    "tile": [(32, 2), (64, 4), (128, 4), (128, 8)],
    "block_k": [64, 128],  # a block-128 scale covers whole tiles up to 128
    "num_stages": [3, 4, 5],
    "split_k": [1, 2, 4, 8],
}


def moe_variants(t: int, e: int, k: int) -> list:
    # tiles up to 128 tokens: the FP8 step holds more registers than the NVFP4 one
    values = tuple(bm for bm in tuning.block_m_values(t, e, k) if bm <= 128)
    return (tuning.block_m_variants(values) + tuning.gemm_variants("w13", GEMM_KNOBS)
            + tuning.gemm_variants("w2", GEMM_KNOBS) + tuning.direct_variants(t, k))  # fmt: skip


def make_experts(shape):
    """Block-scaled FP8 experts of a MoE shape, made on tuning.DEVICE: (w13, s13, w2, s2)."""
    from fp8_kernels import random_fp8

    g = torch.Generator(device=tuning.DEVICE).manual_seed(shape.experts + shape.hidden + shape.inter)
    e, h, i = shape.experts, shape.hidden, shape.inter
    w13 = random_fp8(e, 2 * i, h, "block", BLOCK, g, tuning.DEVICE)
    return (*w13, *random_fp8(e, h, i, "block", BLOCK, g, tuning.DEVICE))


def run_moe(x, experts, topk_weights, topk_ids, out, config):
    from tenk.kernels.fp8_moe import fp8_fused_moe

    return fp8_fused_moe(x, *experts, topk_weights, topk_ids, "block", BLOCK, out=out, config=config)


def tune(args, table: tuning.TableFile, deadline: float) -> None:
    from fp8_kernels import random_fp8

    from tenk.kernels.fp8_gemm import fp8_gemm

    def dense_weight(n, k, g):
        q, s = random_fp8(1, n, k, "block", BLOCK, g, tuning.DEVICE)
        return q[0], s[0]

    tuning.tune_moe(args, table, deadline, make_experts, run_moe, cfgs.heuristic_moe, moe_variants)
    tuning.tune_dense(args, table, deadline, dense_weight,
                      lambda x, w, out, c: fp8_gemm(x, *w, "block", None, None, BLOCK, config=c, out=out),
                      cfgs.heuristic_dense, GEMM_KNOBS, tables.IMPLS)  # fmt: skip


if __name__ == "__main__":
    sys.exit(tuning.main(__doc__, "fp8", cfgs.heuristic_moe, cfgs.heuristic_dense, tune))
