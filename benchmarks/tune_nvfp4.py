"""Tune the NVFP4 kernels' launch configs per (M bucket, N, K) on this GPU and write the table that
tenk.kernels.configs.nvfp4 reads (src/tenk/kernels/configs/nvfp4_<gpu>.json).

    python benchmarks/tune_nvfp4.py [--models qwen3,minimax] [--tp 1,2] [--tokens 1,16,...] [--dense]
                                    [--budget-s 540] [--out PATH]
    python benchmarks/tune_nvfp4.py --guess --gpu h100   # no GPU: write the heuristic guesses ("tuned": false)

Search: coordinate descent from the heuristic config. For each knob in turn (block_m; then per GEMM
block_n with its warps, block_kq, num_stages, split_k; for tiny batches "direct" (no alignment
launch); then the impl, fused or dequant) every value is
timed with the others held at the best so far, and the best is kept. Each candidate is the whole
call (MoE: align + both GEMMs + combine) timed by do_bench's median, as a CUDA-graph replay up to
256 tokens (as the engine runs decode) and eagerly above. Entries measured here replace the file's,
others stay, so a long sweep can be split over several runs (each run stops at --budget-s and
writes what it has). A candidate that fails to compile (too much shared memory) is skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tenk.kernels.configs import nvfp4 as cfgs  # noqa: E402

MOE_MODELS = {"qwen3": (128, 2048, 768), "minimax": (256, 3072, 1536)}  # experts, hidden, FFN width
TOP_K = 8
# Attention projections (N, K) at TP=1: q|k|v and o. The dense GEMM serves "all-linear" checkpoints.
DENSE = {"qwen3": [(5120, 2048), (2048, 4096)], "minimax": [(8192, 3072), (3072, 6144)]}
TOKENS = (1, 16, 64, 256, 1024, 4096, 16384)  # benchmarks/moe_kernels.py's sizes; --tokens for more buckets

GEMM_KNOBS = {
    "tile": [(64, 4), (128, 4), (128, 8)],  # (block_n, num_warps)
    "block_kq": [16, 32, 64],
    "num_stages": [3, 4],
    "split_k": [1, 2, 4, 8],
}


def moe_shapes(models, tps):
    for m in models:
        e, h, i = MOE_MODELS[m]
        for tp in tps:
            if (i // tp) % 64 == 0:
                yield m, tp, (e, h, i // tp)


def dense_shapes(models, tps):
    for m in models:
        for (n, k), kind in zip(DENSE[m], ("qkv", "o")):
            for tp in tps:
                shape = (n // tp, k) if kind == "qkv" else (n, k // tp)
                if shape[1] % 64 == 0:
                    yield m, tp, shape


# ---------------------------------------------------------------- guesses (no GPU)


def write_guesses(path: Path, gpu: str, models, tps) -> None:
    table = {"gpu": gpu, "tuned": False,
             "note": "heuristic guesses written without a GPU (tenk.kernels.configs.nvfp4.heuristic_*); "
                     "rerun benchmarks/tune_nvfp4.py on this GPU to replace them with measured configs",
             "moe": {}, "dense": {}}
    for _, _, (e, h, i) in moe_shapes(models, tps):
        table["moe"][cfgs.moe_key(e, h, i, TOP_K)] = {
            str(t): cfgs.heuristic_moe(t, e, h, i, TOP_K).to_dict() for t in cfgs.M_BUCKETS}
    for _, _, (n, k) in dense_shapes(models, tps):
        table["dense"][cfgs.dense_key(n, k)] = {str(t): cfgs.heuristic_dense(t, n, k).to_dict() for t in cfgs.M_BUCKETS}
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")


# ---------------------------------------------------------------- measuring


def bench(fn, graph: bool) -> float:
    import triton.testing

    from tenk.kernels.testing import capture_cuda_graph

    if not graph:
        return float(triton.testing.do_bench(fn, warmup=5, rep=25, return_mode="median"))
    g = capture_cuda_graph(fn)
    return float(triton.testing.do_bench(g.replay, warmup=5, rep=25, return_mode="median"))


def try_time(fn, graph: bool) -> float:
    try:
        fn()  # compile outside the graph capture
        torch.cuda.synchronize()
        return bench(fn, graph)
    except Exception as exc:  # out of shared memory, invalid tile: not a candidate
        print(f"    skip: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        torch.cuda.synchronize()
        return float("inf")


def descend(start, variants, measure, deadline: float):
    """Coordinate descent: variants is a list of (knob name, [configs derived from the current best])."""
    best, best_ms = start, measure(start)
    for name, make in variants:
        if time.time() > deadline:
            break
        for cand in make(best):
            if cand == best:
                continue
            ms = measure(cand)
            if ms < best_ms:
                print(f"    {name}: {ms:.4f} ms (was {best_ms:.4f})")
                best, best_ms = cand, ms
    return best, best_ms


def gemm_variants(field: str):
    """Knob variants of one GEMM's config inside an Nvfp4MoeConfig (field 'w13'/'w2') or a bare Nvfp4Config."""
    def get(c):
        return getattr(c, field) if field else c

    def put(c, g):
        return dataclasses.replace(c, **{field: g}) if field else g

    out = []
    for knob, values in GEMM_KNOBS.items():
        def make(c, knob=knob, values=values):
            g = get(c)
            if knob == "tile":
                return [put(c, dataclasses.replace(g, block_n=bn, num_warps=w)) for bn, w in values]
            return [put(c, dataclasses.replace(g, **{knob: v})) for v in values]
        out.append((f"{field or 'gemm'}.{knob}", make))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="qwen3,minimax")
    parser.add_argument("--tp", default="1")
    parser.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    parser.add_argument("--dense", action="store_true", help="also tune the dense GEMM (attention projections)")
    parser.add_argument("--budget-s", type=float, default=540.0)
    parser.add_argument("--guess", action="store_true", help="write the heuristic guesses (no GPU needed)")
    parser.add_argument("--gpu", default=None, help="table to write (h100/h200); default: this GPU")
    parser.add_argument("--out", default=None, help="default: src/tenk/kernels/configs/nvfp4_<gpu>.json")
    args = parser.parse_args()
    models = args.models.split(",")
    tps = [int(t) for t in args.tp.split(",")]
    if args.guess:
        gpu = args.gpu or "h100"
        write_guesses(Path(args.out) if args.out else cfgs.table_path(gpu), gpu, models, sorted(set(tps) | {1, 2}))
        return 0
    if not torch.cuda.is_available():
        print("tune_nvfp4.py needs a CUDA GPU (or --guess)", file=sys.stderr)
        return 2
    return tune(args, models, tps)


def tune(args, models, tps) -> int:
    import moe_kernels as mk
    from tenk.kernels import nvfp4_gemm as ng
    from tenk.kernels.nvfp4_moe import nvfp4_fused_moe

    gpu = args.gpu or cfgs.gpu_tag() or mk.gpu_tag()
    path = Path(args.out) if args.out else cfgs.table_path(gpu)
    seed = path if path.exists() else cfgs.table_path(gpu)  # a fresh --out starts from the shipped table
    table = json.loads(seed.read_text()) if seed.exists() else {"moe": {}, "dense": {}}
    table.update({"gpu": gpu, "tuned": True, "device": torch.cuda.get_device_name(),
                  "note": "entries with an \"ms\" field were measured by benchmarks/tune_nvfp4.py (the winner's "
                          "time); the others are the heuristic guesses"})
    deadline = time.time() + args.budget_s
    tokens_list = [int(t) for t in args.tokens.split(",")]

    def save():
        entries = [v for sec in ("moe", "dense") for shapes in table[sec].values() for v in shapes.values()]
        table["tuned"] = all("ms" in v for v in entries)  # entries without "ms" are still the guesses
        path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        cfgs.load_table.cache_clear()

    for model, tp, (e, h, i) in moe_shapes(models, tps):
        shape = mk.Shape(f"{model}/tp{tp}", e, h, i, TOP_K)
        packed, _ = mk.make_experts(shape, "cuda", dense=False)
        key = cfgs.moe_key(e, h, i, TOP_K)
        for t in tokens_list:
            if time.time() > deadline:
                break
            x, tw, ids = mk.make_routing(shape, t, "cuda", seed=t)
            out = torch.empty_like(x)
            graph = t <= mk.GRAPH_MAX_TOKENS
            measure = lambda c: try_time(lambda: nvfp4_fused_moe(x, *packed, tw, ids, out=out, config=c), graph)
            start = cfgs.heuristic_moe(t, e, h, i, TOP_K)
            bms = (16, 32, 64, 128)
            variants = [("block_m", lambda c: [dataclasses.replace(c, block_m=bm, w13=dataclasses.replace(c.w13, block_m=bm),
                                                                   w2=dataclasses.replace(c.w2, block_m=bm))
                                               for bm in bms])]
            variants += gemm_variants("w13") + gemm_variants("w2")
            if t * TOP_K <= 64:  # tiny batches: with or without the alignment launch
                variants.append(("direct", lambda c: [dataclasses.replace(c, direct=v) for v in (False, True)]))
            variants.append(("impl", lambda c: [dataclasses.replace(c, impl=v) for v in ("fused", "dequant")]))
            print(f"[moe {key} T={t}]")
            best, ms = descend(start, variants, measure, deadline)
            table["moe"].setdefault(key, {})[str(t)] = {**best.to_dict(), "ms": round(ms, 5)}
            print(f"  best {ms:.4f} ms: {best.to_dict()}")
            save()
        del packed
        torch.cuda.empty_cache()

    if args.dense:
        for model, tp, (n, k) in dense_shapes(models, tps):
            g = torch.Generator(device="cuda").manual_seed(n + k)
            packed = torch.randint(0, 256, (n, k // 2), generator=g, device="cuda", dtype=torch.uint8)
            scale = (torch.rand(n, k // 16, generator=g, device="cuda") + 0.5).to(torch.float8_e4m3fn)
            wq, sq = ng.pack_for_kernel(packed, scale)
            gs = torch.full((1,), 0.01, device="cuda")
            key = cfgs.dense_key(n, k)
            for t in tokens_list:
                if time.time() > deadline:
                    break
                x = torch.randn(t, k, generator=g, device="cuda").bfloat16()
                out = torch.empty(t, n, device="cuda", dtype=torch.bfloat16)
                measure = lambda c: try_time(lambda: ng.nvfp4_gemm(x, wq, sq, gs, None, config=c, out=out),
                                             t <= mk.GRAPH_MAX_TOKENS)
                variants = [("block_m", lambda c: [dataclasses.replace(c, block_m=bm) for bm in (16, 32, 64, 128)])]
                variants += gemm_variants("")
                variants.append(("impl", lambda c: [dataclasses.replace(c, impl=v) for v in ("fused", "dequant")]))
                print(f"[dense {key} T={t}]")
                best, ms = descend(cfgs.heuristic_dense(t, n, k), variants, measure, deadline)
                table["dense"].setdefault(key, {})[str(t)] = {**best.to_dict(), "ms": round(ms, 5)}
                print(f"  best {ms:.4f} ms: {best.to_dict()}")
                save()
    print(f"wrote {path}" + (" (stopped at the time budget)" if time.time() > deadline else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
