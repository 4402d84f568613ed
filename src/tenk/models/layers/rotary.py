import functools

import torch
from torch import nn

from tenk.kernels.rotary import apply_rotary, rope_cos_sin_cache


@functools.lru_cache(maxsize=8)
def _cos_sin_cache(rotary_dim: int, max_position: int, base: float, device: torch.device) -> torch.Tensor:
    """[max_position, rotary_dim] = cos | sin (fp32), one table shared by every layer (a per-layer
    copy would cost MiniMax-M2 3 GB of GPU memory at its 196K max positions)."""
    return rope_cos_sin_cache(rotary_dim, max_position, base, device)


class RotaryEmbedding(nn.Module):
    """Neox-style RoPE (rotate-half) over the first `rotary_dim` dims of each head; the rest of
    the head passes through (MiniMax-M2 rotates 64 of 128). Rounds like transformers
    (tenk.kernels.rotary: Triton on CUDA, the torch reference elsewhere)."""

    def __init__(self, head_dim: int, rotary_dim: int, max_position: int, base: float):
        super().__init__()
        self.head_dim, self.rotary_dim = head_dim, rotary_dim
        device = torch.get_default_device()  # the device the model is being built on
        self.register_buffer("cos_sin_cache", _cos_sin_cache(rotary_dim, max_position, float(base), device), persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """positions [T]; q [T, Hq*D] or [T, Hq, D], k likewise (views of the qkv output are fine).
        Rotates q and k in place and returns them."""
        apply_rotary(self._heads(q), self._heads(k), positions, self.cos_sin_cache, self.rotary_dim)
        return q, k

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # view, never reshape: a copy would take the in-place rotation away from x
        return x if x.dim() == 3 else x.view(x.shape[0], x.shape[1] // self.head_dim, self.head_dim)
