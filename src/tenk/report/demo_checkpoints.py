"""The demo's checkpoints: a random BF16 MoE checkpoint and its NVFP4 copy (`tenk quantize`).
For presets whose weights the engine makes on the GPU (`--load-format dummy`), only config and
tokenizer are written: a real-size model could be neither stored nor written in minutes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def make_checkpoints(preset: str, load_format: str, models: Path) -> tuple[Path, Path]:
    """The BF16 checkpoint of model preset `preset` and its NVFP4 copy, in `models`
    (load_format "dummy": config and tokenizer only)."""
    from tenk.models.presets import get_preset

    cfg = get_preset(preset)
    bf16, nvfp4 = models / f"{preset}-bf16", models / f"{preset}-nvfp4"
    if load_format == "dummy":
        _write_config_only(cfg, bf16)
        _nvfp4_config_only(preset, cfg, bf16, nvfp4, models / ".one-layer")
    else:
        from tenk.models.checkpoint_writer import write_random_checkpoint
        from tenk.quant.quantize import QuantizeOptions, quantize_checkpoint

        write_random_checkpoint(cfg, bf16, dtype="bf16", seed=0)
        quantize_checkpoint(bf16, nvfp4, QuantizeOptions(format="nvfp4"))
    return bf16, nvfp4


def _write_config_only(cfg: dict, out: Path) -> None:
    from tenk.models.checkpoint_writer import config_json_text, resolve_tokenizer_vocab
    from tenk.models.tokenizer_builder import write_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config_json_text(dict(cfg, torch_dtype="bfloat16")))
    write_tokenizer(out, resolve_tokenizer_vocab(cfg, None), int(cfg.get("max_position_embeddings") or 4096))


def _nvfp4_config_only(preset: str, cfg: dict, bf16: Path, out: Path, scratch: Path) -> None:
    """An NVFP4 config for the full model: quantize a one-layer random copy (seconds, a few
    hundred MB) and give its quantization config to the full-size config."""
    from tenk.models.checkpoint_writer import write_random_checkpoint
    from tenk.models.presets import get_preset
    from tenk.quant.quantize import QuantizeOptions, quantize_checkpoint

    write_random_checkpoint(get_preset(preset, 1), scratch / "bf16", dtype="bf16")
    quantize_checkpoint(scratch / "bf16", scratch / "nvfp4", QuantizeOptions(format="nvfp4"))
    one = json.loads((scratch / "nvfp4" / "config.json").read_text())
    shutil.copytree(bf16, out)
    full = json.loads((bf16 / "config.json").read_text())
    full["quantization_config"] = one["quantization_config"]
    (out / "config.json").write_text(json.dumps(full, indent=2) + "\n")
    if (scratch / "nvfp4" / "hf_quant_config.json").exists():
        shutil.copy(scratch / "nvfp4" / "hf_quant_config.json", out / "hf_quant_config.json")
    shutil.rmtree(scratch, ignore_errors=True)
