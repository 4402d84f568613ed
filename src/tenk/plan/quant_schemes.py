"""Which storage format each weight gets under a planned quantization, and what it costs.

Byte costs per 2-D weight of [n, k] (the local shard under tensor parallelism):

    bf16 / fp16 / fp32   n*k * itemsize
    fp8 block 128x128    n*k + ceil(n/128) * ceil(k/128) * 4      (fp32 `weight_scale_inv`)
    fp8 per tensor       n*k + 4                                   (fp32 `weight_scale`)
    fp8 per channel      n*k + n * 4
    nvfp4                n*k/2 + n*k/16 + 4                        (packed E2M1, one E4M3 scale per
                                                                   16 values, fp32 global scale)

These are exactly the tensors `tenk quantize` writes (and the public checkpoints hold); optional
activation scales (`input_scale`, 4 bytes a module) are left out.

Schemes:
- bf16: everything in the model's dtype.
- fp8: block-128 FP8 on every linear layer (attention, experts, dense MLP) - the official
  MiniMax-M2 layout. Embeddings, lm_head, routers and norms stay bf16.
- fp8-tensor: the same modules with one scale per tensor.
- nvfp4: NVFP4 on routed experts only, the rest bf16 (the public MiniMax-M2.7 NVFP4 checkpoint).
- nvfp4-all: NVFP4 on every linear layer but lm_head and routers (`tenk quantize --targets all-linear`).
- auto: what the model directory's checkpoint declares (ModelOpt, compressed-tensors or HF FP8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tenk.errors import ConfigError
from tenk.quant.formats import FP8, NVFP4, QuantConfig
from tenk.quant.quantize import default_excluded, is_expert

NVFP4_GROUP = 16
FP8_BLOCK = 128

HP = "hp"  # high precision: the model dtype (or the tensor's own, e.g. an fp32 router bias)
F_NVFP4 = "nvfp4"
F_FP8_BLOCK = "fp8-block"
F_FP8_TENSOR = "fp8-tensor"
F_FP8_CHANNEL = "fp8-channel"

SCHEMES = ("bf16", "fp8", "fp8-tensor", "nvfp4", "nvfp4-all", "auto")


@dataclass(frozen=True, slots=True)
class QuantScheme:
    name: str
    weight_format: str | None  # format of the quantized modules; None: nothing quantized
    targets: str = "all-linear"  # "experts" | "all-linear"
    checkpoint: QuantConfig | None = None  # "auto": decide per module from the checkpoint's config

    def format_of(self, module: str, shape: tuple[int, ...]) -> str:
        """Storage format of `module`'s weight (a checkpoint module name, `...experts.3.w1`)."""
        if self.weight_format is None or len(shape) != 2 or default_excluded(module):
            return HP
        if self.checkpoint is not None:
            if not self.checkpoint.is_quantized(module):
                return HP
        elif self.targets == "experts" and not is_expert(module):
            return HP
        if self.weight_format == F_NVFP4 and shape[1] % NVFP4_GROUP:
            return HP  # tenk quantize keeps such layers in high precision
        return self.weight_format


def make_scheme(name: str, checkpoint: QuantConfig | None = None) -> QuantScheme:
    if name == "bf16":
        return QuantScheme("bf16", None)
    if name == "fp8":
        return QuantScheme("fp8", F_FP8_BLOCK)
    if name == "fp8-tensor":
        return QuantScheme("fp8-tensor", F_FP8_TENSOR)
    if name == "nvfp4":
        return QuantScheme("nvfp4", F_NVFP4, targets="experts")
    if name == "nvfp4-all":
        return QuantScheme("nvfp4-all", F_NVFP4)
    if name == "auto":
        if checkpoint is None:
            return QuantScheme("auto (bf16)", None)
        if checkpoint.format == NVFP4:
            fmt = F_NVFP4
        elif checkpoint.format == FP8:
            fmt = {"block": F_FP8_BLOCK, "tensor": F_FP8_TENSOR, "channel": F_FP8_CHANNEL}[checkpoint.fp8_scheme or "tensor"]
            if fmt == F_FP8_BLOCK and tuple(checkpoint.weight_block_size or (FP8_BLOCK, FP8_BLOCK)) != (FP8_BLOCK, FP8_BLOCK):
                raise ConfigError(f"FP8 block size {checkpoint.weight_block_size} is not planned (only 128x128)")
        else:  # pragma: no cover - QuantConfig validates its format
            raise ConfigError(f"cannot plan checkpoint format {checkpoint.format!r}")
        return QuantScheme(f"auto ({checkpoint.name})", fmt, checkpoint=checkpoint)
    raise ConfigError(f"unknown quantization {name!r} (choose from {', '.join(SCHEMES)})")


def quantized_bytes(fmt: str, n: int, k: int) -> int:
    """Bytes of one [n, k] weight stored as `fmt` (HP is handled by the caller)."""
    if fmt == F_NVFP4:
        return n * k // 2 + n * (k // NVFP4_GROUP) + 4
    if fmt == F_FP8_BLOCK:
        return n * k + math.ceil(n / FP8_BLOCK) * math.ceil(k / FP8_BLOCK) * 4
    if fmt == F_FP8_TENSOR:
        return n * k + 4
    if fmt == F_FP8_CHANNEL:
        return n * k + n * 4
    raise ValueError(f"not a quantized format: {fmt!r}")


def shard_alignment(fmt: str) -> int:
    """A sharded dimension of a weight in `fmt` must be a multiple of this under TP > 1: block
    FP8 scales cover 128x128 tiles (vLLM refuses MiniMax-M2 at TP=8 for that reason: 1536/8 =
    192), NVFP4 scales cover 16 values along K."""
    return {F_FP8_BLOCK: FP8_BLOCK, F_NVFP4: NVFP4_GROUP}.get(fmt, 1)
