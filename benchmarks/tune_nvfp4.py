"""Tune the NVFP4 kernels' launch configs per (M bucket, N, K) on this GPU and write the table that
tenk.kernels.configs.nvfp4 reads (src/tenk/kernels/configs/nvfp4_<gpu>.json).

    python benchmarks/tune_nvfp4.py [--models qwen3,minimax] [--tp 1,2] [--tokens 1,16,...] [--dense]
                                    [--no-moe] [--budget-s 540] [--out PATH]
    python benchmarks/tune_nvfp4.py --guess --gpu h100   # no GPU: write the heuristic guesses ("tuned": false)

Knobs (coordinate descent, benchmarks/tuning.py): each block_m near the pairs per expert seeds its
own descent over, per GEMM, block_n with its warps, block_kq, num_stages, split_k, group_m; for
tiny batches "direct" (no alignment launch); then the impl, fused or dequant.
"""

from __future__ import annotations

import dataclasses
import sys

import torch
import tuning

from tenk.kernels.configs import nvfp4 as cfgs

GEMM_KNOBS = {
    # (block_n, num_warps); 32-row tiles are below a wgmma's 64 and compile to mma.sync
    "tile": [(32, 2), (64, 2), (64, 4), (128, 4), (128, 8)],
    "block_kq": [16, 32, 64],
    "num_stages": [2, 3, 4, 5],
    "split_k": [1, 2, 4, 8],
    "group_m": [1, 8, 32],  # token blocks that share a weight tile while it is in L2
}
IMPL = ("impl", lambda c: [dataclasses.replace(c, impl=v) for v in cfgs.IMPLS])


def moe_variants(t: int, e: int, k: int) -> list:
    variants = tuning.block_m_variants(tuning.block_m_values(t, e, k)) + tuning.gemm_variants("w13", GEMM_KNOBS)
    return variants + tuning.gemm_variants("w2", GEMM_KNOBS) + tuning.direct_variants(t, k) + [IMPL]


def tune(args, table: tuning.TableFile, deadline: float) -> None:
    import moe_kernels as mk

    from tenk.kernels import nvfp4_gemm as ng
    from tenk.kernels.nvfp4_moe import nvfp4_fused_moe

    def dense_weight(n, k, g):
        packed = torch.randint(0, 256, (n, k // 2), generator=g, device=tuning.DEVICE, dtype=torch.uint8)
        scale = (torch.rand(n, k // 16, generator=g, device=tuning.DEVICE) + 0.5).to(torch.float8_e4m3fn)
        return (*ng.pack_for_kernel(packed, scale), torch.full((1,), 0.01, device=tuning.DEVICE))

    tuning.tune_moe(args, table, deadline, lambda shape: mk.make_experts(shape, tuning.DEVICE, dense=False)[0],
                    lambda x, w, tw, ids, out, c: nvfp4_fused_moe(x, *w, tw, ids, out=out, config=c),
                    cfgs.heuristic_moe, moe_variants)  # fmt: skip
    tuning.tune_dense(args, table, deadline, dense_weight,
                      lambda x, w, out, c: ng.nvfp4_gemm(x, *w, None, config=c, out=out),
                      cfgs.heuristic_dense, GEMM_KNOBS, cfgs.IMPLS)  # fmt: skip


if __name__ == "__main__":
    sys.exit(tuning.main(__doc__, "nvfp4", cfgs.heuristic_moe, cfgs.heuristic_dense, tune))
