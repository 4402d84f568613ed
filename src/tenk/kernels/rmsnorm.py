"""RMSNorm and fused residual-add + RMSNorm, rounded exactly where transformers rounds.

transformers' Llama / Qwen3 / Qwen3-MoE / MiniMax-M2 RMSNorm (all the same code):
    h = x.float(); h = h * rsqrt(h.pow(2).mean(-1) + eps); return weight * h.to(x.dtype)
so the normalised value is rounded to the input dtype *before* the weight multiply, and the
result has the promoted dtype of (weight, x). The decoder layer adds the residual in the model
dtype (`residual + hidden_states`), which `fused_add_rms_norm` reproduces before normalising.

x may be [M, N] or [A, B, N] (e.g. per-head QK-norm on a strided view of the qkv output) with the
last dimension contiguous; the norm runs over the last dimension.
"""

from __future__ import annotations

import torch

from tenk.kernels._common import next_pow2, use_pdl
from tenk.kernels._tiles import wait_prior_grid
from tenk.kernels._triton import tl, triton

# Tests set it to run the Triton path on CPU tensors (under tenk.kernels.interpret.triton_interpreter).
FORCE_TRITON = False


@triton.jit(do_not_specialize=["M"])
def _rms_norm_kernel(
    x_ptr, r_ptr, w_ptr, out_ptr, res_out_ptr,
    M, N, INNER, s_x0, s_x1, s_r0, s_r1, eps,
    HAS_RES: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr,
):
    wait_prior_grid(PDL)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_N)
    m = (rows < M)[:, None] & (cols < N)[None, :]
    rows64 = rows.to(tl.int64)
    x_off = (rows64 // INNER) * s_x0 + (rows64 % INNER) * s_x1
    x = tl.load(x_ptr + x_off[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
    in_dtype = x_ptr.dtype.element_ty
    if HAS_RES:
        r_off = (rows64 // INNER) * s_r0 + (rows64 % INNER) * s_r1
        r = tl.load(r_ptr + r_off[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
        x = (x + r).to(in_dtype)  # the residual add happens in the model dtype
        tl.store(res_out_ptr + rows64[:, None] * N + cols[None, :], x, mask=m)
        x = x.to(tl.float32)
    var = tl.sum(x * x, 1) / N
    xn = (x * tl.rsqrt(var + eps)[:, None]).to(in_dtype).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows64[:, None] * N + cols[None, :], (xn * w[None, :]).to(out_ptr.dtype.element_ty), mask=m)


def _as_rows(x: torch.Tensor) -> tuple[int, int, int, int]:
    """(rows, inner, stride0, stride1) so that row i starts at (i // inner) * s0 + (i % inner) * s1."""
    if x.stride(-1) != 1:
        raise ValueError("the normalised dimension must be contiguous")
    if x.dim() == 2:
        return x.shape[0], 1, x.stride(0), 0
    if x.dim() == 3:
        return x.shape[0] * x.shape[1], x.shape[1], x.stride(0), x.stride(1)
    raise ValueError(f"rms_norm expects a 2-D or 3-D tensor, got {x.dim()}-D")


def _launch(x, residual, weight, eps, out, res_out):
    n = x.shape[-1]
    if weight.shape != (n,):
        raise ValueError(f"weight has shape {tuple(weight.shape)}, expected ({n},)")
    M, inner, s0, s1 = _as_rows(x)
    if residual is not None:
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError("residual and x must have the same shape and dtype")
        _, _, r0, r1 = _as_rows(residual)
    else:
        r0 = r1 = 0
    if M == 0:
        return
    block_n = next_pow2(n)
    rows = max(1, min(64, 4096 // block_n))
    pdl = use_pdl(x.device)
    _rms_norm_kernel[(triton.cdiv(M, rows),)](
        x, residual if residual is not None else x, weight, out, res_out,
        M, n, inner, s0, s1, r0, r1, float(eps),
        HAS_RES=residual is not None, ROWS=rows, BLOCK_N=block_n, PDL=pdl,
        num_warps=max(1, min(16, rows * block_n // 1024)), launch_pdl=pdl,
    )


def _out_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, weight.dtype)


# ---------------------------------------------------------------- references


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def fused_add_rms_norm_ref(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    new_residual = residual + x
    return rms_norm_ref(new_residual, weight, eps), new_residual


# ---------------------------------------------------------------- Triton


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=_out_dtype(x, weight), device=x.device)
    _launch(x, None, weight, eps, out, out)  # res_out is not written without a residual
    return out


def fused_add_rms_norm_triton(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.empty(x.shape, dtype=_out_dtype(x, weight), device=x.device)
    new_residual = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _launch(x, residual, weight, eps, out, new_residual)
    return out, new_residual


# ---------------------------------------------------------------- dispatch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.is_cuda or FORCE_TRITON:
        return rms_norm_triton(x, weight, eps)
    return rms_norm_ref(x, weight, eps)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if x.is_cuda or FORCE_TRITON:
        return fused_add_rms_norm_triton(x, residual, weight, eps)
    return fused_add_rms_norm_ref(x, residual, weight, eps)
