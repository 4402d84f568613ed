"""`tenk random-checkpoint PRESET DIR`: a Hugging Face checkpoint with random weights in a real
model's exact shapes, written tensor by tensor (a 60 GB model needs well under 1 GB of RAM)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import typer

from tenk.cli.common import console, user_errors
from tenk.errors import ConfigError


def register(app: typer.Typer) -> None:
    app.command("random-checkpoint")(random_checkpoint)


@user_errors
def random_checkpoint(
    preset: str = typer.Argument(
        ..., help="qwen3-30b-a3b, qwen3-235b-a22b, minimax-m2, mixtral-8x7b, llama-3-8b, tiny-moe, "
        "tiny-minimax, tiny-llama or tiny-qwen3."
    ),
    out_dir: Path = typer.Argument(..., help="Directory to write (created if missing)."),
    num_layers: Optional[int] = typer.Option(None, "--num-layers", help="Keep only the first N layers."),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16, fp16 or fp32."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same weights."),
    max_shard_size: str = typer.Option("5GB", "--max-shard-size", help="Largest safetensors file, e.g. 5GB, 500MB, 2GiB."),
    tokenizer_vocab: Optional[int] = typer.Option(
        None, "--tokenizer-vocab", help="Tokens in the generated tokenizer (default: the model's vocab_size)."
    ),
    quantization: str = typer.Option(
        "none", "--quantization", "-q",
        help="none, nvfp4 or fp8: write the targeted weights as `tenk quantize` would, with random codes and scales."),
    targets: str = typer.Option("experts", "--targets", help="With --quantization: experts or all-linear."),
    fp8_scheme: str = typer.Option("block", "--fp8-scheme", help="With fp8: block (128x128, as MiniMax-M2 ships) or tensor."),
    force: bool = typer.Option(False, "--force", help="Write into DIR even if it is not empty."),
) -> None:
    """Write a random checkpoint of PRESET into DIR: config.json, generation_config.json,
    tokenizer files and safetensors shards (with model.safetensors.index.json when sharded)."""
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    from tenk.models.checkpoint_writer import (checkpoint_nbytes, parse_size, resolve_dtype,
                                               resolve_tokenizer_vocab, write_random_checkpoint)
    from tenk.models.presets import get_preset
    from tenk.models.tokenizer_builder import build_tokenizer

    # Every check a user can fail comes before the first byte is written.
    cfg = get_preset(preset, num_layers)
    opts = None
    if quantization != "none":
        from tenk.quant.quantize import QuantizeOptions

        if quantization not in ("nvfp4", "fp8"):
            raise ConfigError(f"--quantization must be none, nvfp4 or fp8, got {quantization!r}")
        opts = QuantizeOptions(format=quantization, targets=targets,
                               fp8_scheme=fp8_scheme if quantization == "fp8" else "tensor")
    resolve_dtype(dtype)
    parse_size(max_shard_size)
    build_tokenizer(resolve_tokenizer_vocab(cfg, tokenizer_vocab))  # trains (or finds cached) now
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ConfigError(f"{out_dir} is not empty; choose another directory or pass --force to write into it")
    if opts is None:
        total = checkpoint_nbytes(cfg, dtype)
    else:
        from tenk.quant.random_weights import quantized_nbytes, write_random_quantized_checkpoint

        total = quantized_nbytes(cfg, opts, dtype)
    probe = out_dir if out_dir.is_dir() else next(p for p in out_dir.absolute().parents if p.is_dir())
    free = shutil.disk_usage(probe).free
    if free < total:
        raise ConfigError(
            f"{preset} needs {total / 1e9:.1f} GB but only {free / 1e9:.1f} GB is free at {probe}; "
            "use --num-layers to write fewer layers"
        )

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{preset} -> {out_dir}", total=total)
        kw = dict(dtype=dtype, seed=seed, max_shard_size=max_shard_size, tokenizer_vocab=tokenizer_vocab,
                  on_bytes=lambda n: progress.advance(task, n))
        if opts is None:
            written = write_random_checkpoint(cfg, out_dir, **kw)
        else:
            written = write_random_quantized_checkpoint(cfg, out_dir, opts, **kw)
    console.print(
        f"wrote {preset}{'' if opts is None else ' in ' + quantization.upper()}: {cfg['num_hidden_layers']} layers, "
        f"{_count(written.num_params)} stored values, "
        f"{_count(written.total_bytes)}B in {len(written.files)} file(s) to {out_dir}",
        highlight=False,
    )


def _count(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)
