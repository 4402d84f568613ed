"""FP8 E4M3 weights: one fp32 scale per tensor, or one per 128x128 block.

    per-tensor (ModelOpt `quant_algo: FP8`):   weight e4m3 [N, K], weight_scale fp32 []
    block (`quant_method: fp8`, `weight_block_size: [128, 128]`, DeepSeek-V3 / MiniMax-M2):
                                             weight e4m3 [N, K], weight_scale_inv fp32 [ceil(N/128), ceil(K/128)]

Both scales are multipliers: w = fp8 * scale. (`weight_scale_inv` is named for what the
quantizer divided by; the stored number is still the dequantization multiplier.) Tenk keeps
both under the name `weight_scale` in memory.

Error bound: E4M3 has 3 mantissa bits, so a value in the normal range (|w| / scale >= 2^-6)
is rounded by at most 2^-4 of itself; below that the absolute error is at most 2^-10 * scale
(half the smallest subnormal, 2^-9).
"""

from __future__ import annotations

import math

import torch

E4M3_MAX = 448.0
FP8_BLOCK = (128, 128)


def scale_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """amax / 448 (1.0 for an all-zero tensor or block), IEEE-divided on any device."""
    amax = amax.float()
    return torch.where(amax > 0, amax / torch.tensor(E4M3_MAX, device=amax.device), torch.ones_like(amax))


def to_e4m3(y: torch.Tensor) -> torch.Tensor:
    # torch's cast rounds to nearest even; values past 448 would become NaN, so clamp first.
    return y.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def _check(w: torch.Tensor) -> torch.Tensor:
    if w.ndim != 2:
        raise ValueError(f"FP8 quantization takes a 2-D weight, got shape {tuple(w.shape)}")
    w = w.float()
    if not torch.isfinite(w).all():
        raise ValueError("the weight holds inf or NaN values; FP8 cannot represent them")
    return w


def quantize_fp8_per_tensor(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (e4m3 [N, K], scale fp32 [] = amax / 448)."""
    w = _check(w)
    scale = scale_from_amax(w.abs().amax())
    return to_e4m3(w / scale), scale


def dequantize_fp8_per_tensor(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.float() * scale.float()).to(dtype)


def _expand_blocks(scale: torch.Tensor, n: int, k: int, block: tuple[int, int]) -> torch.Tensor:
    """[ceil(N/bn), ceil(K/bk)] -> [N, K] (the last block row/column may be partial)."""
    bn, bk = block
    return scale.float().repeat_interleave(bn, dim=0)[:n].repeat_interleave(bk, dim=1)[:, :k]


def quantize_fp8_block(w: torch.Tensor, block: tuple[int, int] = FP8_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (e4m3 [N, K], scale fp32 [ceil(N/bn), ceil(K/bk)] = block_amax / 448)."""
    w = _check(w)
    n, k = w.shape
    bn, bk = block
    nb, kb = math.ceil(n / bn), math.ceil(k / bk)
    padded = torch.zeros(nb * bn, kb * bk, dtype=torch.float32, device=w.device)
    padded[:n, :k] = w
    amax = padded.reshape(nb, bn, kb, bk).abs().amax(dim=(1, 3))  # [nb, kb]
    scale = scale_from_amax(amax)
    return to_e4m3(w / _expand_blocks(scale, n, k, block)), scale


def dequantize_fp8_block(
    q: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] = FP8_BLOCK, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    n, k = q.shape
    nb, kb = math.ceil(n / block[0]), math.ceil(k / block[1])
    if tuple(scale.shape) != (nb, kb):
        raise ValueError(f"block scale shape {tuple(scale.shape)} does not fit weight {n}x{k} with block {block}")
    return (q.float() * _expand_blocks(scale, n, k, block)).to(dtype)


def dequantize_fp8(
    q: torch.Tensor,
    scale: torch.Tensor,
    block: tuple[int, int] | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-tensor when the scale has one element, block otherwise."""
    if scale.numel() == 1:
        return dequantize_fp8_per_tensor(q, scale.reshape(()), dtype)
    return dequantize_fp8_block(q, scale, block or FP8_BLOCK, dtype)


def fp8_error_bound(w: torch.Tensor, scale_per_element: torch.Tensor) -> torch.Tensor:
    """Per-element bound on |w - deq(quant(w))| given the (expanded) scale of each element."""
    w = w.float().abs()
    s = scale_per_element.float()
    return torch.maximum(w * 2.0**-4, s * 2.0**-10) + w * 2.0**-22
