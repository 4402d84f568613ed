"""The plan as a rich table (ranked, non-fitting layouts last with the reason) and as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tenk.plan.planner import Plan
from tenk.plan.units import GIB, gib, tokens


def plan_table(plan: Plan) -> Table:
    """The layouts that fit, best first. (Those that do not are listed by `not_fitting_lines`.)"""
    c = plan.config
    title = (f"tenk plan: {plan.model} on {c.gpus} x {c.gpu.memory_bytes / GIB:.1f} GiB "
             f"({c.gpu.hbm_bandwidth / 1e12:.2f} TB/s, {c.gpu.peak_flops / 1e12:.0f} TFLOP/s, {c.gpu.interconnect}), "
             f"utilization {c.gpu_memory_utilization:g}, context {c.context_len}, max_num_seqs {c.max_num_seqs}"
             f"{', KV cache fp8' if c.kv_cache_dtype != 'auto' else ''}")
    t = Table(title=title, title_justify="left", header_style="bold")
    for name in ("#", "quant", "layout", "GPUs", "weights/GPU", "runtime/GPU", "KV/GPU", "KV tokens/replica",
                 "KV tokens", "seqs@ctx", "est tok/s", "tok/s @1", "bound"):
        t.add_column(name, justify="left" if name in ("quant", "layout", "bound") else "right")
    for rank, lp in enumerate(plan.fitting(), 1):
        m = lp.memory
        t.add_row(
            str(rank), lp.quantization, lp.name, str(lp.gpus), gib(lp.weights.total),
            gib(m.used_before_kv - m.weights), gib(m.kv_bytes), tokens(lp.kv_tokens_per_replica),
            tokens(lp.kv_tokens_total), str(lp.seqs_at_context * lp.dp), f"{lp.tok_s:,.0f}",
            f"{lp.single_stream_tok_s:,.0f}", lp.step.bound,
            style="bold green" if rank == 1 else None,
        )
    return t


def not_fitting_lines(plan: Plan) -> list[str]:
    return [f"{lp.quantization} {lp.name}: {lp.reason}" for lp in plan.layouts if not lp.fits]


def notes_lines(plan: Plan) -> list[str]:
    out = []
    for q, n in plan.checkpoint_bytes.items():
        out.append(f"checkpoint {q}: {n / 1e9:.1f} GB ({gib(n)})")
    for lp in plan.fitting():
        for note in lp.notes:
            out.append(f"{lp.quantization} {lp.name}: {note}")
    return out


def print_plan(plan: Plan, console: Console | None = None) -> None:
    console = console or Console()
    if plan.fitting():
        console.print(plan_table(plan))
        console.print("  runtime = activation peak + CUDA context + RoPE tables; tok/s: decode roofline "
                      "(memory, compute, all-reduce), an upper bound to rank by", highlight=False)
    for line in not_fitting_lines(plan):
        console.print(f"  [dim]{line}[/dim]", highlight=False)
    for line in notes_lines(plan):
        console.print(f"  {line}", highlight=False)
    if plan.best() is None:
        console.print("[red]no layout fits[/red]: use more GPUs, a smaller quantization or a higher --gpu-memory-utilization")


def write_json(plan: Plan, path: str | Path, extra: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = plan.as_dict()
    if extra:
        data.update(extra)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
