"""`tenk demo`: the whole workflow on any machine, no downloads:

    random MoE checkpoint -> NVFP4 copy -> serve each configuration -> concurrency sweep -> report

Configurations, the first the baseline: BF16 with one replica; NVFP4 with one replica; and the
better-served format with two replicas (DP=2), the seed's layout move. A replica is a real
`tenk serve` in its own process; DP=2 is two of them with the benchmark client balancing requests
(least outstanding) until the server runs data-parallel replicas behind one endpoint itself.
When a configuration cannot be served (the engine may not load NVFP4 yet), the demo says why,
leaves it out and keeps going; the report's notes repeat it.

On CPU each replica gets one core (OMP_NUM_THREADS=1): two engines with two busy threads each
on two cores would measure contention rather than the layout.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tenk.errors import ConfigError

MARKER = ".tenk-demo"  # marks a folder the demo made, so a rerun may replace its contents


@dataclass(frozen=True, slots=True)
class DemoPreset:
    model_preset: str  # tenk.models.presets name
    load_format: str  # "auto": random weights written to disk; "dummy": made by the engine on the GPU
    device: str  # "cpu" | "cuda"
    dtype: str  # what the engine computes in
    concurrency: tuple[int, ...]
    input_len: int
    output_len: int
    num_prompts: int | None  # per level; None: the bench default max(4c, 64)
    max_num_seqs: int
    max_model_len: int
    level_timeout: float  # seconds; the rest of a level is counted unfinished
    workers: int | None = None  # bench client processes; None: the bench default


PRESETS = {
    "tiny-moe": DemoPreset("tiny-moe", "auto", "cpu", "float32", (1, 4, 16), 32, 32, 32, 16, 512, 60.0, 1),
    "qwen3-30b-a3b": DemoPreset("qwen3-30b-a3b", "dummy", "cuda", "bfloat16",
                                (1, 4, 8, 16, 32, 64, 128, 256, 384, 512, 640, 896), 256, 256, None, 512, 4096, 600.0),
}  # fmt: skip


@dataclass(slots=True)
class Plan:
    """One configuration to serve and sweep."""

    name: str  # "NVFP4 DP=2"
    fmt: str  # "BF16" | "NVFP4"
    model_dir: Path
    dp: int


@dataclass(slots=True)
class DemoResult:
    report_html: Path
    results: list[Path]
    notes: list[str]
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds


def prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ConfigError(f"{out} is not empty and was not made by `tenk demo`; choose another --out")
    for sub in ("models", "results", "report"):
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by tenk demo; rerunning the demo replaces models/, results/ and report/\n")


def replicas_available(p: DemoPreset) -> int:
    """How many one-device replicas this machine can run side by side."""
    if p.device == "cuda":
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    return os.cpu_count() or 1


def hardware_name(p: DemoPreset, info: dict | None) -> str:
    if p.device == "cuda" and info and info.get("gpu_name"):
        return str(info["gpu_name"]).replace("NVIDIA ", "")
    return "CPU core"


def machine_text(p: DemoPreset, info: dict | None) -> str:
    if p.device == "cuda" and info and info.get("gpu_name"):
        return str(info["gpu_name"])
    return f"{os.cpu_count()}-core CPU ({platform.machine()})"


def check_cuda(p: DemoPreset) -> None:
    if p.device == "cuda" and replicas_available(p) == 0:
        raise ConfigError(
            f"preset {p.model_preset} needs a CUDA GPU; on this machine run `tenk demo --preset tiny-moe`"
        )


def bench_config(p: DemoPreset, urls: list[str], name: str, out: Path):
    from tenk.bench import BenchConfig

    kw = {"workers": p.workers} if p.workers else {}
    return BenchConfig(
        urls=urls, model=name, concurrency=p.concurrency, input_len=p.input_len, output_len=p.output_len,
        num_prompts=p.num_prompts, warmup=2, level_timeout=p.level_timeout, scrape_interval=0.5, out=str(out), **kw,
    )  # fmt: skip


def plans(bf16: Path, nvfp4: Path, max_replicas: int) -> list[Plan]:
    """The candidates in order; run_demo drops the ones that cannot be served."""
    out = [Plan("BF16 DP=1", "BF16", bf16, 1), Plan("NVFP4 DP=1", "NVFP4", nvfp4, 1)]
    if max_replicas >= 2:
        out.append(Plan("DP=2", "", nvfp4, 2))  # format filled in once we know what serves
    return out


Log = Callable[[str], None]


def _start_all(replicas: list) -> None:
    """Start replicas side by side (each load takes seconds to minutes); all or none."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(replicas)) as pool:
        futures = [pool.submit(r.start) for r in replicas]
        errors = [f.exception() for f in futures]
    for err in errors:
        if err is not None:
            for r in replicas:
                r.stop()
            raise err


def serve_and_sweep(p: DemoPreset, plan: Plan, results: Path, log: Log,
                    check: Callable[[dict], str | None] | None = None) -> tuple[Path, dict]:  # fmt: skip
    """Serve `plan`, sweep it, write its result file with labels and layout; returns (file, info).
    `check(info)` may veto the started replicas with a reason (raised as ReplicaStartError)."""
    from tenk.bench import run_sweep
    from tenk.report.layout import layout_block
    from tenk.report.replica import Replica, ReplicaSpec, ReplicaStartError

    served = plan.model_dir.name
    engine = {"device": p.device, "dtype": p.dtype, "load_format": p.load_format, "max_num_seqs": p.max_num_seqs,
              "max_model_len": p.max_model_len}  # fmt: skip
    envs = [{"OMP_NUM_THREADS": "1"} if p.device == "cpu" else {"CUDA_VISIBLE_DEVICES": str(i)} for i in range(plan.dp)]
    replicas = [Replica(ReplicaSpec(str(plan.model_dir), engine, served, env)) for env in envs]
    t0 = time.perf_counter()
    _start_all(replicas)
    path = results / f"{plan.name.lower().replace(' ', '-').replace('=', '')}.json"
    try:
        reason = check(replicas[0].info) if check else None
        if reason:
            raise ReplicaStartError(reason)
        up = time.perf_counter() - t0
        log(f"  {plan.name}: {plan.dp} replica(s) up in {up:.1f} s; sweeping c={list(p.concurrency)}")
        res = run_sweep(bench_config(p, [r.url for r in replicas], served, path))
    finally:
        for r in replicas:
            r.stop()
    info = replicas[0].info
    doc = json.loads(path.read_text())
    doc["config"]["labels"] = {"name": plan.name, "model": p.model_preset, "quantization": plan.fmt,
                               "layout": f"DP={plan.dp}", "gpu": hardware_name(p, info), "gpus": plan.dp}  # fmt: skip
    doc["config"]["layout"] = layout_block(model_dir=plan.model_dir, dtype=p.dtype, block_size=16, info=info, tp=1,
                                           dp=plan.dp, quantization=plan.fmt)  # fmt: skip
    path.write_text(json.dumps(doc, indent=1) + "\n")
    for line in res.summary().splitlines():
        log(f"    {line}")
    return path, info


def _honours_nvfp4(p: DemoPreset, bf16_info: dict | None) -> Callable[[dict], str | None]:
    """With random weights made by the engine (dummy), an engine that ignores the config's
    quantization still starts, in bf16. On a GPU the KV cache then gives it away: 4-bit experts
    free memory, so an NVFP4 replica must hold clearly more KV tokens than the BF16 one."""

    def check(info: dict) -> str | None:
        if p.load_format != "dummy":
            return None  # real files: an engine that cannot use the packed tensors refuses to load them
        if info.get("device") != "cuda" or not bf16_info:
            return "with random weights made by the engine off the GPU, the demo cannot tell whether it kept 4 bits"
        if info["kv_capacity_tokens"] <= 1.05 * bf16_info["kv_capacity_tokens"]:
            return ("the engine started the NVFP4 config with no more KV cache than BF16 "
                    f"({info['kv_capacity_tokens']:,} vs {bf16_info['kv_capacity_tokens']:,} tokens), "
                    "so it did not keep the experts in 4 bits")  # fmt: skip
        return None

    return check


def run_demo(preset: str, out: Path, log: Log, **overrides) -> DemoResult:
    """Run the whole demo into `out`; `overrides` replace DemoPreset fields (concurrency, ...)."""
    import dataclasses

    from tenk.report import make_report
    from tenk.report.demo_checkpoints import make_checkpoints
    from tenk.report.replica import ReplicaStartError

    if preset not in PRESETS:
        raise ConfigError(f"unknown demo preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p = dataclasses.replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    check_cuda(p)
    prepare_out(out)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    bf16, nvfp4 = make_checkpoints(p.model_preset, p.load_format, out / "models")
    timings["checkpoints"] = time.perf_counter() - t
    log(f"checkpoints: {bf16} and its NVFP4 copy {nvfp4.name} ({timings['checkpoints']:.1f} s)")

    results_dir, notes, results = out / "results", [], []
    info: dict | None = None
    nvfp4_ok = True
    for plan in plans(bf16, nvfp4, replicas_available(p)):
        if plan.dp > 1:
            plan.fmt = "NVFP4" if nvfp4_ok else "BF16"
            plan.model_dir = nvfp4 if nvfp4_ok else bf16
            plan.name = f"{plan.fmt} DP={plan.dp}"
        t = time.perf_counter()
        check = _honours_nvfp4(p, info) if plan.fmt == "NVFP4" else None
        try:
            path, info0 = serve_and_sweep(p, plan, results_dir, log, check)
        except ReplicaStartError as exc:
            if plan.fmt != "NVFP4":
                raise
            if plan.dp == 1:
                nvfp4_ok = False
                two = replicas_available(p) >= 2
                instead = "BF16 with one replica against BF16 with two (DP=2)" if two else "BF16 alone"
                notes.append(f"The NVFP4 checkpoint could not be served on this machine ({exc}); "
                             f"the demo shows {instead} instead.")  # fmt: skip
            else:
                notes.append(f"{plan.name} could not be served ({exc}).")
            log(f"  {plan.name}: not served: {exc}")
            continue
        info = info or info0
        timings[plan.name] = time.perf_counter() - t
        results.append(path)
    if replicas_available(p) < 2:
        notes.append(f"DP=2 needs two {'GPUs' if p.device == 'cuda' else 'cores'}; this machine has one.")
    else:
        unit = "GPU" if p.device == "cuda" else "core"
        notes.append(f"DP=2 is two servers, one {unit} each, the benchmark client balancing requests between them "
                     "(least outstanding), as one endpoint in front of data-parallel replicas would.")  # fmt: skip
    if p.device == "cpu":
        notes.append("CPU run: each replica is one engine on one core (OMP_NUM_THREADS=1), computing in float32. "
                     "The benchmark client and the servers share this machine's cores, so a second replica here "
                     "shows what it costs on a CPU, not what a second GPU adds.")  # fmt: skip
    t = time.perf_counter()
    title = f"tenk demo: {p.model_preset} (random weights) on {machine_text(p, info)}"
    files = make_report(results, out / "report", title=title, notes=notes)
    timings["report"] = time.perf_counter() - t
    return DemoResult(report_html=files.html, results=results, notes=notes, timings=timings)
