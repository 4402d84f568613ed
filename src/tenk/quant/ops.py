"""The GEMMs of the quantized formats, one function per format and layer kind.

These are the torch references: dequantize exactly what the format says, then multiply
with the same code the unquantized layers use, so a quantized model gives the logits of the
same model with dequantized weights (tests/quant/test_methods.py checks it bit for bit). A
Triton kernel (packed weights dequantized inside the GEMM, DESIGN.md "Quantized formats")
replaces a reference on the GPU behind the same signature.

Shapes: x [T, K]; a fused linear's N is the sum of its shards (q|k|v, gate|up), each with its
own per-tensor scale. MoE: E local experts, w13 rows are gate (w1) then up (w3), each half with
its own global scale; topk_ids -1 means "not on this rank".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tenk.quant.fp8 import FP8_BLOCK, dequantize_fp8_block
from tenk.quant.nvfp4 import dequantize_nvfp4


def _per_row(scale: torch.Tensor, shard_sizes: list[int]) -> torch.Tensor:
    """Per-shard scales [S] -> one per output row [N, 1]."""
    sizes = torch.tensor(shard_sizes, device=scale.device)
    return scale.float().repeat_interleave(sizes).unsqueeze(1)


# ------------------------------------------------------------------------------------- NVFP4


def nvfp4_dequant_linear_weight(
    weight: torch.Tensor,  # uint8 [N, K/2]
    weight_scale: torch.Tensor,  # e4m3 [N, K/16]
    weight_scale_2: torch.Tensor,  # fp32 [S], one per fused shard
    shard_sizes: list[int],  # rows of each shard, sum = N
    dtype: torch.dtype,
) -> torch.Tensor:
    if len(shard_sizes) == 1:
        return dequantize_nvfp4(weight, weight_scale, weight_scale_2.reshape(()), dtype)
    # code * block scale is exact in fp32; one rounding when the shard's global scale is applied
    base = dequantize_nvfp4(weight, weight_scale, torch.ones((), device=weight.device), torch.float32)
    return (base * _per_row(weight_scale_2, shard_sizes)).to(dtype)


def _nvfp4_kernels_apply(x: torch.Tensor, *weights: torch.Tensor) -> bool:
    """The Triton NVFP4 kernels (tenk.kernels.nvfp4_gemm / nvfp4_moe) serve CUDA activations in
    bf16/fp16 when K is a multiple of 64, and always serve weights already re-laid for them (int16,
    done at load time on CUDA by the methods); everything else takes the torch reference below."""
    if not x.is_cuda:
        return False
    if all(w.dtype == torch.int16 for w in weights):
        return True
    return x.dtype in (torch.bfloat16, torch.float16) and all(w.shape[-1] * 2 % 64 == 0 for w in weights)


def nvfp4_linear(x, weight, weight_scale, weight_scale_2, shard_sizes, bias=None) -> torch.Tensor:
    """y [T, N] = x [T, K] @ dequant(weight)^T (+ bias). On CUDA: the in-kernel-dequant GEMM, with
    weights in the kernel layout that Nvfp4LinearMethod re-lays at load time (int16; re-laid per
    call otherwise)."""
    if _nvfp4_kernels_apply(x, weight):
        from tenk.kernels.nvfp4_gemm import nvfp4_gemm

        y = nvfp4_gemm(x.reshape(-1, x.shape[-1]), weight, weight_scale, weight_scale_2, shard_sizes, bias)
        return y.reshape(*x.shape[:-1], y.shape[-1])
    w = nvfp4_dequant_linear_weight(weight, weight_scale, weight_scale_2, shard_sizes, x.dtype)
    return F.linear(x, w, bias)


def _capturing(t: torch.Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def _touched(topk_ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(experts used by some token, topk_ids renumbered into that list; -1 stays -1). Inside a
    CUDA graph capture every expert counts as used: the list's length would be known only on the
    host, after a sync the capture cannot hold."""
    ids = topk_ids.long()
    if _capturing(ids):
        return torch.arange(num_experts, device=ids.device), ids
    used = torch.unique(ids[ids >= 0])
    local = torch.searchsorted(used, ids.clamp(min=0))
    return used, torch.where(ids >= 0, local, -1)


def nvfp4_moe(
    x: torch.Tensor,  # [T, H]
    w13_weight: torch.Tensor,  # uint8 [E, 2I, H/2]
    w13_weight_scale: torch.Tensor,  # e4m3 [E, 2I, H/16]
    w13_weight_scale_2: torch.Tensor,  # fp32 [E, 2] (w1, w3)
    w2_weight: torch.Tensor,  # uint8 [E, H, I/2]
    w2_weight_scale: torch.Tensor,  # e4m3 [E, H, I/16]
    w2_weight_scale_2: torch.Tensor,  # fp32 [E]
    topk_weights: torch.Tensor,  # [T, k] fp32
    topk_ids: torch.Tensor,  # [T, k]
) -> torch.Tensor:
    """On CUDA: the Triton NVFP4 fused MoE (weights re-laid at load time by Nvfp4MoEMethod)."""
    if _nvfp4_kernels_apply(x, w13_weight, w2_weight):
        from tenk.kernels.nvfp4_moe import nvfp4_fused_moe

        return nvfp4_fused_moe(x, w13_weight, w13_weight_scale, w13_weight_scale_2, w2_weight, w2_weight_scale,
                               w2_weight_scale_2, topk_weights, topk_ids)
    from tenk.kernels.moe import fused_moe

    used, ids = _touched(topk_ids, w13_weight.shape[0])
    inter = w13_weight.shape[1] // 2
    base = dequantize_nvfp4(w13_weight[used], w13_weight_scale[used], torch.ones(len(used), device=x.device), torch.float32)
    g13 = w13_weight_scale_2[used].float().repeat_interleave(inter, dim=1).unsqueeze(-1)  # [U, 2I, 1]
    w13 = (base * g13).to(x.dtype)
    w2 = dequantize_nvfp4(w2_weight[used], w2_weight_scale[used], w2_weight_scale_2[used], x.dtype)
    return fused_moe(x, w13, w2, topk_weights, ids)


# --------------------------------------------------------------------------------------- FP8


def fp8_dequant_linear_weight(
    weight: torch.Tensor,  # e4m3 [N, K]
    weight_scale: torch.Tensor,  # fp32: [S] per shard ("tensor"), [N] ("channel"), [N/bn, K/bk] ("block")
    scheme: str,
    shard_sizes: list[int],
    dtype: torch.dtype,
    block: tuple[int, int] = FP8_BLOCK,
) -> torch.Tensor:
    if scheme == "block":
        return dequantize_fp8_block(weight, weight_scale, block, dtype)
    if scheme == "channel":
        return (weight.float() * weight_scale.float().unsqueeze(1)).to(dtype)
    return (weight.float() * _per_row(weight_scale, shard_sizes)).to(dtype)


def _fp8_kernels_apply(x: torch.Tensor, *weights: torch.Tensor) -> bool:
    """The Triton FP8 kernels (tenk.kernels.fp8_gemm / fp8_moe, W8A16: E4M3 converted inside the
    GEMM) serve CUDA activations in bf16/fp16; everything else takes the torch reference below."""
    return (x.is_cuda and x.dtype in (torch.bfloat16, torch.float16)
            and all(w.dtype == torch.float8_e4m3fn for w in weights))


def fp8_linear(x, weight, weight_scale, scheme, shard_sizes, bias=None, block=FP8_BLOCK) -> torch.Tensor:
    """y [..., N] = x [..., K] @ dequant(weight)^T (+ bias). On CUDA: the Triton W8A16 GEMM."""
    if _fp8_kernels_apply(x, weight):
        from tenk.kernels.fp8_gemm import fp8_gemm, supports

        if supports(x, weight, scheme, block):
            y = fp8_gemm(x.reshape(-1, x.shape[-1]), weight, weight_scale, scheme, shard_sizes, bias, block)
            return y.reshape(*x.shape[:-1], y.shape[-1])
    w = fp8_dequant_linear_weight(weight, weight_scale, scheme, shard_sizes, x.dtype, block)
    return F.linear(x, w, bias)


def fp8_moe(
    x, w13_weight, w13_weight_scale, w2_weight, w2_weight_scale, topk_weights, topk_ids, scheme, block=FP8_BLOCK
) -> torch.Tensor:
    """Per-tensor scales: w13 [E, 2] (w1, w3), w2 [E]; block scales: w13 [E, 2I/bn, H/bk], w2 [E, H/bn, I/bk].
    On CUDA: the Triton W8A16 fused MoE. The reference dequantizes only the experts some token uses,
    all at once (no loop over experts), then runs the bf16 MoE."""
    if _fp8_kernels_apply(x, w13_weight, w2_weight):
        from tenk.kernels.fp8_moe import fp8_fused_moe, supports

        if supports(x, w13_weight, w2_weight, scheme, block):
            return fp8_fused_moe(x, w13_weight, w13_weight_scale, w2_weight, w2_weight_scale, topk_weights, topk_ids,
                                 scheme, block)
    from tenk.kernels.fp8_moe import dequantize_experts
    from tenk.kernels.moe import fused_moe

    used, ids = _touched(topk_ids, w13_weight.shape[0])
    w13, w2 = dequantize_experts(w13_weight[used], w13_weight_scale[used], w2_weight[used], w2_weight_scale[used],
                                 scheme, x.dtype, block)
    return fused_moe(x, w13, w2, topk_weights, ids)
