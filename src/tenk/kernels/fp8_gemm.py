"""FP8 weight-only GEMM for Hopper (W8A16): y [M, N] = x [M, K] @ dequant(W)^T, W kept in E4M3.

Hopper multiplies fp8 only by fp8, and tenk keeps activations in bf16, so each weight tile is
converted to bf16 in registers (exact: E4M3 has 4 significant bits and a narrower range; by a
few integer instructions, `_ASM_E4M3_TO_BF16`, for bf16 on the GPU) and multiplied on bf16 tensor
cores. The fp32 scales go on the fp32 accumulator, never on the weights:
  "tensor":  weight_scale [S], one per fused shard (q|k|v, gate|up), applied per row at the end;
  "channel": weight_scale [N], likewise;
  "block":   weight_scale [ceil(N/bn), ceil(K/bk)] (128x128 in DeepSeek-V3 / MiniMax-M2 checkpoints).
             BLOCK_N divides bn and BLOCK_K divides bk, so every K step of a tile has one scale s
             and the step is acc += dot(w_tile, x_tile) * s: exact up to fp32 rounding.
Orientation as in nvfp4_gemm: the kernel computes out^T tiles [BN weight rows, BM tokens] =
W_tile @ x_tile^T, so the converted weights are wgmma's register operand and the token count is
the MMA's N dimension (as small as 16: a decode batch wastes no tensor-core work on padding).
Small M splits K (fp32 partials, summed by nvfp4_gemm's reduce kernel); from the config's
crossover M ("dequant" impl) the weight is dequantized to x's dtype once and cuBLAS multiplies.
The checkpoint's [N, K] E4M3 (K contiguous) is already the kernel's layout: nothing is re-laid.

`fp8_gemm` (Triton) and `fp8_gemm_ref` (torch: dequantize + F.linear, the numbers of
tenk.quant.ops.fp8_linear's reference) share one signature.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tenk.kernels._tiles import dense_tile, shard_scale, store_tile
from tenk.kernels._triton import tl, triton
from tenk.kernels.configs.fp8 import Fp8Config, block_scales_fit, dense_config, fit_block_k, fit_block_n
from tenk.kernels.nvfp4_gemm import finish_split_k

FP8_BLOCK = (128, 128)
SCHEMES = ("tensor", "channel", "block")
MAX_SHARDS = 3  # per-tensor shards the kernel reads directly (q|k|v); more become a per-row vector


# ---------------------------------------------------------------- format math (torch)
# The FP8 definitions live in tenk.quant.fp8; kernels/ sits below quant/ in the import order, so the
# few lines the references need are repeated here (tests check both agree).


def dequantize_block(q: torch.Tensor, scale: torch.Tensor, block: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """E4M3 [..., N, K] * block scales [..., ceil(N/bn), ceil(K/bk)] -> dtype, one fp32 product per
    value rounded once. Whole blocks multiply through a view (no expanded scale tensor)."""
    *lead, n, k = q.shape
    bn, bk = block
    nb, kb = _check_block_scales(scale, n, k, block)
    s = scale.float()
    if n % bn == 0 and k % bk == 0:
        w = q.float().view(*lead, nb, bn, kb, bk).mul_(s.unsqueeze(-1).unsqueeze(-3))
        return w.view(*lead, n, k).to(dtype)
    full = s.repeat_interleave(bn, dim=-2)[..., :n, :].repeat_interleave(bk, dim=-1)[..., :k]
    return (q.float() * full).to(dtype)


def _check_block_scales(scale: torch.Tensor, n: int, k: int, block: tuple[int, int]) -> tuple[int, int]:
    """The scale grid (ceil(N/bn), ceil(K/bk)) a [..., N, K] weight needs; raises if `scale` is not it."""
    nb, kb = math.ceil(n / block[0]), math.ceil(k / block[1])
    if tuple(scale.shape[-2:]) != (nb, kb):
        raise ValueError(f"block scale shape {tuple(scale.shape)} does not fit weight {n}x{k} with block {block}")
    return nb, kb


def _row_scales(scale: torch.Tensor, shard_sizes: list[int] | None, n: int) -> torch.Tensor:
    """Per-shard scales [S] -> one per row [N] fp32, without a host-to-device copy (graph-safe)."""
    sizes = list(shard_sizes) if shard_sizes else [n]
    s = scale.reshape(-1).float()
    if s.numel() != len(sizes) or sum(sizes) != n:
        raise ValueError(f"FP8 linear: {s.numel()} per-tensor scales for shards {sizes} of {n} rows")
    return torch.cat([s[i : i + 1].expand(size) for i, size in enumerate(sizes)])


def dequantize_weight(weight, weight_scale, scheme, shard_sizes, dtype, block=FP8_BLOCK) -> torch.Tensor:
    """E4M3 [N, K] -> dtype, as tenk.quant.ops.fp8_dequant_linear_weight."""
    if scheme == "block":
        return dequantize_block(weight, weight_scale, tuple(block), dtype)
    rows = weight_scale.float() if scheme == "channel" else _row_scales(weight_scale, shard_sizes, weight.shape[0])
    return (weight.float() * rows.unsqueeze(1)).to(dtype)


@triton.jit
def _dequant_weight_kernel(w_ptr, s_ptr, out_ptr, N, K, s_wn, s_sn, s_on, SBN: tl.constexpr, SBK: tl.constexpr,
                           BLOCK_SCALES: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """out[n, k] = E4M3 w[n, k] * scale, one fp32 product rounded once (dequantize_weight's math):
    scale = s[n // SBN, k // SBK] with BLOCK_SCALES, else the row's s[n]."""
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    offs_k = tl.program_id(1) * BK + tl.arange(0, BK)
    n_ok = offs_n < N
    mask = n_ok[:, None] & (offs_k < K)[None, :]
    rows = offs_n.to(tl.int64)[:, None]
    w = tl.load(w_ptr + rows * s_wn + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
    if BLOCK_SCALES:
        s = tl.load(s_ptr + (offs_n // SBN)[:, None] * s_sn + (offs_k // SBK)[None, :], mask=mask, other=0.0)
    else:
        s = tl.load(s_ptr + offs_n, mask=n_ok, other=0.0)[:, None]
    tl.store(out_ptr + rows * s_on + offs_k[None, :], (w * s).to(out_ptr.dtype.element_ty), mask=mask)


def dequantize_weight_triton(weight, weight_scale, scheme, shard_sizes, dtype, block=FP8_BLOCK) -> torch.Tensor:
    """dequantize_weight in one pass (read E4M3, write dtype): the torch version's fp32 temporaries
    cost ~4x the bytes, which made the dense "dequant" impl slower than bf16 at prefill sizes."""
    n, k = weight.shape
    if scheme == "block":
        bn, bk = tuple(block)
        _check_block_scales(weight_scale, n, k, (bn, bk))
        s = weight_scale.float()
    else:
        bn = bk = 1
        s = weight_scale.float().reshape(-1) if scheme == "channel" else _row_scales(weight_scale, shard_sizes, n)
    s = s.contiguous()
    if weight.stride(1) != 1:
        weight = weight.contiguous()
    out = torch.empty((n, k), dtype=dtype, device=weight.device)
    BN, BK = 32, 128
    _dequant_weight_kernel[(triton.cdiv(n, BN), triton.cdiv(k, BK))](
        weight, s, out, n, k, weight.stride(0), s.stride(-2) if scheme == "block" else 1, out.stride(0),
        SBN=bn, SBK=bk, BLOCK_SCALES=scheme == "block", BN=BN, BK=BK, num_warps=4,
    )
    return out


# ---------------------------------------------------------------- E4M3 -> bf16 in registers

COMPILE_GPU_VARIANT = False  # tests set it to compile the inline-asm variant from CPU tensors (sm_90 checks)


def use_asm(x: torch.Tensor) -> bool:
    """The inline-asm conversion serves bf16 activations on the GPU; elsewhere Triton's own cast."""
    return (x.is_cuda or COMPILE_GPU_VARIANT) and x.dtype == torch.bfloat16


# Triton's own E4M3 -> bf16 cast goes through fp16: cvt.rn.f16x2.e4m3x2, then one F2F.BF16.F16 per
# value on the conversion pipe (a quarter of the integer pipes' rate), enough to cap a decode GEMM
# near HBM speed. Instead, integer ops on the two bytes each shared-memory load of the MMA operand
# brings (pack=2: no byte re-packing): prmt puts byte 0 (1) in the low byte of the low (high) 16-bit
# half with the byte's sign replicated into the half's high byte (selector bit 3), a shift by 4 and a
# mask leave s.0000eeee.mmm0000 = the bf16 of value * 2^-120 (exact; E4M3 subnormals land on bf16
# subnormals), and one bf16x2 multiply by 2^120 (0x7B80) restores the value exactly. 4 instructions
# per 2 values (SASS: PRMT, IMAD.SHL, LOP3, HMUL2). NaN codes (0x7F, 0xFF) come out as +-480;
# checkpoints hold none.
_ASM_E4M3_TO_BF16 = tl.constexpr(
    "{ .reg .b32 x, c; mov.b32 c, 0x7B807B80; cvt.u32.u16 x, $1; prmt.b32 x, x, 0, 0x9180; "
    "shl.b32 x, x, 4; and.b32 x, x, 0x87F087F0; mul.rn.bf16x2 $0, x, c; }"
) if tl else None


@triton.jit
def _convert(w, COMPUTE: tl.constexpr, USE_ASM: tl.constexpr):
    if USE_ASM:
        return tl.inline_asm_elementwise(_ASM_E4M3_TO_BF16, "=r,h", [w], dtype=tl.bfloat16, is_pure=True, pack=2)
    return w.to(COMPUTE)


# ---------------------------------------------------------------- device functions (shared with fp8_moe)


@triton.jit
def _dot(w, xt, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(w, xt, input_precision="ieee")
    return tl.dot(w, xt)


@triton.jit
def _dot_acc(w, xt, acc, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(w, xt, acc, input_precision="ieee")
    return tl.dot(w, xt, acc)


@triton.jit
def _accumulate(acc, acc2, w_rows, w_off2, s_tile, s_off2, s_sk, x_cols, x_ok, k0, k1, K,
                BK: tl.constexpr, SBK: tl.constexpr, BLOCK_SCALES: tl.constexpr, EVEN_K: tl.constexpr,
                COMPUTE: tl.constexpr, USE_ASM: tl.constexpr, IEEE: tl.constexpr, TWO: tl.constexpr):
    """acc [BN, BM] += W[rows, k] @ x[cols, k]^T over columns [k0, k1), the E4M3 tile converted to
    COMPUTE in registers; TWO: also acc2 with the rows w_off2 further on (the up half of w1|w3),
    sharing x. BLOCK_SCALES: each step's product is multiplied by its block's scale, read at
    s_tile + (k // SBK) * s_sk (+ s_off2 for acc2); otherwise scales are the caller's, at the end.
    w_rows: E4M3 pointers [BN, 1] (masked rows point at a valid row; the caller drops them),
    x_cols: pointers [1, BM] to each token's row, x_ok [1, BM]."""
    c = tl.arange(0, BK)
    for kk in range(k0, k1, BK):
        if EVEN_K:
            w = tl.load(w_rows + (kk + c)[None, :])
            xt = tl.load(x_cols + (kk + c)[:, None], mask=x_ok, other=0.0)
        else:
            k_ok = (kk + c) < K
            w = tl.load(w_rows + (kk + c)[None, :], mask=k_ok[None, :], other=0.0)
            xt = tl.load(x_cols + (kk + c)[:, None], mask=x_ok & k_ok[:, None], other=0.0)
        if BLOCK_SCALES:
            acc += _dot(_convert(w, COMPUTE, USE_ASM), xt, IEEE) * tl.load(s_tile + (kk // SBK) * s_sk)
        else:
            acc = _dot_acc(_convert(w, COMPUTE, USE_ASM), xt, acc, IEEE)
        if TWO:
            if EVEN_K:
                w2 = tl.load(w_rows + w_off2 + (kk + c)[None, :])
            else:
                w2 = tl.load(w_rows + w_off2 + (kk + c)[None, :], mask=k_ok[None, :], other=0.0)
            if BLOCK_SCALES:
                acc2 += _dot(_convert(w2, COMPUTE, USE_ASM), xt, IEEE) * tl.load(s_tile + s_off2 + (kk // SBK) * s_sk)
            else:
                acc2 = _dot_acc(_convert(w2, COMPUTE, USE_ASM), xt, acc2, IEEE)
    return acc, acc2


# ---------------------------------------------------------------- dense kernel


@triton.jit(do_not_specialize=["M"])
def _fp8_gemm_kernel(
    x_ptr, w_ptr, s_ptr, bias_ptr, out_ptr,
    M, N, K, s_xm, s_wn, s_sn, s_sk, s_om, s_os, end0, end1,
    SCHEME: tl.constexpr, NUM_SHARDS: tl.constexpr, SBN: tl.constexpr, SBK: tl.constexpr,
    HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, USE_ASM: tl.constexpr,
):
    """out^T tile [BN, BM] for one split of K. SCHEME 0: per-shard scales (up to three, rows split
    at end0 / end1), 1: per row, 2: block scales. SPLIT_K == 1: out = scaled acc (+ bias) in out's
    dtype; else fp32 partials at out + pid_k * s_os (the reduce kernel finishes them)."""
    pid_k, pid_n, offs_m, offs_n, m_ok, n_ok, rows = dense_tile(M, N, BM, BN, GROUP_M)
    w_rows = w_ptr + rows[:, None] * s_wn
    x_cols = x_ptr + offs_m.to(tl.int64)[None, :] * s_xm
    s_tile = s_ptr + ((pid_n * BN) // SBN).to(tl.int64) * s_sn  # block scales: the tile's scale row
    steps = tl.cdiv(tl.cdiv(K, BK), SPLIT_K)
    k0 = pid_k * steps * BK
    k1 = tl.minimum(K, k0 + steps * BK)
    COMPUTE: tl.constexpr = x_ptr.dtype.element_ty
    acc = tl.zeros([BN, BM], tl.float32)
    acc, unused = _accumulate(acc, acc, w_rows, 0, s_tile, 0, s_sk, x_cols, m_ok[None, :], k0, k1, K,
                              BK, SBK, SCHEME == 2, EVEN_K, COMPUTE, USE_ASM, COMPUTE == tl.float32, False)

    if SCHEME == 0:
        acc = acc * shard_scale(s_ptr, offs_n, end0, end1, NUM_SHARDS, BN)[:, None]
    elif SCHEME == 1:
        acc = acc * tl.load(s_ptr + rows)[:, None]
    store_tile(acc, out_ptr, bias_ptr, offs_m, offs_n, m_ok, n_ok, pid_k, s_om, s_os, HAS_BIAS, SPLIT_K)


# ---------------------------------------------------------------- public ops


def _check(x, weight, weight_scale, scheme, shard_sizes, block) -> tuple[int, int, int]:
    if x.dim() != 2:
        raise ValueError(f"fp8_gemm expects x [M, K], got {tuple(x.shape)}")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown FP8 scheme {scheme!r} (choose from {SCHEMES})")
    M, K = x.shape
    N, k = weight.shape
    if k != K:
        raise ValueError(f"x has K={K} but the FP8 weight holds K={k}")
    if scheme == "block" and tuple(weight_scale.shape) != (math.ceil(N / block[0]), math.ceil(K / block[1])):
        raise ValueError(f"block scale shape {tuple(weight_scale.shape)} does not fit weight {N}x{K} with block {block}")
    if scheme == "channel" and weight_scale.numel() != N:
        raise ValueError(f"FP8 per-channel scales: {weight_scale.numel()} for {N} rows")
    return M, N, K


def fp8_gemm_ref(x, weight, weight_scale, scheme, shard_sizes=None, bias=None, block=FP8_BLOCK,
                 config=None) -> torch.Tensor:
    """Torch reference: dequantize exactly (E4M3 * scale in fp32, rounded once to x's dtype), F.linear."""
    _check(x, weight, weight_scale, scheme, shard_sizes, tuple(block))
    return F.linear(x, dequantize_weight(weight, weight_scale, scheme, shard_sizes, x.dtype, block), bias)


def supports(x: torch.Tensor, weight: torch.Tensor, scheme: str, block=FP8_BLOCK) -> bool:
    """What the Triton FP8 kernels take: E4M3 weights, float activations, and block scales that
    whole 16-wide tiles fill."""
    return (weight.dtype == torch.float8_e4m3fn and x.dtype in (torch.bfloat16, torch.float16, torch.float32)
            and (scheme != "block" or block_scales_fit(tuple(block))))


def fp8_gemm(x, weight, weight_scale, scheme, shard_sizes=None, bias=None, block=FP8_BLOCK,
             config: Fp8Config | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """y [M, N] = x [M, K] @ dequant(W)^T (+ bias): the W8A16 Triton kernel, or from the config's
    crossover M, dequantize once + torch.mm. No host sync (CUDA-graph safe)."""
    block = tuple(block)
    M, N, K = _check(x, weight, weight_scale, scheme, shard_sizes, block)
    if not supports(x, weight, scheme, block):
        raise ValueError(f"fp8_gemm takes E4M3 weights and 16-aligned scale blocks, got {weight.dtype}, {block}")
    if out is None:
        out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return out
    cfg = config or dense_config(M, N, K, x.device)
    if cfg.impl == "dequant":
        dequant = dequantize_weight_triton if weight.is_cuda else dequantize_weight
        w = dequant(weight, weight_scale, scheme, shard_sizes, x.dtype, block)
        return torch.addmm(bias, x, w.t(), out=out) if bias is not None else torch.mm(x, w.t(), out=out)
    if x.stride(1) != 1:
        x = x.contiguous()
    if weight.stride(1) != 1:
        weight = weight.contiguous()
    sizes = list(shard_sizes) if shard_sizes else [N]
    code = SCHEMES.index(scheme)
    s = weight_scale.float()
    if code == 0 and len(sizes) > MAX_SHARDS:
        s, code = _row_scales(s, sizes, N), 1
    elif code == 0 and (s.numel() != len(sizes) or sum(sizes) != N):
        raise ValueError(f"FP8 linear: {s.numel()} per-tensor scales for shards {sizes} of {N} rows")
    s = s.reshape(-1).contiguous() if code != 2 else s
    ends = [sum(sizes[: i + 1]) for i in range(len(sizes))] + [N, N]
    sbn, sbk = block if code == 2 else (None, None)
    bn = fit_block_n(cfg.block_n, sbn)
    bk = fit_block_k(cfg.block_k, K, sbk)
    steps = triton.cdiv(K, bk)
    split = max(1, min(cfg.split_k, steps))
    grid = (triton.cdiv(M, cfg.block_m) * triton.cdiv(N, bn), split)
    target = out if split == 1 else torch.empty((split, M, N), dtype=torch.float32, device=x.device)
    _fp8_gemm_kernel[grid](
        x, weight, s, bias if bias is not None else s, target,
        M, N, K, x.stride(0), weight.stride(0), s.stride(0) if code == 2 else 0, s.stride(1) if code == 2 else 0,
        N if split > 1 else out.stride(0), M * N, ends[0], ends[1],
        SCHEME=code, NUM_SHARDS=min(len(sizes), MAX_SHARDS), SBN=sbn or 1, SBK=sbk or 1,
        HAS_BIAS=bias is not None, SPLIT_K=split, EVEN_K=K % bk == 0,
        BM=cfg.block_m, BN=bn, BK=bk, GROUP_M=cfg.group_m, USE_ASM=use_asm(x),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return finish_split_k(target, bias, out, "FP8") if split > 1 else out
