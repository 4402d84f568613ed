"""`tenk plan MODEL --gpus N --gpu-memory 80GiB`: the memory layout and estimated throughput of
every (quantization, TP, DP) layout, ranked; `--emit` writes launch scripts, `--autotune`
measures the best candidates."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import typer

from tenk.cli.common import console, user_errors

HELP = ("Plan GPU layouts for MODEL (a directory with config.json, or a preset): weights, KV cache and "
        "estimated throughput per (quantization, TP, DP), ranked. --emit writes launch scripts for tenk, vLLM "
        "or SGLang; --autotune starts the best layouts and benchmarks them.")


def register(app: typer.Typer) -> None:
    app.command("plan", help=HELP)(plan)


def _split(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


@user_errors
def plan(
    model: str = typer.Argument(..., help="Model directory (config.json is enough) or preset name, e.g. minimax-m2."),
    gpus: int = typer.Option(..., "--gpus", help="GPUs available (layouts use TP x DP <= this)."),
    gpu_memory: Optional[str] = typer.Option(None, "--gpu-memory", help="Memory per GPU as the driver reports it: 80GiB, 96GB, 97887MiB. Default: --gpu's, else the local GPU's."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="GPU preset for memory, bandwidth, peak and links: h100, h200, a100, rtx-pro-6000."),
    quantization: Optional[str] = typer.Option(None, "--quantization", "-q", help="Comma list of bf16, fp8 (block 128), fp8-tensor, nvfp4 (experts), nvfp4-all, auto (the checkpoint's own). Default nvfp4,fp8,bf16."),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len", help="Context length to guarantee (default: the model's; lowered to what KV holds, as the engine does)."),
    gpu_memory_utilization: float = typer.Option(0.9, "--gpu-memory-utilization", help="Share of each GPU's memory the engine may use."),
    max_num_seqs: int = typer.Option(256, "--max-num-seqs", help="Most sequences a replica decodes together."),
    max_num_batched_tokens: Optional[int] = typer.Option(None, "--max-num-batched-tokens", help="Tokens per step (default max(8192, max-num-seqs)); sets the activation reserve."),
    context_len: int = typer.Option(2048, "--context-len", help="Tokens per sequence (prompt + output) for concurrency and KV reads."),
    block_size: int = typer.Option(16, "--block-size", help="Tokens per KV block."),
    kv_cache_dtype: str = typer.Option("auto", "--kv-cache-dtype", help="auto (the model's dtype), or fp8 / fp8_e4m3: 1 byte per element, twice bf16's tokens. Emitted scripts pass it on."),
    hbm_bandwidth: Optional[str] = typer.Option(None, "--hbm-bandwidth", help="Memory bandwidth per GPU, e.g. 3.35TB/s (default: --gpu's, else 3.35TB/s)."),
    peak_tflops: Optional[str] = typer.Option(None, "--peak-tflops", help="Dense bf16 TFLOP/s per GPU (default: --gpu's, else 790)."),
    interconnect: Optional[str] = typer.Option(None, "--interconnect", help="nvlink or pcie (default: --gpu's, else nvlink)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the plan (and autotune results) as JSON here."),
    emit: Optional[Tuple[str, Path]] = typer.Option(None, "--emit", help="ENGINE DIR: write launch scripts for tenk, vllm or sglang into DIR."),
    layout: Optional[List[str]] = typer.Option(None, "--layout", help="Layouts to emit/autotune: tp2dp2, tp4, nvfp4:tp2dp2 (repeatable or comma list). Default: the best of each quantization."),
    autotune: bool = typer.Option(False, "--autotune", help="Start the best layouts on the GPUs here, bench each, pick the best measured."),
    autotune_top: int = typer.Option(3, "--autotune-top", help="How many of the best-estimated layouts to measure."),
    autotune_concurrency: Optional[str] = typer.Option(None, "--autotune-concurrency", help="Sweep levels, e.g. 16,64,256 (default: 1/4, 1/2 and all of each layout's planned slots)."),
    autotune_input_len: int = typer.Option(256, "--autotune-input-len", help="Prompt tokens per request."),
    autotune_output_len: int = typer.Option(128, "--autotune-output-len", help="Generated tokens per request."),
    autotune_num_prompts: Optional[int] = typer.Option(None, "--autotune-num-prompts", help="Requests per level (default: 2 x the largest level, at least 16)."),
    autotune_dir: Path = typer.Option(Path("autotune-results"), "--autotune-dir", help="Bench JSON/CSV and server logs per layout."),
    device: str = typer.Option("auto", "--device", help="Autotune: auto (CUDA when present), or cpu (every 'GPU' is a CPU process)."),
    serve_arg: Optional[List[str]] = typer.Option(None, "--serve-arg", help="Extra argument for each `tenk serve` autotune starts, e.g. --serve-arg=--load-format --serve-arg=dummy."),
) -> None:  # fmt: skip
    from tenk.bench.config import parse_concurrency
    from tenk.errors import ConfigError
    from tenk.plan.hardware import GpuSpec, gpu_from_preset
    from tenk.plan.planner import PlanConfig, make_plan
    from tenk.plan.render import print_plan, write_json
    from tenk.plan.source import load_model_source
    from tenk.plan.units import parse_bandwidth, parse_memory, parse_tflops

    base = gpu_from_preset(gpu) if gpu else None
    memory = parse_memory(gpu_memory) if gpu_memory else (base.memory_bytes if base else _local_gpu_memory())
    spec = GpuSpec(
        memory_bytes=memory,
        hbm_bandwidth=parse_bandwidth(hbm_bandwidth) if hbm_bandwidth else (base.hbm_bandwidth if base else 3.35e12),
        peak_flops=parse_tflops(peak_tflops) if peak_tflops else (base.peak_flops if base else 790e12),
        interconnect=interconnect or (base.interconnect if base else "nvlink"),
        name=gpu or "gpu",
    )
    try:
        levels = parse_concurrency(autotune_concurrency) if autotune_concurrency else None
    except ConfigError:
        raise ConfigError(f"--autotune-concurrency {autotune_concurrency!r} must be a comma-separated list of integers") from None
    from tenk.plan.launcher import uses_dummy_weights

    dummy = uses_dummy_weights(tuple(serve_arg or ()))
    quants = tuple(_split(quantization)) or (("auto",) if autotune and not dummy else ("nvfp4", "fp8", "bf16"))
    if autotune and not dummy and any(q != "auto" for q in quants):
        raise ConfigError("--autotune serves MODEL's own weights: plan it with --quantization auto (or leave it out), "
                          "or autotune random weights in any format with --serve-arg=--load-format --serve-arg=dummy")
    source = load_model_source(model)
    cfg = PlanConfig(
        gpus=gpus, gpu=spec, quantizations=quants, max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization, max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens, block_size=block_size, context_len=context_len,
        kv_cache_dtype=kv_cache_dtype,
    )
    with console.status("planning layouts..."):
        the_plan = make_plan(source, cfg)
    print_plan(the_plan, _stdout())
    layouts = [s for item in (layout or []) for s in _split(item)]
    extra: dict = {}
    if emit:
        _emit(the_plan, source, emit, layouts)
    if autotune:
        serve_extra = tuple(serve_arg or ())
        if cfg.kv_cache_dtype != "auto":  # the servers must size KV as the plan did
            serve_extra += ("--kv-cache-dtype", cfg.kv_cache_dtype)
        extra["autotune"] = _autotune(the_plan, source, layouts, gpus, device, serve_extra, dummy, dict(
            top_k=autotune_top, concurrency=levels,
            input_len=autotune_input_len, output_len=autotune_output_len, num_prompts=autotune_num_prompts,
            out_dir=autotune_dir,
        ))
    if json_out:
        path = write_json(the_plan, json_out, extra)
        console.print(f"wrote {path}")


def _stdout():
    """The table goes to stdout; piped, it keeps a readable width instead of rich's 80 columns."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=170)


def _local_gpu_memory() -> int:
    from tenk.errors import ConfigError

    import torch

    if not torch.cuda.is_available():
        raise ConfigError("give --gpu-memory (for example 80GiB) or --gpu (h100, h200, a100, rtx-pro-6000): no local GPU to read it from")
    return torch.cuda.mem_get_info(0)[1]


def _model_path_for(source, lp) -> str | None:
    """The directory a script can default MODEL to: only when it holds this quantization."""
    if not source.is_dir:
        return None
    own = lp.quantization.startswith("auto") or (lp.quantization == "bf16" and source.checkpoint_quant is None)
    return str(Path(source.name).resolve()) if own else None


def _emit(the_plan, source, emit, layouts) -> None:
    from tenk.plan.emit import choose_layouts, emit_scripts

    engine, out_dir = emit
    chosen = choose_layouts(the_plan, layouts or None)
    for lp in chosen:
        (path,) = emit_scripts(engine, the_plan, [lp], out_dir, _model_path_for(source, lp))
        console.print(f"wrote {path}")


def _autotune(the_plan, source, layouts, gpus, device, serve_extra, dummy: bool, opts) -> dict:
    import json

    import torch
    from rich.table import Table

    from tenk.errors import ConfigError
    from tenk.plan.autotune import AutotuneConfig, autotune, candidate_layouts, serve_command
    from tenk.plan.emit import choose_layouts
    from tenk.plan.launcher import TenkServeLauncher

    if not source.is_dir and not dummy:
        raise ConfigError("--autotune starts real servers, so MODEL must be a model directory, or a preset with "
                          "random weights (--serve-arg=--load-format --serve-arg=dummy)")
    use_cpu = device == "cpu" or not torch.cuda.is_available()
    gpu_ids = list(range(gpus)) if use_cpu else list(range(min(gpus, torch.cuda.device_count())))
    cfg = AutotuneConfig(gpu_ids=gpu_ids, **opts)
    chosen = choose_layouts(the_plan, layouts) if layouts else the_plan.fitting()
    candidates = candidate_layouts(chosen, len(gpu_ids), cfg.top_k)
    if not candidates:
        raise ConfigError(f"no planned layout fits on the {len(gpu_ids)} device(s) at hand")
    c = the_plan.config
    launcher = TenkServeLauncher(
        model=source.name, gpu_memory_utilization=c.gpu_memory_utilization, max_num_seqs=c.max_num_seqs,
        device="cpu" if use_cpu else "auto", extra_args=serve_extra, log_dir=Path(cfg.out_dir) / "logs",
        pass_quantization=dummy,
    )

    def event(kind, trial):
        lp = trial.layout
        if kind == "start":
            console.print(f"autotune: starting {lp.quantization} {lp.name} on {lp.gpus} {'CPU slot' if use_cpu else 'GPU'}(s)...")
        elif trial.error:
            console.print(f"autotune: {lp.name} [red]{trial.error}[/red]")
        else:
            console.print(f"autotune: {lp.name} peak {trial.peak_tok_s:,.0f} tok/s at c={trial.peak_concurrency}")

    result = autotune(candidates, launcher, cfg, on_event=event)
    t = Table(title="autotune: measured", title_justify="left", header_style="bold")
    for col in ("layout", "quant", "GPUs", "est tok/s", "measured peak tok/s", "at c", "levels", "error"):
        t.add_column(col)
    for trial in sorted(result.trials, key=lambda x: -x.peak_tok_s):
        lp = trial.layout
        t.add_row(lp.name, lp.quantization, str(lp.gpus), f"{lp.tok_s:,.0f}", f"{trial.peak_tok_s:,.0f}",
                  str(trial.peak_concurrency or ""), " ".join(f"{c}:{v:,.0f}" for c, v in trial.levels), trial.error or "",
                  style="bold green" if trial is result.best else None)
    _stdout().print(t)
    command = None
    if result.best is None:
        console.print("[red]autotune: no layout was measured successfully[/red]")
    else:
        best = result.best.layout
        command = serve_command(source.name, best, c.gpu_memory_utilization, c.max_num_seqs,
                                launcher.quantization_args(best) + serve_extra)
        console.print(f"best measured: {result.best.layout.name} ({result.best.peak_tok_s:,.0f} tok/s). Serve it with:")
        typer.echo(command)
    data = result.as_dict(command)
    path = Path(cfg.out_dir) / "autotune.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    console.print(f"wrote {path}")
    return data
