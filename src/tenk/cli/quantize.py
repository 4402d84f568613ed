"""`tenk quantize SRC DST --format nvfp4|fp8`: write a ModelOpt-format checkpoint, streamed
tensor by tensor (see tenk.quant.quantize)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from tenk.cli.common import console, user_errors


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize)


@user_errors
def quantize(
    src: Path = typer.Argument(..., help="Hugging Face model directory (bf16/fp16/fp32 or FP8 safetensors)."),
    dst: Path = typer.Argument(..., help="Output directory (new or empty)."),
    format: str = typer.Option(..., "--format", "-f", help="nvfp4 or fp8."),
    targets: str = typer.Option(
        "experts", "--targets", help="experts: routed experts only; all-linear: every linear layer but lm_head."
    ),
    exclude: Optional[List[str]] = typer.Option(
        None, "--exclude", help="Keep modules matching this pattern in high precision (wildcards, e.g. "
        "'model.layers.0.*'); repeatable. lm_head, embeddings and routers are always kept."
    ),
    fp8_scheme: str = typer.Option(
        "tensor", "--fp8-scheme", help="FP8 scales: tensor (ModelOpt FP8) or block (128x128 weight_scale_inv, "
        "the MiniMax-M2 / DeepSeek layout)."
    ),
    calib: Optional[Path] = typer.Option(None, "--calib", help="JSONL prompts for activation scales (not implemented yet)."),
    max_shard_size: str = typer.Option("5GB", "--max-shard-size", help="Largest output safetensors file, e.g. 5GB, 2GiB."),
    device: str = typer.Option("cpu", "--device", help="Where the quantization math runs: cpu, cuda or auto (same result)."),
) -> None:
    """Quantize SRC into DST: weights, scales, hf_quant_config.json, config.json and the
    tokenizer files. Reads one tensor at a time, so RAM stays far below the model's size."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from tenk.models.checkpoint_writer import parse_size
    from tenk.quant.quantize import QuantizeOptions, quantize_checkpoint

    opts = QuantizeOptions(
        format=format.lower(),
        targets=targets,
        exclude=tuple(exclude or ()),
        fp8_scheme=fp8_scheme,
        max_shard_bytes=parse_size(max_shard_size),
        calib=calib,
        device=device,
    )
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"{src.name} -> {opts.format}", total=None)

        def on_progress(done: int, total: int, name: str) -> None:
            progress.update(task, completed=done, total=total)

        summary = quantize_checkpoint(src, dst, opts, on_progress=on_progress)
    console.print(
        f"wrote {dst}: {len(summary.quantized)} modules in {opts.format}, {len(summary.kept)} kept in high precision; "
        f"{_size(summary.bytes_in)} -> {_size(summary.bytes_out)} in {summary.seconds:.1f} s",
        highlight=False,
    )


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"
