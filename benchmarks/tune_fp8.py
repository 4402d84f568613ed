"""Tune the FP8 (W8A16) kernels' launch configs per (M bucket, N, K) on this GPU and write the table
that tenk.kernels.configs.fp8 reads (src/tenk/kernels/configs/fp8_<gpu>.json).

    python benchmarks/tune_fp8.py [--models qwen3,minimax] [--tp 1,2] [--tokens 1,16,...] [--dense]
                                  [--no-moe] [--budget-s 540] [--out PATH]
    python benchmarks/tune_fp8.py --guess --gpu h100   # no GPU: write the heuristic guesses ("tuned": false)

Weights: random E4M3 codes with block-128 scales (the official FP8 checkpoints' layout), made on
the GPU. Knobs (coordinate descent, benchmarks/tuning.py): block_m; then per GEMM block_n with its
warps, block_k, num_stages, split_k; for tiny batches "direct" (no alignment launch); for the
dense GEMM also the impl, fused or dequant (dequantize once + cuBLAS).
"""

from __future__ import annotations

import dataclasses
import sys
import time

import torch
import tuning

from tenk.kernels.configs import fp8 as cfgs
from tenk.kernels.configs import nvfp4 as tables

BLOCK = (128, 128)
GEMM_KNOBS = {
    "tile": [(64, 4), (128, 4), (128, 8)],  # (block_n, num_warps)
    "block_k": [64, 128],  # a block-128 scale covers whole tiles up to 128
    "num_stages": [3, 4, 5],
    "split_k": [1, 2, 4, 8],
}


def tune(args, table: tuning.TableFile, deadline: float) -> None:
    import moe_kernels as mk
    from fp8_kernels import random_fp8

    from tenk.kernels.fp8_gemm import fp8_gemm
    from tenk.kernels.fp8_moe import fp8_fused_moe

    for model, tp, (e, h, i) in [] if args.no_moe else tuning.moe_shapes(args.models, args.tps):
        shape = mk.Shape(f"{model}/tp{tp}", e, h, i, tuning.TOP_K)
        g = torch.Generator(device="cuda").manual_seed(e + h + i)
        experts = (*random_fp8(e, 2 * i, h, "block", BLOCK, g, "cuda"), *random_fp8(e, h, i, "block", BLOCK, g, "cuda"))
        key = tables.moe_key(e, h, i, tuning.TOP_K)
        for t in args.tokens_list:
            if time.time() > deadline:
                break
            x, tw, ids = mk.make_routing(shape, t, "cuda", seed=t)
            out = torch.empty_like(x)
            run = lambda c: fp8_fused_moe(x, *experts, tw, ids, "block", BLOCK, out=out, config=c)
            measure = lambda c: tuning.try_time(lambda: run(c), t <= tuning.GRAPH_MAX_TOKENS)
            variants = tuning.block_m_variants()  # the FP8 step holds more registers: tiles up to 128
            variants += tuning.gemm_variants("w13", GEMM_KNOBS) + tuning.gemm_variants("w2", GEMM_KNOBS)
            if t * tuning.TOP_K <= 64:  # tiny batches: with or without the alignment launch
                variants.append(("direct", lambda c: [dataclasses.replace(c, direct=v) for v in (False, True)]))
            print(f"[moe {key} T={t}]")
            trials = []
            best, ms, start_ms = tuning.descend(cfgs.heuristic_moe(t, e, h, i, tuning.TOP_K), variants, measure,
                                                deadline, trials)  # fmt: skip
            table.put("moe", key, t, best, ms, start_ms, trials)
            print(f"  best {ms:.4f} ms (heuristic {start_ms:.4f}): {best.to_dict()}")
        experts = None  # freed before the next shape is made
        torch.cuda.empty_cache()

    if not args.dense:
        return
    for model, tp, (n, k) in tuning.dense_shapes(args.models, args.tps):
        g = torch.Generator(device="cuda").manual_seed(n + k)
        q, s = random_fp8(1, n, k, "block", BLOCK, g, "cuda")
        q, s = q[0], s[0]
        key = tables.dense_key(n, k)
        for t in args.tokens_list:
            if time.time() > deadline:
                break
            x = torch.randn(t, k, generator=g, device="cuda").bfloat16()
            out = torch.empty(t, n, device="cuda", dtype=torch.bfloat16)
            run = lambda c: fp8_gemm(x, q, s, "block", None, None, BLOCK, config=c, out=out)
            measure = lambda c: tuning.try_time(lambda: run(c), t <= tuning.GRAPH_MAX_TOKENS)
            variants = [("block_m", lambda c: [dataclasses.replace(c, block_m=bm) for bm in (16, 32, 64, 128)])]
            variants += tuning.gemm_variants("", GEMM_KNOBS)
            variants.append(("impl", lambda c: [dataclasses.replace(c, impl=v) for v in tables.IMPLS]))
            print(f"[dense {key} T={t}]")
            trials = []
            best, ms, start_ms = tuning.descend(cfgs.heuristic_dense(t, n, k), variants, measure, deadline, trials)
            table.put("dense", key, t, best, ms, start_ms, trials)
            print(f"  best {ms:.4f} ms (heuristic {start_ms:.4f}): {best.to_dict()}")


if __name__ == "__main__":
    sys.exit(tuning.main(__doc__, "fp8", cfgs.heuristic_moe, cfgs.heuristic_dense, tune))
