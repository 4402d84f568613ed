"""Decode-step time and its breakdown (attention, MoE, dense GEMMs, norms/RoPE/activations,
sampling, host gaps) for a preset with random weights, at a given batch size (issue 8).

    python benchmarks/step_profile.py --preset qwen3-30b-a3b --quantization nvfp4 --batch 256 \
        --context 384 --out $OUT

Method: B requests of `--context` prompt tokens are prefilled, then the engine runs decode-only
steps. Wall time per step is measured over `--steps` steps (CUDA graphs and overlapped scheduling
as in serving). Then the torch profiler records `--profile-steps` steps; device kernels are grouped
by name into categories, and the host gap is the step's wall time minus the busy device time.
`host_ms` splits the host's side of a measured step: scheduling, launching (batch building and
the graph replay or eager forward), the wait for the previous step's samples, and applying them
(text, stops); with overlapped scheduling the host runs ahead while the device works, so a host
gap appears only where host work outlasts the device's.
Writes step_profile_<preset>_<quant>_b<B>.json to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# First match wins: kernel-name fragments (lower case) -> category.
CATEGORIES = (
    ("moe", ("nvfp4_moe", "moe_align", "silu_mul_reduce", "combine_splits", "grouped", "_moe", "moe_")),
    ("attention", ("decode_kernel", "prefill_kernel", "store_kv", "flash", "attention", "fmha")),
    ("norm_rope_act", ("rms", "rotary", "rope", "silu", "norm")),
    # torch's router ops (softmax, topk's sort and gather) or tenk's fused router
    ("router", ("topk_route", "gathertopk", "bitonicsort", "softmax_warp")),
    ("sampling", ("argmax", "sampl", "softmax", "topk", "sort", "multinomial", "exponential", "log_softmax")),
    ("dense_gemm", ("gemm", "cutlass", "sm90", "nvjet", "xmma", "cublas", "splitk", "matmul", "nvfp4_gemm")),
    ("copy_elementwise", ("copy", "elementwise", "fill", "index", "cat", "reduce", "scatter", "gather")),
)


MAX_BATCHED_TOKENS = 8192


def category(name: str) -> str:
    low = name.lower()
    for cat, frags in CATEGORIES:
        if any(f in low for f in frags):
            return cat
    return "other"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def decode_steps(engine, n: int) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        engine.step(finished_only=True)
    sync()
    return (time.perf_counter() - t0) / n


class HostTimer:
    """Wall time of the engine's host-side parts per step, by wrapping their methods on the
    instances (nothing changes in what they do)."""

    PARTS = {"schedule": ("scheduler", "schedule"), "launch": ("runner", "launch"), "wait": ("runner", "fetch"),
             "process": ("", "_process")}  # fmt: skip

    def __init__(self, engine):
        self.engine = engine
        self.totals = dict.fromkeys(self.PARTS, 0.0)

    def _wrap(self, name, owner, attr):
        fn = getattr(owner, attr)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.totals[name] += time.perf_counter() - t

        setattr(owner, attr, timed)

    def __enter__(self):
        for name, (holder, attr) in self.PARTS.items():
            self._wrap(name, getattr(self.engine, holder) if holder else self.engine, attr)
        return self

    def __exit__(self, *exc):
        for holder, attr in self.PARTS.values():
            delattr(getattr(self.engine, holder) if holder else self.engine, attr)  # back to the class's method

    def per_step_ms(self, steps: int) -> dict[str, float]:
        out = {k: v * 1000 / steps for k, v in self.totals.items()}
        out["process"] -= out["wait"]  # _process calls fetch: its own work is the rest
        return out


def device_kernels(events) -> dict[str, list]:
    """Each device kernel's total time (us) and launch count, by name, from torch.profiler events
    (host-side events left out). benchmarks/moe_kernels.py --breakdown reads its profiles with it too."""
    by_kernel: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for evt in events:
        if getattr(evt, "device_type", None) != torch.autograd.DeviceType.CUDA:
            continue
        rec = by_kernel[evt.name]
        rec[0] += evt.device_time if hasattr(evt, "device_time") else evt.cuda_time
        rec[1] += 1
    return dict(by_kernel)


def decode_budget(args, batch: int) -> int:
    """max_tokens that keeps every sequence running through the measured steps: while later prompts
    are still prefilling (MAX_BATCHED_TOKENS per step), earlier ones already decode one token per
    step (a budget too small made sequences finish mid-measurement, mixing batch sizes)."""
    prefill_steps = -(-batch * args.context // MAX_BATCHED_TOKENS)
    return prefill_steps + 3 + args.steps + args.profile_steps + 8


def alloc_retries() -> int:
    """The caching allocator's failed cudaMallocs so far: each one frees the cache, which
    synchronizes the device (a step that does so loses its overlap with the host)."""
    return torch.cuda.memory_stats().get("num_alloc_retries", 0) if torch.cuda.is_available() else 0


def profile(engine, n: int, trace: Path | None = None) -> tuple[dict, list, list]:
    """(device ms per step by category, top device kernels, top host ops by self time): the host
    list names what the CPU does between launches (a synchronizing CUDA call, a pinned-memory
    allocation) when the device idles."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        decode_steps(engine, n)
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    by_cat: dict[str, float] = defaultdict(float)
    kernels = device_kernels(prof.events())
    for name, (us, _) in kernels.items():
        by_cat[category(name)] += us / 1000.0 / n
    top = sorted(([k, us / 1000.0 / n, count // n] for k, (us, count) in kernels.items()), key=lambda r: -r[1])[:30]
    host = sorted(([a.key, a.self_cpu_time_total / 1000.0 / n, a.count / n] for a in prof.key_averages()
                   if a.self_cpu_time_total > 0), key=lambda r: -r[1])[:15]  # fmt: skip
    return dict(by_cat), top, host


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="qwen3-30b-a3b")
    ap.add_argument("--num-layers", type=int, default=None)
    ap.add_argument("--quantization", default="none")
    ap.add_argument("--kv-cache-dtype", default="auto")
    ap.add_argument("--batch", default="256", help="comma list of batch sizes")
    ap.add_argument("--context", type=int, default=384, help="prompt tokens per request before the measured decode")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--profile-steps", type=int, default=5)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--trace", action="store_true", help="also write the profiled steps' Chrome trace per batch")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "results"))
    args = ap.parse_args()

    from tenk.engine.config import EngineConfig
    from tenk.engine.llm_engine import LLMEngine
    from tenk.engine.sampling_params import SamplingParams
    from tenk.models.source import materialize_preset

    batches = [int(b) for b in args.batch.split(",")]
    model_dir = materialize_preset(args.preset, args.num_layers)
    extra = {"kv_cache_dtype": args.kv_cache_dtype} if args.kv_cache_dtype != "auto" else {}
    t0 = time.perf_counter()
    engine = LLMEngine(EngineConfig(
        str(model_dir), load_format="dummy", quantization=args.quantization, max_num_seqs=max(batches),
        max_model_len=args.context + decode_budget(args, max(batches)) + 16, enable_prefix_caching=False,
        max_num_batched_tokens=MAX_BATCHED_TOKENS, enforce_eager=args.enforce_eager,
        gpu_memory_utilization=args.gpu_memory_utilization, **extra,
    ))
    startup = time.perf_counter() - t0
    vocab = engine.model_config.vocab_size
    g = torch.Generator().manual_seed(0)
    result = {"benchmark": "step_profile", "preset": args.preset, "quantization": args.quantization,
              "kv_cache_dtype": args.kv_cache_dtype, "context": args.context, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "startup_s": startup, "enforce_eager": args.enforce_eager, "batches": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for b in batches:
        params = SamplingParams(max_tokens=decode_budget(args, b), ignore_eos=True, temperature=0.0)
        for i in range(b):
            prompt = torch.randint(10, vocab, (args.context,), generator=g).tolist()
            engine.add_request(f"b{b}-{i}", prompt, params)
        while engine.scheduler.waiting or any(s.num_uncomputed_tokens > 1 for s in engine.scheduler.running):
            engine.step(finished_only=True)
        for _ in range(3):
            engine.step(finished_only=True)
        running = len(engine.scheduler.running)
        retries = alloc_retries()
        with HostTimer(engine) as host:
            step_s = decode_steps(engine, args.steps)
        retries = alloc_retries() - retries
        trace = out / f"trace_{args.preset}_b{b}.json" if args.trace else None
        cats, top, host_top = profile(engine, args.profile_steps, trace)
        if len(engine.scheduler.running) != running:
            raise RuntimeError(f"B={b}: {running - len(engine.scheduler.running)} sequences left during the "
                               "measured steps (their numbers would mix batch sizes)")
        busy = sum(cats.values())
        row = {"batch": b, "running": running, "step_ms": step_s * 1000, "tok_s_decode": running / step_s,
               "device_busy_ms": busy, "host_gap_ms": step_s * 1000 - busy, "host_ms": host.per_step_ms(args.steps),
               "alloc_retries_per_step": retries / args.steps,
               "categories_ms": cats, "top_kernels": top, "top_host_ops": host_top}
        result["batches"].append(row)
        print(f"B={b} running={running} step {step_s * 1000:.2f} ms ({running / step_s:.0f} tok/s decode) "
              f"busy {busy:.2f} ms: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(cats.items(), key=lambda kv: -kv[1]))
              + "; host " + ", ".join(f"{k} {v:.2f}" for k, v in row["host_ms"].items())
              + f"; alloc retries/step {row['alloc_retries_per_step']:.2f}"
              + "; host ops " + ", ".join(f"{k} {v:.2f}" for k, v, _ in host_top[:6]), flush=True)
        engine.abort_request(list(engine.requests))
    path = out / f"step_profile_{args.preset}_{args.quantization}_{args.kv_cache_dtype}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
