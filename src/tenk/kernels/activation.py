"""SiLU-and-mul, the gated activation of Llama/Qwen3/MiniMax MLPs and experts.

x [T, 2I] holds gate | up side by side (the fused w1|w3 output); out [T, I] = silu(gate) * up.
The kernel rounds like transformers' `act_fn(gate) * up` in the input dtype: silu is computed in
fp32 and rounded, then the product is computed in fp32 and rounded again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tenk.kernels._common import next_pow2
from tenk.kernels._triton import tl, triton

# Tests set it to run the Triton path on CPU tensors (under tenk.kernels.interpret.triton_interpreter).
FORCE_TRITON = False


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, I, s_xt, s_ot, BLOCK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = c < I
    g = tl.load(x_ptr + t * s_xt + c, mask=m, other=0.0).to(tl.float32)
    u = tl.load(x_ptr + t * s_xt + I + c, mask=m, other=0.0).to(tl.float32)
    s = (g / (1.0 + tl.exp(-g))).to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + t * s_ot + c, (s * u).to(out_ptr.dtype.element_ty), mask=m)


def silu_and_mul_ref(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    half = x.shape[-1] // 2
    y = F.silu(x[..., :half]) * x[..., half:]
    if out is not None:
        out.copy_(y)
        return out
    return y


def silu_and_mul_triton(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, 2I] (rows may be strided, columns contiguous) -> [T, I]."""
    if x.dim() != 2 or x.shape[1] % 2:
        raise ValueError(f"silu_and_mul expects [T, 2I], got {tuple(x.shape)}")
    T, two_i = x.shape
    inter = two_i // 2
    if x.stride(1) != 1:
        x = x.contiguous()
    if out is None:
        out = torch.empty((T, inter), dtype=x.dtype, device=x.device)
    if T == 0:
        return out
    block = min(1024, next_pow2(inter))
    _silu_and_mul_kernel[(T, triton.cdiv(inter, block))](
        x, out, inter, x.stride(0), out.stride(0), BLOCK=block, num_warps=4 if block >= 512 else 1
    )
    return out


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    if x.is_cuda or FORCE_TRITON:
        return silu_and_mul_triton(x, out)
    return silu_and_mul_ref(x, out)
