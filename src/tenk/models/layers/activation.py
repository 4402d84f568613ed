import torch

from tenk.kernels.activation import silu_and_mul as _silu_and_mul


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2I] = gate | up  ->  silu(gate) * up  [..., I] (Triton on CUDA, torch elsewhere)"""
    if x.dim() == 2:
        return _silu_and_mul(x)
    return _silu_and_mul(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], x.shape[-1] // 2)
