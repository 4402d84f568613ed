"""NVFP4: 4-bit E2M1 values, one E4M3 scale per 16 values along K, one FP32 scale per tensor.

In-memory convention is ModelOpt's (what `hf_quant_config.json` checkpoints store):

    weight          uint8            [N, K/2]   two E2M1 codes per byte, low nibble = even k
    weight_scale    float8_e4m3fn    [N, K/16]  block scale
    weight_scale_2  float32          []         global scale, a multiplier: amax / (6 * 448)

    w[n, k] = E2M1[code[n, k]] * weight_scale[n, k // 16] * weight_scale_2

A code is 4 bits: bit 3 is the sign, bits 0-2 index {0, .5, 1, 1.5, 2, 3, 4, 6}.

Error bound (derived here, tested in tests/quant/test_nvfp4.py). Let S = s * g be the effective
scale of a block (s its E4M3 block scale, g the global scale) and y = |w| / S. Codes are the
nearest E2M1 value to y, ties to the even code, saturating at 6, so per element

    |w - deq(w)| <= S * half_step(y)           when y <= 6
    half_step(y) = 0.25 (y <= 2), 0.5 (2 < y <= 4), 1.0 (4 < y <= 6)

y can exceed 6 only because the block scale was rounded down to E4M3: the exact block scale is
s* = block_amax / 6 / g and E4M3 (3 mantissa bits) rounds a normal number by at most 2^-4 of
itself, so S >= (1 - 2^-4) * block_amax / 6 and y <= 6 / (1 - 2^-4) = 6.4; the saturation error
(y - 6) * S <= 0.4 * S is then inside the top interval's half step. So for blocks whose scale is a
normal E4M3 number (s >= 2^-6) the bound is S * half_step(min(y, 6)) <= S <= (17/16) * block_amax / 6.
Blocks whose exact scale falls in E4M3's subnormal range (s* < 2^-6, i.e. block_amax below
~2^-6/448 of the tensor's amax) are rounded with an absolute error up to 2^-10 * g, which can be
a large relative error; `nvfp4_error_bound` adds the exact saturation term (y - 6) * S for them
(and a block whose scale rounds to 0 dequantizes to 0: error |w| <= block_amax, itself at most
2^-10 * 6 * g, i.e. about 2e-6 of the tensor's amax).
"""

from __future__ import annotations

import functools

import torch

GROUP_SIZE = 16
E2M1_MAX = 6.0
E4M3_MAX = 448.0

# code -> value; codes 8..15 are the negatives (code 8 is -0.0, it dequantizes to 0).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
# Midpoints between neighbouring magnitudes; a magnitude equal to a midpoint rounds to the even code.
_E2M1_BOUNDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_ODD_TIE_BOUNDS = (0.75, 1.75, 3.5)  # ties here go up to the even code (2, 4, 6); the others go down


def e2m1_table(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The code -> value table on `device`, made once: under CUDA graph capture (the reference
    MoE path runs there for shapes the Triton kernel does not tile) a new host->device copy is
    not allowed, so the table the eager warm-up made is reused. Read-only."""
    return _e2m1_table(str(torch.device(device)), dtype)


@functools.lru_cache(maxsize=None)
def _e2m1_table(device: str, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(E2M1_VALUES, dtype=dtype, device=device)


def pack_nvfp4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes [..., K] (values 0..15) -> uint8 [..., K/2], low nibble = even element."""
    if codes.dtype != torch.uint8:
        raise TypeError(f"pack_nvfp4 needs uint8 codes, got {codes.dtype}")
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_nvfp4 needs an even last dimension, got {tuple(codes.shape)}")
    return (codes[..., 0::2] & 0x0F) | ((codes[..., 1::2] & 0x0F) << 4)


def unpack_nvfp4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., K/2] -> uint8 codes [..., K]."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_nvfp4 needs uint8, got {packed.dtype}")
    out = torch.stack((packed & 0x0F, packed >> 4), dim=-1)  # [..., K/2, 2]
    return out.reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def e2m1_to_float(codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return e2m1_table(codes.device, dtype)[codes.long()]


def float_to_e2m1(y: torch.Tensor) -> torch.Tensor:
    """Round (already scaled) values to the nearest E2M1 code, ties to the even code, |y| > 6
    saturating to 6. Same rule as ModelOpt's `_cast_fp4` and compressed-tensors' `cast_to_fp4`."""
    y = y.float()
    mag = y.abs()
    bounds = torch.tensor(_E2M1_BOUNDS, device=y.device)
    idx = torch.searchsorted(bounds, mag.contiguous(), out_int32=True).to(torch.uint8)  # bounds below mag
    for b in _ODD_TIE_BOUNDS:
        idx += (mag == b).to(torch.uint8)
    return idx | (torch.signbit(y).to(torch.uint8) << 3)


def global_scale_from_amax(amax: torch.Tensor | float) -> torch.Tensor:
    """ModelOpt's weight_scale_2 = amax / (6 * 448), in fp32. An all-zero tensor gets 1.0 (any
    positive value works: every block scale and code is then 0)."""
    amax = torch.as_tensor(amax, dtype=torch.float32)
    return torch.where(amax > 0, amax / exact_divisor(E2M1_MAX * E4M3_MAX, amax), torch.ones_like(amax))


def exact_divisor(value: float, like: torch.Tensor) -> torch.Tensor:
    """A Python number as a 0-d tensor on `like`'s device. CUDA divides by a Python scalar as a
    multiply by its reciprocal (not IEEE division); a tensor divisor keeps GPU and CPU results
    bit-identical."""
    return torch.tensor(value, dtype=torch.float32, device=like.device)


def block_scales(w: torch.Tensor, global_scale: torch.Tensor, group_size: int = GROUP_SIZE) -> torch.Tensor:
    """E4M3 block scales [N, K/group] = e4m3(block_amax / 6 / global_scale); zero blocks get 1.0
    (as ModelOpt does), so no code divides by zero."""
    n, k = w.shape
    block_amax = w.float().abs().reshape(n, k // group_size, group_size).amax(dim=-1)
    s = block_amax / (E2M1_MAX * global_scale)
    s = torch.where(s == 0, torch.ones_like(s), s).clamp(max=E4M3_MAX)
    return s.to(torch.float8_e4m3fn)


def quantize_nvfp4(
    w: torch.Tensor,
    global_scale: torch.Tensor | float | None = None,
    group_size: int = GROUP_SIZE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [N, K] float -> (packed uint8 [N, K/2], block_scale e4m3 [N, K/16], global_scale fp32 []).

    global_scale defaults to ModelOpt's amax / (6 * 448); pass one to share it between tensors.
    Codes are computed against the rounded E4M3 block scale, so they are what a reader sees."""
    if w.ndim != 2:
        raise ValueError(f"quantize_nvfp4 takes a 2-D weight, got shape {tuple(w.shape)}")
    n, k = w.shape
    if k % group_size:
        raise ValueError(f"NVFP4 needs K divisible by {group_size}, got K={k}")
    w = w.float()
    if not torch.isfinite(w).all():
        raise ValueError("the weight holds inf or NaN values; NVFP4 cannot represent them")
    if global_scale is None:
        global_scale = global_scale_from_amax(w.abs().amax())
    global_scale = torch.as_tensor(global_scale, dtype=torch.float32).reshape(())
    scale = block_scales(w, global_scale, group_size)
    eff = (scale.float() * global_scale).reshape(n, k // group_size, 1)  # [N, K/16, 1]
    # A block whose scale rounded to 0 in E4M3 dequantizes to 0 whatever its codes: make them 0.
    y = torch.where(eff > 0, w.reshape(n, k // group_size, group_size) / eff, 0.0).reshape(n, k)
    return pack_nvfp4(float_to_e2m1(y)), scale, global_scale


def dequantize_nvfp4(
    packed: torch.Tensor,
    block_scale: torch.Tensor,
    global_scale: torch.Tensor | float,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(packed [..., N, K/2], block_scale [..., N, K/16], global_scale [...] or scalar) -> w [..., N, K].

    code * block_scale is exact in fp32 (2 x 4 significant bits), so the result is the format's
    value rounded once: the same number a kernel gets from an exact bf16 dequant, an fp32
    accumulator and the global scale applied at the end."""
    codes = unpack_nvfp4(packed)
    k = codes.shape[-1]
    group = k // block_scale.shape[-1]
    vals = e2m1_to_float(codes).unflatten(-1, (block_scale.shape[-1], group))  # [..., N, K/g, g]
    gs = torch.as_tensor(global_scale, dtype=torch.float32, device=packed.device)
    gs = gs.reshape(*gs.shape, *([1] * (vals.ndim - gs.ndim)))  # [...] -> [..., 1, 1, 1]
    out = vals * block_scale.float().unsqueeze(-1) * gs
    return out.flatten(-2).to(dtype)


def nvfp4_error_bound(
    w: torch.Tensor, block_scale: torch.Tensor, global_scale: torch.Tensor | float
) -> torch.Tensor:
    """Per-element bound on |w - dequantize(quantize(w))| (see the module docstring): half the
    E2M1 step at |w| / S times S, or the saturation error when the E4M3 block scale rounded down
    past the block's amax, plus fp32 slack for the scaling arithmetic."""
    n, k = w.shape
    g = block_scale.shape[-1]
    w = w.float().reshape(n, g, k // g)
    eff = (block_scale.float() * torch.as_tensor(global_scale, dtype=torch.float32)).unsqueeze(-1)
    y = torch.where(eff > 0, w.abs() / eff, torch.full_like(w, float("inf")))
    half_step = torch.where(y <= 2, 0.25, torch.where(y <= 4, 0.5, 1.0))
    saturation = (y - E2M1_MAX).clamp(min=0)
    bound = torch.where(eff > 0, eff * torch.maximum(half_step, saturation), w.abs())
    slack = w.abs() * 2.0**-22 + torch.finfo(torch.float32).tiny
    return (bound + slack).reshape(n, k)


def nvfp4_bytes(n: int, k: int, group_size: int = GROUP_SIZE) -> int:
    """Bytes one [N, K] NVFP4 weight takes: packed codes + E4M3 block scales + the fp32 global."""
    return n * k // 2 + n * k // group_size + 4
