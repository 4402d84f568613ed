"""Model directories for plan tests: a preset's config.json (no weights: the engine runs them
with load_format="dummy") and tenk's own tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def write_model_dir(path: Path, preset: str, num_layers: int | None = None, **overrides) -> str:
    from tenk.models.presets import get_preset
    from tenk.models.tokenizer_builder import write_tokenizer

    cfg = get_preset(preset, num_layers=num_layers)
    cfg.update(overrides)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))
    write_tokenizer(path, vocab_size=min(cfg["vocab_size"], 4096), model_max_length=cfg["max_position_embeddings"])
    return str(path)


@pytest.fixture(scope="session")
def tiny_moe_dir(tmp_path_factory) -> str:
    return write_model_dir(tmp_path_factory.mktemp("plan-tiny-moe"), "tiny-moe", max_position_embeddings=1024)
