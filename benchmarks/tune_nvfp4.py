"""Tune the NVFP4 kernels' launch configs per (M bucket, N, K) on this GPU and write the table that
tenk.kernels.configs.nvfp4 reads (src/tenk/kernels/configs/nvfp4_<gpu>.json).

    python benchmarks/tune_nvfp4.py [--models qwen3,minimax] [--tp 1,2] [--tokens 1,16,...] [--dense]
                                    [--no-moe] [--budget-s 540] [--out PATH]
    python benchmarks/tune_nvfp4.py --guess --gpu h100   # no GPU: write the heuristic guesses ("tuned": false)

Knobs (coordinate descent, benchmarks/tuning.py): block_m; then per GEMM block_n with its warps,
block_kq, num_stages, split_k; for tiny batches "direct" (no alignment launch); then the impl,
fused or dequant, and for prefill-sized batches panel; a winning panel has its tiles and block_m
timed again as a panel.
"""

from __future__ import annotations

import dataclasses
import sys

import torch
import tuning

from tenk.kernels.configs import nvfp4 as cfgs

GEMM_KNOBS = {
    "tile": [(64, 4), (128, 4), (128, 8)],  # (block_n, num_warps)
    "block_kq": [16, 32, 64],
    "num_stages": [3, 4],
    "split_k": [1, 2, 4, 8],
}
PANEL_KNOBS = {k: v for k, v in GEMM_KNOBS.items() if k != "split_k"}  # the panel kernel does not split K
IMPL = ("impl", lambda c: [dataclasses.replace(c, impl=v) for v in cfgs.IMPLS])
# The MoE's impls; "panel" (dequantize each weight tile once, then plain GEMMs) only where experts
# get tens of pairs each (it runs on aligned token blocks: direct off).
MOE_IMPL = ("impl", lambda c: [dataclasses.replace(c, impl=v, direct=c.direct and v != "panel")
                               for v in cfgs.MOE_IMPLS])  # fmt: skip


def moe_variants(t: int, e: int, k: int) -> list:
    values = tuning.block_m_values(t, e, k)
    variants = tuning.block_m_variants(values) + tuning.gemm_variants("w13", GEMM_KNOBS)
    variants += tuning.gemm_variants("w2", GEMM_KNOBS) + tuning.direct_variants(t, k)
    if t * k < 64 * e:
        return variants + [IMPL]
    # prefill: the panel kernel too, and a winning panel gets its tiles timed again as a panel
    panel_knobs = tuning.block_m_variants(values) + tuning.gemm_variants("w13", PANEL_KNOBS)
    panel_knobs += tuning.gemm_variants("w2", PANEL_KNOBS)
    return variants + [MOE_IMPL] + [(f"panel.{name}", lambda c, make=make: make(c) if c.impl == "panel" else [])
                                    for name, make in panel_knobs]  # fmt: skip


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
