"""Where a plan's model comes from: a Hugging Face directory (config.json is enough; no weights
are read) or a preset name (`tenk.models.presets`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenk.errors import ConfigError
from tenk.models.config import ModelConfig
from tenk.models.presets import PRESETS, get_preset
from tenk.quant.formats import QuantConfig, detect_quant_config


@dataclass(slots=True)
class ModelSource:
    name: str  # what the user typed: a directory or a preset name
    hf_config: dict[str, Any]
    model_config: ModelConfig
    checkpoint_quant: QuantConfig | None  # what the checkpoint declares (None: unquantized or a preset)
    is_dir: bool
    cache: dict = field(default_factory=dict, repr=False)  # planner's per-model work (tensor specs, kinds)

    @property
    def label(self) -> str:
        return Path(self.name).name if self.is_dir else self.name


def load_model_source(name: str) -> ModelSource:
    path = Path(name)
    if path.is_dir():
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise ConfigError(f"{cfg_path} is missing: tenk plan needs the model's config.json")
        try:
            hf = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{cfg_path} is not valid JSON: {exc}") from None
        return ModelSource(name, hf, ModelConfig.from_dir(path), detect_quant_config(path), True)
    if name in PRESETS:
        hf = get_preset(name)
        return ModelSource(name, hf, ModelConfig.from_hf(hf), None, False)
    raise ConfigError(
        f"{name!r} is neither a model directory nor a preset (presets: {', '.join(PRESETS)})"
    )
