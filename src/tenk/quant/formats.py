"""Which quantized format a checkpoint is in, and which of its modules are quantized.

Three on-disk families are read (DESIGN.md, "Quantized formats"):

- ModelOpt (`hf_quant_config.json`, or config.json `quantization_config.quant_method ==
  "modelopt"`): `quant_algo` NVFP4 / W4A16_NVFP4 (group 16), FP8 (per tensor), FP8_PB_WO
  (block 128), FP8_PER_CHANNEL_PER_TOKEN; `exclude_modules` (or `ignore`) lists wildcards of
  modules left in high precision.
- compressed-tensors (`quant_method == "compressed-tensors"`) with format
  `nvfp4-pack-quantized`: `config_groups[*].targets` (class names like "Linear" or "re:" regexes)
  and `ignore`.
- HF / DeepSeek FP8 (`quant_method == "fp8"`): `weight_block_size` [128, 128] (the official
  MiniMax-M2 layout, scales named `weight_scale_inv`) or per-tensor; `modules_to_not_convert`
  / `ignored_layers`.

All of them are read into one in-memory convention, ModelOpt's (see tenk.quant.convert).
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenk.errors import ConfigError

NVFP4 = "nvfp4"
FP8 = "fp8"

MODELOPT = "modelopt"
COMPRESSED_TENSORS = "compressed-tensors"
HF_FP8 = "hf-fp8"

_MODELOPT_ALGOS = {
    "NVFP4": (NVFP4, None),
    "W4A16_NVFP4": (NVFP4, None),
    "FP8": (FP8, "tensor"),
    "FP8_PB_WO": (FP8, "block"),
    "FP8_PER_CHANNEL_PER_TOKEN": (FP8, "channel"),
}

# Fused layers tenk builds from several checkpoint modules: a fused prefix is quantized when its
# shards are (they must agree: one layer has one format).
FUSED_SHARDS: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
    "w13": ("w1", "w3"),
}


@dataclass(slots=True, frozen=True)
class QuantConfig:
    format: str  # NVFP4 | FP8: what the weights are
    checkpoint_format: str  # MODELOPT | COMPRESSED_TENSORS | HF_FP8: how they are named and scaled on disk
    group_size: int | None = None  # NVFP4 values per E4M3 block scale (16)
    fp8_scheme: str | None = None  # FP8 scale granularity: "tensor" | "channel" | "block"
    weight_block_size: tuple[int, int] | None = None  # FP8 block [N, K] (128, 128) when fp8_scheme == "block"
    exclude: tuple[str, ...] = ()  # modules kept in high precision (ModelOpt wildcards / CT names or "re:")
    targets: tuple[str, ...] = ()  # compressed-tensors targets; () = every linear layer
    quant_algo: str | None = None  # ModelOpt's algorithm name, as written
    kv_cache_quant_algo: str | None = None
    static_input_scales: bool = False  # True when the checkpoint is meant to carry activation scales
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.format not in (NVFP4, FP8):
            raise ConfigError(f"unknown quantized format {self.format!r} (tenk knows nvfp4 and fp8)")
        if self.format == NVFP4 and self.group_size != 16:
            raise ConfigError(f"NVFP4 needs group_size 16, the checkpoint says {self.group_size}")
        if self.format == FP8 and self.fp8_scheme not in ("tensor", "channel", "block"):
            raise ConfigError(f"unknown FP8 scale scheme {self.fp8_scheme!r}")

    @property
    def name(self) -> str:
        """Short label for logs: 'nvfp4 (modelopt)', 'fp8 block 128x128 (hf-fp8)'."""
        if self.format == FP8 and self.fp8_scheme == "block":
            bn, bk = self.weight_block_size or (128, 128)
            return f"fp8 block {bn}x{bk} ({self.checkpoint_format})"
        if self.format == FP8:
            return f"fp8 per-{self.fp8_scheme} ({self.checkpoint_format})"
        return f"nvfp4 ({self.checkpoint_format})"

    def is_quantized(self, module_name: str) -> bool:
        """Is the linear or expert module `module_name` (a checkpoint name, e.g.
        `model.layers.0.self_attn.q_proj`, or a tenk fused name like `...qkv_proj`) stored in
        this format? Router gates, norms and embeddings are never asked about."""
        tail = module_name.rsplit(".", 1)[-1]
        if tail in FUSED_SHARDS:
            base = module_name[: -len(tail)]
            answers = {self.is_quantized(base + shard) for shard in FUSED_SHARDS[tail]}
            if len(answers) > 1:
                raise ConfigError(
                    f"{module_name}: the checkpoint quantizes some of {', '.join(FUSED_SHARDS[tail])} "
                    "but not the others; tenk fuses them into one layer, which needs one format"
                )
            return answers.pop()
        return not self._excluded(module_name) and self._targeted(module_name)

    def is_quantized_any(self, aliases: list[str]) -> bool:
        """For a layer whose checkpoint name has several spellings (tenk's `mlp.experts` is
        `mlp.experts.N.gate_proj` in one family and `block_sparse_moe.experts.N.w1` in another):
        quantized when no spelling is excluded and some spelling is targeted."""
        return not any(self._excluded(a) for a in aliases) and any(self._targeted(a) for a in aliases)

    def _excluded(self, name: str) -> bool:
        if self.checkpoint_format == COMPRESSED_TENSORS:
            return any(_ct_match(name, p) for p in self.exclude)
        if self.checkpoint_format == HF_FP8:
            return any(_hf_match(name, p) for p in self.exclude)
        return any(module_matches(name, p) for p in self.exclude)

    def _targeted(self, name: str) -> bool:
        return not self.targets or any(_ct_match(name, t) for t in self.targets)


def module_matches(name: str, pattern: str) -> bool:
    """ModelOpt-style exclusion: exact name, fnmatch wildcard, "re:" regex, or a parent module
    (`model.layers.0.self_attn` covers `model.layers.0.self_attn.q_proj`)."""
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    if name == pattern or name.startswith(pattern + "."):
        return True
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return False


def _hf_match(name: str, pattern: str) -> bool:
    """transformers' `modules_to_not_convert` rule: a regex matched from the start up to a
    module boundary, or a plain suffix ("gate" covers `model.layers.0.block_sparse_moe.gate`)."""
    try:
        if re.match(rf"(?:{pattern})(?:(?<=\.)|(?=\.|$))", name):
            return True
    except re.error:
        pass
    return name.endswith(pattern)


def _ct_match(name: str, target: str) -> bool:
    """compressed-tensors matching: "re:" regex (re.match), exact name, or a class name. Tenk only
    asks about linear layers, so the class target "Linear" (and its subclasses' names) matches;
    other class names don't."""
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    if target in ("Linear", "LinearBase"):
        return True
    return target == name


def parse_quant_config(cfg: dict[str, Any] | None) -> QuantConfig | None:
    """A config.json `quantization_config` or the contents of `hf_quant_config.json` ->
    QuantConfig; None when the checkpoint is not quantized."""
    if not cfg:
        return None
    if not isinstance(cfg, dict):
        raise ConfigError(f"quantization_config must be a JSON object, got {type(cfg).__name__}")
    method = str(cfg.get("quant_method", "")).lower()
    if "quantization" in cfg and isinstance(cfg["quantization"], dict) and (not method or method.startswith("modelopt")):
        return _parse_modelopt(cfg["quantization"], exclude_key="exclude_modules", raw=cfg)
    if method.startswith("modelopt"):
        return _parse_modelopt(cfg, exclude_key="ignore", raw=cfg)
    if method == "compressed-tensors":
        return _parse_compressed_tensors(cfg)
    if method == "fp8":
        return _parse_hf_fp8(cfg)
    raise ConfigError(
        f"quantization method {cfg.get('quant_method')!r} is not supported "
        "(tenk reads ModelOpt NVFP4/FP8, compressed-tensors nvfp4-pack-quantized and fp8)"
    )


def _parse_modelopt(q: dict[str, Any], exclude_key: str, raw: dict[str, Any]) -> QuantConfig:
    algo = str(q.get("quant_algo") or "").upper()
    if algo not in _MODELOPT_ALGOS:
        raise ConfigError(
            f"ModelOpt quant_algo {q.get('quant_algo')!r} is not supported "
            f"(tenk reads {', '.join(sorted(_MODELOPT_ALGOS))})"
        )
    fmt, scheme = _MODELOPT_ALGOS[algo]
    exclude = q.get(exclude_key)
    if exclude is None:  # config.json written by newer ModelOpt keeps both spellings around
        exclude = q.get("exclude_modules", q.get("ignore", []))
    if not isinstance(exclude, list):
        raise ConfigError(f"ModelOpt {exclude_key} must be a list of module patterns")
    group = q.get("group_size")
    if fmt == NVFP4:
        group = int(group) if group is not None else 16
    kv = q.get("kv_cache_quant_algo")
    if kv is None and isinstance(q.get("kv_cache_scheme"), str):
        kv = q["kv_cache_scheme"]
    return QuantConfig(
        format=fmt,
        checkpoint_format=MODELOPT,
        group_size=group if fmt == NVFP4 else None,
        fp8_scheme=scheme,
        weight_block_size=(128, 128) if scheme == "block" else None,
        exclude=tuple(str(e) for e in exclude),
        quant_algo=algo,
        kv_cache_quant_algo=str(kv).upper() if kv else None,
        static_input_scales=algo in ("NVFP4", "FP8"),
        raw=raw,
    )


def _parse_compressed_tensors(cfg: dict[str, Any]) -> QuantConfig:
    groups = cfg.get("config_groups") or {}
    formats = {g.get("format") for g in groups.values() if isinstance(g, dict)} | {cfg.get("format")}
    formats.discard(None)
    if formats != {"nvfp4-pack-quantized"}:
        raise ConfigError(
            f"compressed-tensors format {sorted(formats) or cfg.get('format')!r} is not supported "
            "(tenk reads nvfp4-pack-quantized)"
        )
    targets: list[str] = []
    static_inputs = False
    for g in groups.values():
        w = g.get("weights") or {}
        if w.get("num_bits") != 4 or w.get("type") != "float" or w.get("group_size") != 16:
            raise ConfigError(f"compressed-tensors NVFP4 group has unexpected weight args {w}")
        if not w.get("symmetric", True):
            raise ConfigError("asymmetric (zero-point) NVFP4 is not supported")
        targets += list(g.get("targets") or [])
        act = g.get("input_activations") or {}
        static_inputs |= bool(act) and act.get("dynamic") is not True
    return QuantConfig(
        format=NVFP4,
        checkpoint_format=COMPRESSED_TENSORS,
        group_size=16,
        exclude=tuple(cfg.get("ignore") or ()),
        targets=tuple(targets),
        static_input_scales=static_inputs,
        raw=cfg,
    )


def _parse_hf_fp8(cfg: dict[str, Any]) -> QuantConfig:
    fmt = cfg.get("fmt", "e4m3")
    if "e4m3" not in str(fmt):
        raise ConfigError(f"FP8 format {fmt!r} is not supported (tenk reads E4M3)")
    block = cfg.get("weight_block_size")
    if block is not None:
        if len(block) != 2:
            raise ConfigError(f"weight_block_size must be [N, K], got {block}")
        block = (int(block[0]), int(block[1]))
    exclude = list(cfg.get("modules_to_not_convert") or []) + list(cfg.get("ignored_layers") or [])
    return QuantConfig(
        format=FP8,
        checkpoint_format=HF_FP8,
        fp8_scheme="block" if block else "tensor",
        weight_block_size=block,
        exclude=tuple(exclude),
        static_input_scales=cfg.get("activation_scheme") == "static",
        raw=cfg,
    )


def detect_quant_config(model_dir: str | Path) -> QuantConfig | None:
    """Read a model directory's quantization: ModelOpt's `hf_quant_config.json` when present
    (the file ModelOpt itself treats as the source of truth), else config.json's
    `quantization_config`; None for an unquantized checkpoint."""
    model_dir = Path(model_dir)
    hf_quant = model_dir / "hf_quant_config.json"
    if hf_quant.is_file():
        return parse_quant_config(_read_json(hf_quant))
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"{cfg_path} is missing: a model directory needs a config.json")
    return parse_quant_config(_read_json(cfg_path).get("quantization_config"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
