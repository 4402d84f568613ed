"""Where a model comes from: a Hugging Face directory, or a preset name (with
`load_format="dummy"`), which is materialised as a weightless directory (config.json,
generation_config.json, tokenizer) so every later stage reads a directory the same way."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tenk.errors import ConfigError


TOKENIZER_STAMP = ".tenk-tokenizer"


def preset_cache_root() -> Path:
    return Path(os.environ.get("TENK_CACHE_DIR", Path.home() / ".cache" / "tenk")) / "presets"


def materialize_preset(name: str, num_layers: int | None = None, root: str | Path | None = None) -> Path:
    """Write (once) a weightless model directory for a preset; returns its path."""
    from tenk.models.checkpoint_writer import _generation_config, config_json_text, resolve_tokenizer_vocab
    from tenk.models.presets import get_preset
    from tenk.models.tokenizer_builder import tokenizer_key, write_tokenizer

    cfg = get_preset(name, num_layers)
    out = Path(root or preset_cache_root()) / (name if num_layers is None else f"{name}-{num_layers}l")
    cfg_text = config_json_text(cfg)
    vocab = resolve_tokenizer_vocab(cfg, None)
    stamp = out / TOKENIZER_STAMP  # which tokenizer build the directory holds: a newer tenk rewrites it
    if ((out / "config.json").is_file() and (out / "config.json").read_text() == cfg_text
            and stamp.is_file() and stamp.read_text() == tokenizer_key(vocab)):  # fmt: skip
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").unlink(missing_ok=True)  # incomplete until it is written again, last
    write_tokenizer(out, vocab, int(cfg.get("max_position_embeddings") or 4096))
    stamp.write_text(tokenizer_key(vocab))
    (out / "generation_config.json").write_text(json.dumps(_generation_config(cfg), indent=2) + "\n")
    (out / "config.json").write_text(cfg_text)  # last: its presence marks a complete directory
    return out


def resolve_model_dir(model: str, load_format: str = "auto") -> Path:
    """A directory as given, or a preset materialised when weights are to be made up."""
    path = Path(model)
    if path.is_dir():
        return path
    from tenk.models.presets import PRESETS

    if model in PRESETS:
        if load_format != "dummy":
            raise ConfigError(f"{model!r} is a preset, which has no weights: add --load-format dummy (random weights)")
        return materialize_preset(model)
    raise ConfigError(
        f"model {model!r} is neither a directory nor a preset (presets, with --load-format dummy: {', '.join(PRESETS)})"
    )
