"""`tenk demo`: random MoE checkpoint -> NVFP4 copy -> serve -> sweep -> report, on this machine,
with nothing downloaded (see tenk.report.demo for what is compared and why)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tenk.cli.common import console, user_errors


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


@user_errors
def demo(
    out: Path = typer.Option(Path("tenk-demo"), "--out", "-o", help="Folder for checkpoints, results and the report."),
    preset: str = typer.Option("tiny-moe", "--preset", help="tiny-moe (CPU, about a minute) or qwen3-30b-a3b (a "
                               "CUDA GPU; real shapes, random weights made on the GPU: --load-format dummy)."),
    concurrency: Optional[str] = typer.Option(None, "--concurrency", "-c", help="Override the sweep, e.g. 1,8,64."),
    input_len: Optional[int] = typer.Option(None, "--input-len", help="Prompt tokens per request."),
    output_len: Optional[int] = typer.Option(None, "--output-len", help="Generated tokens per request."),
    num_prompts: Optional[int] = typer.Option(None, "--num-prompts", help="Requests per concurrency level."),
) -> None:  # fmt: skip
    """Make a random MoE checkpoint and an NVFP4 copy, serve BF16 and NVFP4 with one replica and the
    better one with two (DP=2), sweep concurrency levels, and write a report with charts. Prints
    where the report is."""
    import time

    from tenk.bench.config import parse_concurrency
    from tenk.report.demo import run_demo

    t0 = time.perf_counter()
    levels = parse_concurrency(concurrency) if concurrency else None
    if levels is not None and (not levels or min(levels) < 1):
        from tenk.errors import ConfigError

        raise ConfigError("--concurrency needs positive integers, e.g. 1,8,64")
    res = run_demo(preset, out, lambda s: console.print(s, highlight=False), concurrency=levels,
                   input_len=input_len, output_len=output_len, num_prompts=num_prompts)  # fmt: skip
    for note in res.notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in res.timings.items())
    console.print(f"done in {time.perf_counter() - t0:.1f} s ({steps})", highlight=False)
    # soft_wrap: the path stays on one line, whatever the terminal width, so it can be copied
    console.print(f"[bold]report:[/bold] {res.report_html.resolve()}", highlight=False, soft_wrap=True)
