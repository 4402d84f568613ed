"""`tenk plan --autotune`: start the most promising layouts one after another on the GPUs at
hand, run a short `tenk bench` sweep against each, and pick the best measured one.

    result = autotune(plan.fitting()[:3], launcher, AutotuneConfig(gpu_ids=[0, 1]))
    result.best.layout.name, result.best.peak_tok_s

The launcher is injectable (launcher.py): tests drive this loop with fake servers of known
speed, real runs with `TenkServeLauncher`. A layout that fails to start or to bench is
recorded with its error and skipped; the choice is made from what was measured, never from
the estimate.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tenk.errors import ConfigError
from tenk.plan.launcher import Launcher
from tenk.plan.planner import LayoutPlan
from tenk.server.args import api_servers_for

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class AutotuneConfig:
    gpu_ids: list[int]  # devices the layouts may use (on CPU: as many slots as --gpus)
    top_k: int = 3
    concurrency: tuple[int, ...] | None = None  # None: a quarter, half and all of the layout's planned slots
    input_len: int = 256
    output_len: int = 128
    num_prompts: int | None = None  # per level; None: 2 x concurrency, at least 16
    warmup: int = 2
    base_port: int = 18400
    out_dir: Path | None = None  # bench JSON/CSV per layout
    tokenizer: str | None = None  # local tokenizer for exact prompt lengths (None: the server's /tokenize)
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ConfigError("--autotune-top must be at least 1")
        if not self.gpu_ids:
            raise ConfigError("autotune needs at least one GPU (or CPU slot)")


@dataclass(slots=True)
class Trial:
    layout: LayoutPlan
    levels: list[tuple[int, float]] = field(default_factory=list)  # (concurrency, output tok/s)
    peak_tok_s: float = 0.0
    peak_concurrency: int = 0
    failed_requests: int = 0
    error: str | None = None
    bench_json: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.peak_tok_s > 0

    def as_dict(self) -> dict:
        return {
            "layout": self.layout.name, "quantization": self.layout.quantization, "tp": self.layout.tp,
            "dp": self.layout.dp, "est_output_tok_s": round(self.layout.tok_s, 1),
            "measured_peak_tok_s": round(self.peak_tok_s, 1), "peak_concurrency": self.peak_concurrency,
            "levels": [{"concurrency": c, "output_tok_s": round(t, 1)} for c, t in self.levels],
            "failed_requests": self.failed_requests, "error": self.error, "bench_json": self.bench_json,
        }


@dataclass(slots=True)
class AutotuneResult:
    trials: list[Trial]
    best: Trial | None

    def as_dict(self, serve_command: str | None = None) -> dict:
        return {
            "trials": [t.as_dict() for t in self.trials],
            "best": self.best.as_dict() if self.best else None,
            "serve_command": serve_command,
        }


def candidate_layouts(fitting: list[LayoutPlan], num_gpus: int, top_k: int) -> list[LayoutPlan]:
    """The top_k best-estimated layouts that the GPUs at hand can hold."""
    return [lp for lp in fitting if lp.gpus <= num_gpus][:top_k]


def sweep_levels(lp: LayoutPlan, cfg: AutotuneConfig) -> tuple[int, ...]:
    if cfg.concurrency:
        return tuple(cfg.concurrency)
    slots = max(1, lp.batch * lp.dp)
    return tuple(sorted({max(1, slots // 4), max(1, slots // 2), slots}))


def _bench(urls: list[str], levels: tuple[int, ...], cfg: AutotuneConfig, out: Path | None):
    from tenk.bench import BenchConfig, run_sweep

    kw = dict(workers=cfg.workers) if cfg.workers else {}
    n = cfg.num_prompts
    config = BenchConfig(
        urls=urls, concurrency=levels, input_len=cfg.input_len, output_len=cfg.output_len,
        # two "waves" of the largest level: short, yet every level runs at full concurrency
        num_prompts=n if n is not None else max(16, 2 * max(levels)), warmup=cfg.warmup, tokenizer=cfg.tokenizer,
        out=str(out) if out else None, scrape_metrics=False, **kw,
    )
    return run_sweep(config)


def best_trial(trials: list[Trial]) -> Trial | None:
    """Highest measured peak output throughput; ties go to the layout with fewer GPUs."""
    ok = [t for t in trials if t.ok]
    if not ok:
        return None
    return max(ok, key=lambda t: (t.peak_tok_s, -t.layout.gpus))


def autotune(
    candidates: list[LayoutPlan],
    launcher: Launcher,
    cfg: AutotuneConfig,
    on_event: Callable[[str, Trial], None] | None = None,
) -> AutotuneResult:
    trials = []
    for i, lp in enumerate(candidates):
        trial = Trial(lp)
        trials.append(trial)
        if lp.gpus > len(cfg.gpu_ids):
            trial.error = f"needs {lp.gpus} GPUs, {len(cfg.gpu_ids)} at hand"
            continue
        if on_event:
            on_event("start", trial)
        port = cfg.base_port + 16 * i  # a fresh port range per layout: no TIME_WAIT clashes
        out = None
        if cfg.out_dir is not None:
            out = Path(cfg.out_dir) / f"autotune-{lp.quantization.split(' ')[0]}-{lp.name}.json"
            trial.bench_json = str(out)
        try:
            server = launcher(lp, cfg.gpu_ids[: lp.gpus], port)
        except Exception as exc:  # a layout that does not start is a result, not a crash
            trial.error = f"did not start: {exc}"
            logger.warning("%s %s: %s", lp.quantization, lp.name, trial.error)
            if on_event:
                on_event("done", trial)
            continue
        try:
            result = _bench(server.urls, sweep_levels(lp, cfg), cfg, out)
            trial.levels = [(lv.concurrency, lv.output_throughput) for lv in result.levels]
            trial.failed_requests = sum(lv.failed for lv in result.levels)
            peak = result.peak()
            if peak is not None:
                trial.peak_tok_s, trial.peak_concurrency = peak.output_throughput, peak.concurrency
            if result.interrupted:
                trial.error = "the sweep was interrupted"
            elif trial.peak_tok_s <= 0:
                trial.error = f"no tokens came back ({trial.failed_requests} requests failed)"
        except Exception as exc:
            trial.error = f"bench failed: {exc}"
            logger.warning("%s %s: %s", lp.quantization, lp.name, trial.error)
        finally:
            server.stop()
        if on_event:
            on_event("done", trial)
    return AutotuneResult(trials, best_trial(trials))


def serve_command(model: str, lp: LayoutPlan, gpu_memory_utilization: float, max_num_seqs: int,
                  extra: tuple[str, ...] = ()) -> str:
    """The exact `tenk serve` command for a layout (one endpoint, DP replicas behind it)."""
    cmd = ["tenk", "serve", model, "--tp", str(lp.tp), "--dp", str(lp.dp), "--gpu-memory-utilization",
           f"{gpu_memory_utilization:g}", "--max-num-seqs", str(max_num_seqs)]
    if lp.dp > 1:
        cmd += ["--api-server-count", str(api_servers_for(lp.dp))]
    if lp.max_model_len:
        cmd += ["--max-model-len", str(lp.max_model_len)]
    cmd += list(extra)
    devices = ",".join(str(i) for i in range(lp.gpus))
    return f"CUDA_VISIBLE_DEVICES={devices} " + shlex.join(cmd)
