import functools

import torch
from torch import nn


@functools.lru_cache(maxsize=8)
def _cos_sin_cache(rotary_dim: int, max_position: int, base: float, device: torch.device) -> torch.Tensor:
    """[max_position, rotary_dim] = cos | sin, one table shared by every layer (a per-layer copy
    would cost MiniMax-M2 3 GB of GPU memory at its 196K max positions)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64, device=device).float() / rotary_dim))
    t = torch.arange(max_position, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)  # [P, rotary_dim/2]
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


class RotaryEmbedding(nn.Module):
    """Neox-style RoPE (rotate-half) over the first `rotary_dim` dims of each head; the rest of
    the head passes through (MiniMax-M2 rotates 64 of 128)."""

    def __init__(self, head_dim: int, rotary_dim: int, max_position: int, base: float):
        super().__init__()
        self.head_dim, self.rotary_dim = head_dim, rotary_dim
        device = torch.get_default_device()  # the device the model is being built on
        self.register_buffer("cos_sin_cache", _cos_sin_cache(rotary_dim, max_position, float(base), device), persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """q [T, Hq, D], k [T, Hkv, D]; returns rotated copies."""
        cos, sin = self.cos_sin_cache[positions].chunk(2, dim=-1)  # [T, rd/2] each
        cos = torch.cat([cos, cos], -1)[:, None, :]
        sin = torch.cat([sin, sin], -1)[:, None, :]
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)

    def _rotate(self, x, cos, sin):
        rd = self.rotary_dim
        x_rot = x[..., :rd].float()
        half = rd // 2
        rotated = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
        out = (x_rot * cos + rotated * sin).to(x.dtype)
        if rd == x.shape[-1]:
            return out
        return torch.cat([out, x[..., rd:]], dim=-1)
