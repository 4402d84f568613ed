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
import time

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


def tune(args, table: tuning.TableFile, deadline: float) -> None:
    import moe_kernels as mk

    from tenk.kernels import nvfp4_gemm as ng
    from tenk.kernels.nvfp4_moe import nvfp4_fused_moe

    for model, tp, (e, h, i) in [] if args.no_moe else tuning.moe_shapes(args.models, args.tps):
        shape = mk.Shape(f"{model}/tp{tp}", e, h, i, tuning.TOP_K)
        packed, _ = mk.make_experts(shape, "cuda", dense=False)
        key = cfgs.moe_key(e, h, i, tuning.TOP_K)
        for t in args.tokens_list:
            if time.time() > deadline:
                break
            x, tw, ids = mk.make_routing(shape, t, "cuda", seed=t)
            out = torch.empty_like(x)
            graph = t <= tuning.GRAPH_MAX_TOKENS
            measure = lambda c: tuning.try_time(lambda: nvfp4_fused_moe(x, *packed, tw, ids, out=out, config=c), graph)
            variants = tuning.block_m_variants(tuning.block_m_values(t, e))
            variants += tuning.gemm_variants("w13", GEMM_KNOBS) + tuning.gemm_variants("w2", GEMM_KNOBS)
            if t * tuning.TOP_K <= 64:  # tiny batches: with or without the alignment launch
                variants.append(("direct", lambda c: [dataclasses.replace(c, direct=v) for v in (False, True)]))
            if t * tuning.TOP_K >= 64 * e:
                variants.append(MOE_IMPL)
                variants += [(f"panel.{name}", lambda c, make=make: make(c) if c.impl == "panel" else [])
                             for name, make in tuning.block_m_variants(tuning.block_m_values(t, e))
                             + tuning.gemm_variants("w13", PANEL_KNOBS) + tuning.gemm_variants("w2", PANEL_KNOBS)]
            else:
                variants.append(IMPL)
            print(f"[moe {key} T={t}]")
            trials = []
            best, ms, start_ms = tuning.descend(cfgs.heuristic_moe(t, e, h, i, tuning.TOP_K), variants, measure,
                                                deadline, trials)  # fmt: skip
            table.put("moe", key, t, best, ms, start_ms, trials)
            print(f"  best {ms:.4f} ms (heuristic {start_ms:.4f}): {best.to_dict()}")
        del packed
        torch.cuda.empty_cache()

    if not args.dense:
        return
    for model, tp, (n, k) in tuning.dense_shapes(args.models, args.tps):
        g = torch.Generator(device="cuda").manual_seed(n + k)
        packed = torch.randint(0, 256, (n, k // 2), generator=g, device="cuda", dtype=torch.uint8)
        scale = (torch.rand(n, k // 16, generator=g, device="cuda") + 0.5).to(torch.float8_e4m3fn)
        wq, sq = ng.pack_for_kernel(packed, scale)
        gs = torch.full((1,), 0.01, device="cuda")
        key = cfgs.dense_key(n, k)
        for t in args.tokens_list:
            if time.time() > deadline:
                break
            x = torch.randn(t, k, generator=g, device="cuda").bfloat16()
            out = torch.empty(t, n, device="cuda", dtype=torch.bfloat16)
            measure = lambda c: tuning.try_time(lambda: ng.nvfp4_gemm(x, wq, sq, gs, None, config=c, out=out),
                                                t <= tuning.GRAPH_MAX_TOKENS)  # fmt: skip
            variants = [("block_m", lambda c: [dataclasses.replace(c, block_m=bm) for bm in (16, 32, 64, 128)])]
            variants += tuning.gemm_variants("", GEMM_KNOBS) + [IMPL]
            print(f"[dense {key} T={t}]")
            trials = []
            best, ms, start_ms = tuning.descend(cfgs.heuristic_dense(t, n, k), variants, measure, deadline, trials)
            table.put("dense", key, t, best, ms, start_ms, trials)
            print(f"  best {ms:.4f} ms (heuristic {start_ms:.4f}): {best.to_dict()}")


if __name__ == "__main__":
    sys.exit(tuning.main(__doc__, "nvfp4", cfgs.heuristic_moe, cfgs.heuristic_dense, tune))
