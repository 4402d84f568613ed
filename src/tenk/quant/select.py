"""Which format an engine runs: the checkpoint's own (`quantization="auto"`), or, for random
weights (`load_format="dummy"`), the format named, laid out as the public releases are:
  nvfp4     routed experts in NVFP4, everything else bf16 (the MiniMax-M2.7 NVFP4 release)
  nvfp4-all every linear layer but lm_head and routers in NVFP4
  fp8       every linear layer but lm_head and routers in block-128 FP8 (the official MiniMax-M2)
A real checkpoint is never converted at load time: asking for another format than the one it
holds is an error that points to `tenk quantize`."""

from __future__ import annotations

from tenk.errors import ConfigError
from tenk.quant.formats import QuantConfig, parse_quant_config

CHOICES = ("auto", "none", "nvfp4", "nvfp4-all", "fp8")

_DENSE = ["*self_attn*", "*.mlp.gate_proj", "*.mlp.up_proj", "*.mlp.down_proj"]


def _block128_fits(model_config) -> bool:
    if model_config is None:
        return True
    dims = [model_config.hidden_size, model_config.q_size, model_config.kv_size,
            model_config.moe_intermediate_size or 128, model_config.intermediate_size or 128]
    return all(d % 128 == 0 for d in dims)


def synthetic_quant_config(name: str, model_config=None) -> QuantConfig | None:
    """`model_config` lets fp8 fall back to per-tensor scales for shapes (tiny test models)
    that 128x128 blocks do not tile."""
    if name == "none":
        return None
    if name in ("nvfp4", "nvfp4-all"):
        exclude = ["lm_head"] + (_DENSE if name == "nvfp4" else [])
        return parse_quant_config(
            {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16, "exclude_modules": exclude}
        )
    if name == "fp8" and not _block128_fits(model_config):
        return parse_quant_config({"quant_method": "modelopt", "quant_algo": "FP8", "exclude_modules": ["lm_head"]})
    if name == "fp8":
        return parse_quant_config(
            {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
             "weight_block_size": [128, 128], "modules_to_not_convert": ["lm_head"]}
        )
    raise ConfigError(f"quantization {name!r} is not one of {', '.join(CHOICES)}")


def resolve_quantization(
    name: str | None, checkpoint_quant: dict | None, load_format: str, model_config=None
) -> QuantConfig | None:
    name = (name or "auto").lower()
    if name not in CHOICES:
        raise ConfigError(f"quantization {name!r} is not one of {', '.join(CHOICES)}")
    declared = parse_quant_config(checkpoint_quant)
    if name == "auto":
        return declared
    if load_format == "dummy":
        return synthetic_quant_config(name, model_config)
    wanted = synthetic_quant_config(name)
    have = declared.format if declared else "none"
    want = wanted.format if wanted else "none"
    if have.lower() != want.lower():
        raise ConfigError(
            f"the checkpoint holds {declared.name if declared else 'unquantized'} weights, not {name}: "
            f"convert it with `tenk quantize SRC DST --format {name.split('-')[0]}` or use --quantization auto"
        )
    return declared
