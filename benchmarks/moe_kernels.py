"""NVFP4 fused MoE against the bf16 torch._grouped_mm MoE, same routing, same run (issue 7).

    python benchmarks/moe_kernels.py [--models qwen3,minimax] [--tokens 1,16,...] [--breakdown] [--out DIR]
    python benchmarks/moe_kernels.py --smoke   # CPU, Triton interpreter, tiny shapes: proves the script runs

Expert shapes: Qwen3-30B-A3B (E 128, H 2048, I 768) and MiniMax-M2 (E 256, H 3072, I 1536), top-8,
tokens routed by a softmax over random logits. NVFP4 weights are random codes and E4M3 scales made
on the GPU in the kernel layout; the bf16 baseline runs on exactly those weights dequantized, so
the two paths compute the same function and are checked against each other and against
fused_moe_ref before anything is timed.

Timing: triton.testing.do_bench median (L2 flushed), eager and as a CUDA-graph replay; "ms" is the
graph replay up to 256 tokens (decode batches run as graphs in the engine) and eager above, for
both paths alike. An eager row is the median of EAGER_ROUNDS do_bench runs per path, the paths
alternated (one run of one path spread by about 2% between runs on an H100, as much as a row's
margin to its target); every round is kept in the row. Up to 256 tokens also "layer_ms": one
graph of CHAIN calls, each with its own batch and routing, divided by CHAIN: a MoE layer's cost
inside a decode step's graph, without the graph launch each isolated replay pays (no call finds the
previous one's experts in L2: each reads more than L2 holds or other experts). Reported per row:
bytes the call must read (weights of the experts the batch touches + the activations), TB/s and
TFLOP/s on them, speedup over bf16, and issue 7's targets on
an H100: <= 256 tokens >= 75% of 3.0 TB/s and >= 2.5x bf16; >= 4096 tokens >= 50% of 790 TFLOP/s.
--breakdown adds each NVFP4 kernel's device time per call (align, GEMMs, SiLU reduce, combine:
which one keeps a row from its target). At 1,024 tokens and above the other NVFP4 paths are timed
too; every row that aligns its pairs times the align kernel alone.
Writes moe_kernels_<gpu>.json to $OUT (or benchmarks/results/). Budget: < 3 minutes on an H100.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a bare checkout too

COPY_TBPS = 3.0  # H100 ceilings measured here (DESIGN.md)
BF16_TFLOPS = 790.0
TARGET_BW = 0.75
TARGET_FLOPS = 0.5
TARGET_SPEEDUP = 2.5
GRAPH_MAX_TOKENS = 256
CHAIN = 4  # MoE calls per graph for layer_ms
EAGER_ROUNDS = 3  # do_bench runs per path of an eager row, alternated


@dataclass(frozen=True)
class Shape:
    name: str
    experts: int
    hidden: int
    inter: int
    top_k: int = 8


SHAPES = {"qwen3": Shape("Qwen3-30B-A3B", 128, 2048, 768), "minimax": Shape("MiniMax-M2", 256, 3072, 1536)}
SMOKE_SHAPES = {"qwen3": Shape("tiny-qwen3", 8, 128, 64, 2), "minimax": Shape("tiny-minimax", 6, 192, 128, 2)}
TOKENS = (1, 16, 64, 256, 1024, 4096, 16384)


# ---------------------------------------------------------------- cases


def make_experts(shape: Shape, device, seed: int = 0, checks: list | None = None, dense: bool = True,
                 tiles: bool = True):
    """Random NVFP4 experts in the kernel layout (expert tiles, as the engine holds them on a GPU;
    tiles=False: the row layout) + the same experts dequantized to bf16 (or fp32 in smoke runs) by
    the dequant kernel, checked bit for bit against the torch dequantization on one expert (the
    torch one needs ~20 GB of temporaries for all of MiniMax's). Global scales keep activations
    O(1); w1 and w3 get different ones. dense=False: skip the bf16 copy."""
    from tenk.kernels import nvfp4_gemm as ng
    from tenk.kernels.nvfp4_moe import dequantize_experts, tile_moe_experts

    g = torch.Generator(device=device).manual_seed(seed)
    e, h, i = shape.experts, shape.hidden, shape.inter
    codes = lambda *s: torch.randint(0, 256, s, generator=g, device=device, dtype=torch.uint8)
    scales = lambda *s: (torch.rand(*s, generator=g, device=device) * 2 + 0.25).to(torch.float8_e4m3fn)
    w13, s13, w2, s2 = codes(e, 2 * i, h // 2), scales(e, 2 * i, h // 16), codes(e, h, i // 2), scales(e, h, i // 16)
    g13 = torch.stack([torch.full((e,), 0.5, device=device), torch.full((e,), 2.0, device=device)], 1) / (3.0 * h**0.5)
    g2 = torch.full((e,), 1.0, device=device) / (3.0 * i**0.5)
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    w13q, w13s, w2q, w2s = (*ng.pack_for_kernel(w13, s13), *ng.pack_for_kernel(w2, s2))
    if tiles:
        w13q, w13s, w2q, w2s = tile_moe_experts(w13q, w13s, w2q, w2s, shape.top_k)
    packed = (w13q, w13s, g13, w2q, w2s, g2)
    if not dense:  # the tuner needs only the NVFP4 weights
        return packed, None
    dense = (ng.dequantize_kernel_layout(packed[0], packed[1], g13, dtype, gs_mode=2),
             ng.dequantize_kernel_layout(packed[3], packed[4], g2, dtype, gs_mode=1))
    if checks is not None:
        one = dequantize_experts(w13[:1], s13[:1], g13[:1], w2[:1], s2[:1], g2[:1], dtype)
        same = all(torch.equal(a, b[:1]) for a, b in zip(one, dense))
        checks.append({"model": shape.name, "impl": "dequant kernel == torch dequantize (expert 0)", "ok": same})
    return packed, dense


def make_routing(shape: Shape, tokens: int, device, seed: int):
    g = torch.Generator(device=device).manual_seed(seed)
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    x = torch.randn(tokens, shape.hidden, generator=g, device=device).to(dtype)
    probs = torch.randn(tokens, shape.experts, generator=g, device=device).softmax(-1)
    w, ids = probs.topk(shape.top_k, dim=-1)
    return x, (w / w.sum(-1, keepdim=True)).contiguous(), ids.to(torch.int32)


def bytes_to_read(shape: Shape, ids: torch.Tensor, tokens: int, nvfp4: bool) -> tuple[int, int]:
    """(weight bytes of the touched experts, activation bytes) one MoE call must read."""
    touched = int(torch.unique(ids[ids >= 0]).numel())
    n_weights = 3 * shape.hidden * shape.inter
    per_expert = n_weights // 2 + n_weights // 16 + 12 if nvfp4 else 2 * n_weights  # codes + E4M3 + 3 globals
    return touched * per_expert, tokens * shape.hidden * 2


# ---------------------------------------------------------------- timing


class Timer:
    def __init__(self, smoke: bool):
        self.smoke = smoke

    def eager(self, fn) -> float:
        if self.smoke:
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e3
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))

    def graph(self, fn) -> float | None:
        if self.smoke:
            return None
        from tenk.kernels.testing import capture_cuda_graph

        graph = capture_cuda_graph(fn)
        ms = self.eager(graph.replay)
        del graph
        return ms

    def rounds(self, fns: dict, rounds: int) -> dict[str, list[float]]:
        """Each fn's eager ms `rounds` times, the fns alternated within each round (clock and
        thermal drift fall on all of them alike)."""
        times = {name: [] for name in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                times[name].append(self.eager(fn))
        return times

    def best(self, fn, tokens: int) -> tuple[float, float | None, str]:
        """(ms as the engine runs it, graph ms or None, how): graph replay up to GRAPH_MAX_TOKENS."""
        eager = self.eager(fn)
        graph = self.graph(fn) if tokens <= GRAPH_MAX_TOKENS and not self.smoke else None
        return (graph if graph is not None else eager), graph, "cuda_graph" if graph is not None else "eager"


# ---------------------------------------------------------------- run


def run_shape(key: str, shape: Shape, tokens_list, timer: Timer, device, rows: list, checks: list,
              breakdown_kernels: bool = False) -> None:  # fmt: skip
    from tenk.kernels import moe
    from tenk.kernels.configs.nvfp4 import IMPLS, moe_config
    from tenk.kernels.nvfp4_moe import moe_align_block_size_triton, nvfp4_fused_moe
    from tenk.kernels.testing import rel_err

    packed, (w13, w2) = make_experts(shape, device, checks=checks)
    for tokens in tokens_list:
        x, tw, ids = make_routing(shape, tokens, device, seed=tokens)
        out = torch.full_like(x, float("nan"))
        bf16 = lambda: moe.fused_moe_grouped_mm(x, w13, w2, tw, ids, out=out)
        cfg = moe_config(tokens, shape.experts, shape.hidden, shape.inter, shape.top_k, x.device)
        nvfp4 = lambda c=cfg: nvfp4_fused_moe(x, *packed, tw, ids, out=out, config=c)

        # correctness first: both paths against the reference, on this batch (capped for time)
        n_check = min(tokens, 1024 if not timer.smoke else tokens)
        ref = moe.fused_moe_ref(x[:n_check], w13, w2, tw[:n_check], ids[:n_check])
        for name, fn in (("nvfp4", nvfp4), ("bf16", bf16)):
            out.fill_(float("nan"))
            fn()
            err = rel_err(out[:n_check], ref)
            checks.append({"model": key, "tokens": tokens, "impl": name, "rel_err": err, "ok": err == err and err < 1e-2})

        weight_b, act_b = bytes_to_read(shape, ids, tokens, nvfp4=True)
        weight_b16, _ = bytes_to_read(shape, ids, tokens, nvfp4=False)
        pairs = int((ids >= 0).sum())
        flops = 2 * pairs * 3 * shape.hidden * shape.inter
        use_graph = tokens <= GRAPH_MAX_TOKENS and not timer.smoke
        timings = {}
        rounds = timer.rounds({"nvfp4": nvfp4, "bf16": bf16}, 1 if use_graph or timer.smoke else EAGER_ROUNDS)
        for name, fn in (("nvfp4", nvfp4), ("bf16", bf16)):
            eager = statistics.median(rounds[name])
            graph = timer.graph(fn) if use_graph else None
            timings[name] = (eager, graph, graph if graph is not None else eager)
        row = {
            "model": key, "shape": shape.__dict__, "tokens": tokens, "pairs": pairs,
            "config": {"impl": cfg.impl, "block_m": cfg.block_m, "w13": cfg.w13.to_dict(), "w2": cfg.w2.to_dict()},
            "timing": "cuda_graph" if use_graph else "eager",
            "nvfp4_ms": timings["nvfp4"][2], "nvfp4_eager_ms": timings["nvfp4"][0], "nvfp4_graph_ms": timings["nvfp4"][1],
            "bf16_ms": timings["bf16"][2], "bf16_eager_ms": timings["bf16"][0], "bf16_graph_ms": timings["bf16"][1],
            "nvfp4_bytes": weight_b + act_b, "bf16_bytes": weight_b16 + act_b, "flops": flops,
            "nvfp4_eager_rounds_ms": rounds["nvfp4"], "bf16_eager_rounds_ms": rounds["bf16"],
        }
        ms = row["nvfp4_ms"]
        row["nvfp4_tbps"] = row["nvfp4_bytes"] / ms / 1e9
        row["nvfp4_tflops"] = flops / ms / 1e9
        row["bf16_tbps"] = row["bf16_bytes"] / row["bf16_ms"] / 1e9
        row["bf16_tflops"] = flops / row["bf16_ms"] / 1e9
        row["speedup"] = row["bf16_ms"] / ms
        if not cfg.direct:  # the alignment launches alone
            row["align_ms"] = timer.best(lambda: moe_align_block_size_triton(ids, shape.experts, cfg.block_m), tokens)[0]
        if breakdown_kernels and not timer.smoke:
            row["nvfp4_kernels_us"] = breakdown(nvfp4)
        if tokens >= 1024 and not timer.smoke:  # the other NVFP4 paths at sizes where any may win
            for other in (i for i in IMPLS if i != cfg.impl):
                alt = type(cfg)(block_m=cfg.block_m, w13=cfg.w13, w2=cfg.w2, impl=other)
                try:
                    row[f"nvfp4_{other}_eager_ms"] = timer.eager(lambda: nvfp4(alt))
                except Exception as e:  # e.g. a launch config past this GPU's shared memory: the row stands
                    row[f"nvfp4_{other}_error"] = f"{type(e).__name__}: {e}"[:300]
        if use_graph:
            chain_row(row, shape, packed, (w13, w2), cfg, timer, device)
        row["targets"] = targets(row)
        rows.append(row)
        print(format_row(row), flush=True)


def chain_row(row: dict, shape: Shape, packed, dense, cfg, timer: Timer, device) -> None:
    """layer_ms for both paths: CHAIN calls in one graph, each on its own batch (other seeds)."""
    from tenk.kernels import moe
    from tenk.kernels.nvfp4_moe import nvfp4_fused_moe

    tokens = row["tokens"]
    batches = [make_routing(shape, tokens, device, seed=1000 * tokens + j) for j in range(CHAIN)]
    outs = [torch.empty_like(x) for x, _, _ in batches]
    calls = {
        "nvfp4": lambda: [nvfp4_fused_moe(x, *packed, tw, ids, out=o, config=cfg) for (x, tw, ids), o in zip(batches, outs)],
        "bf16": lambda: [moe.fused_moe_grouped_mm(x, *dense, tw, ids, out=o) for (x, tw, ids), o in zip(batches, outs)],
    }  # fmt: skip
    act = tokens * shape.hidden * 2
    for name, fn in calls.items():
        ms = timer.graph(fn) / CHAIN
        weights = sum(bytes_to_read(shape, ids, tokens, nvfp4=name == "nvfp4")[0] for _, _, ids in batches) / CHAIN
        row[f"{name}_layer_ms"] = ms
        row[f"{name}_layer_tbps"] = (weights + act) / ms / 1e9
    row["layer_speedup"] = row["bf16_layer_ms"] / row["nvfp4_layer_ms"]
    row["targets_in_chain"] = targets(row, "layer_")


def kernel_times_us(events, calls: int) -> dict[str, float]:
    """Device time per call of each kernel (by name, longest first) from torch.profiler events;
    host-side events are left out."""
    from step_profile import device_kernels

    kernels = device_kernels(events)
    return {name: us / calls for name, (us, _) in sorted(kernels.items(), key=lambda kv: -kv[1][0])}


def breakdown(fn, calls: int = 5) -> dict[str, float]:
    """Where one call's device time goes (eager launches: a graph replay hides its kernels' names)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return {k: round(v, 2) for k, v in kernel_times_us(prof.events(), calls).items()}


def targets(row: dict, pre: str = "") -> dict:
    """Issue 7's targets on the row's isolated timing, or (pre="layer_") on its in-chain timing."""
    t = {}
    if row["tokens"] <= 256:
        bw, speedup = row[f"nvfp4_{pre}tbps"], row[f"{pre}speedup"]
        t["bandwidth"] = {"need_tbps": TARGET_BW * COPY_TBPS, "got": bw, "ok": bw >= TARGET_BW * COPY_TBPS}
        t["speedup"] = {"need": TARGET_SPEEDUP, "got": speedup, "ok": speedup >= TARGET_SPEEDUP}
    if pre:
        return t
    if row["tokens"] >= 4096:
        t["compute"] = {"need_tflops": TARGET_FLOPS * BF16_TFLOPS, "got": row["nvfp4_tflops"],
                        "ok": row["nvfp4_tflops"] >= TARGET_FLOPS * BF16_TFLOPS}
    return t


def format_row(r: dict) -> str:
    flags = " ".join(f"{k}:{'ok' if v['ok'] else 'MISS'}" for k, v in r["targets"].items())
    return (f"{r['model']:8s} T={r['tokens']:6d} {r['timing']:10s} nvfp4 {r['nvfp4_ms']:8.3f} ms "
            f"{r['nvfp4_tbps']:5.2f} TB/s {r['nvfp4_tflops']:6.1f} TF | bf16 {r['bf16_ms']:8.3f} ms "
            f"{r['bf16_tbps']:5.2f} TB/s {r['bf16_tflops']:6.1f} TF | x{r['speedup']:.2f} {flags}"
            + (f" | align {r['align_ms'] * 1e3:.1f} us" if "align_ms" in r else "")
            + (f"\n{'':17s}in a chain of {CHAIN}: nvfp4 {r['nvfp4_layer_ms']:8.3f} ms {r['nvfp4_layer_tbps']:5.2f} TB/s"
               f" | bf16 {r['bf16_layer_ms']:8.3f} ms | x{r['layer_speedup']:.2f} "
               + " ".join(f"{k}:{'ok' if v['ok'] else 'MISS'}" for k, v in r["targets_in_chain"].items())
               if "nvfp4_layer_ms" in r else ""))


def gpu_tag() -> str:
    from tenk.kernels.configs.nvfp4 import device_tag

    return device_tag(torch.cuda.get_device_name())


def interpreter_if(smoke: bool):
    """Triton's interpreter for --smoke runs (CPU tensors), else nothing."""
    if not smoke:
        return contextlib.nullcontext()
    from tenk.kernels.interpret import triton_interpreter

    return triton_interpreter()


def write_result(name: str, out: str, smoke: bool, started: float, rows: list, checks: list, errors: dict,
                 **extra) -> tuple[dict, Path]:  # fmt: skip
    """The benchmark's JSON (device, versions, ceilings, checks, rows, errors and `extra`) as
    OUT/NAME_<gpu tag>.json, or NAME_smoke.json."""
    import triton

    result = {
        "device": torch.cuda.get_device_name() if not smoke else "cpu (Triton interpreter, smoke shapes)",
        "torch": torch.__version__, "triton": triton.__version__, "host": platform.node(),
        "seconds": round(time.time() - started, 1),
        "ceilings": {"copy_tbps": COPY_TBPS, "bf16_tflops": BF16_TFLOPS},
        "checks": checks, "rows": rows, "errors": errors, **extra,
    }  # fmt: skip
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}_{'smoke' if smoke else gpu_tag()}.json"
    path.write_text(json.dumps(result, indent=1))
    return result, path


def bench_parser(doc: str, tokens) -> argparse.ArgumentParser:
    """--models, --tokens, --out and --smoke, as the MoE kernel benchmarks take them."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--models", default="qwen3,minimax")
    parser.add_argument("--tokens", default=",".join(map(str, tokens)))
    parser.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "results"))
    parser.add_argument("--smoke", action="store_true", help="CPU, Triton interpreter, tiny shapes")
    return parser


def lacks_gpu(args, script: str) -> bool:
    """A GPU run without a GPU: says so (the caller exits 2)."""
    if args.smoke or torch.cuda.is_available():
        return False
    print(f"{script} needs a CUDA GPU (or --smoke on CPU)", file=sys.stderr)
    return True


def main() -> int:
    parser = bench_parser(__doc__, TOKENS)
    parser.add_argument("--breakdown", action="store_true", help="also each NVFP4 kernel's device time per call "
                        "(torch.profiler, eager launches)")
    args = parser.parse_args()
    if lacks_gpu(args, "moe_kernels.py"):
        return 2
    device = "cpu" if args.smoke else "cuda"
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    tokens = (1, 5, 16) if args.smoke else tuple(int(t) for t in args.tokens.split(","))
    timer = Timer(args.smoke)
    started = time.time()
    rows, checks, errors = [], [], {}
    with interpreter_if(args.smoke):
        for key in args.models.split(","):
            try:
                run_shape(key, shapes[key], tokens, timer, device, rows, checks, args.breakdown)
            except Exception:  # one broken model must not hide the other's numbers
                errors[key] = traceback.format_exc()
                print(f"[{key}] FAILED\n{errors[key]}", file=sys.stderr)
            if not args.smoke:
                torch.cuda.empty_cache()
    targets_met = all(v["ok"] for r in rows for v in r["targets"].values()) and bool(rows)
    in_chain = all(v["ok"] for r in rows for v in r.get("targets_in_chain", r["targets"]).values()) and bool(rows)
    result, path = write_result("moe_kernels", args.out, args.smoke, started, rows, checks, errors,
                                targets_met=targets_met, targets_met_in_chain=in_chain)
    bad = [c for c in checks if not c["ok"]]
    print(f"wrote {path} in {result['seconds']} s; {len(bad)} failed checks; targets met: {result['targets_met']} "
          f"(rows <= {GRAPH_MAX_TOKENS} tokens timed in a chain: {in_chain})")
    return 1 if bad or errors else 0


if __name__ == "__main__":
    sys.exit(main())
