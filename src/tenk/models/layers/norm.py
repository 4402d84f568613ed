import torch
from torch import nn

from tenk.kernels.rmsnorm import fused_add_rms_norm, rms_norm


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight, computed in fp32 and cast back before the weight
    multiply, as transformers' Llama/Qwen3/MiniMax norms do (tenk.kernels.rmsnorm: Triton on CUDA,
    the torch reference elsewhere; both round at the same points).

    x is [T, H], or [T, heads, head_dim] for per-head QK-norm (a strided view is fine)."""

    def __init__(self, hidden_size: int, eps: float, params_dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=params_dtype), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """With a residual: (norm(x + residual), x + residual), the add rounded in x's dtype."""
        if residual is None:
            return rms_norm(x, self.weight, self.eps)
        return fused_add_rms_norm(x, residual, self.weight, self.eps)
