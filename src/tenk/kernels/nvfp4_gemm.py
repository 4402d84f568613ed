"""NVFP4 weight-only GEMM for Hopper (W4A16): y [M, N] = x [M, K] @ dequant(W)^T, W kept 4-bit.

Hopper has no FP4 tensor cores, so the kernel dequantizes inside the GEMM and multiplies in bf16
(DESIGN.md "Quantized formats"). Everything here is about doing that dequantization with few
instructions and without a shared-memory round trip:

Kernel layout ("quarters"), made once at load time by `pack_for_kernel`:
  K is cut into four quarters of Q = K/4 columns. One int16 holds the four codes of columns
  c, Q + c, 2Q + c, 3Q + c of a row, bits placed so each decodes with one or two shift/mask
  instructions into a bf16 (value = E2M1 * 2^-126):
      quarter 0: magnitude bits 0-2, sign bit 9      bf16 = (h << 6) & 0x81C0
      quarter 1: magnitude bits 3-5, sign bit 12     bf16 = (h << 3) & 0x81C0
      quarter 2: magnitude bits 6-8, sign bit 15     bf16 = h & 0x81C0
      quarter 3: m bit 10, e0 bit 11, e1 bit 13, sign bit 14 (the bits left over)
  weight  int16 [..., N, K/4]     (same bytes as ModelOpt's uint8 [N, K/2])
  scales  int32 [..., N, K/64]    byte j of column t = E4M3 scale of quarter j's group t
  The four scales of one K step share an int32, so each row's scale load is >= 4 bytes and
  Triton pipelines it through cp.async with the weights.
Decoding: a unary pure inline-asm per quarter (two int16 per register, `pack=2`) then a bf16x2
multiply by the block scale, converted to bf16 * 2^118 once per 16 values (block scales are made
positive and nonzero at load time, exactly: see `_canonical`). The product is
E2M1 * E4M3 * 2^-8, exact in bf16 (at most 6 significant bits, far from under/overflow); the
2^8 goes into the FP32 global scale applied to the fp32 accumulator at the end.
Orientation: the kernel computes out^T tiles [BN weight rows, BM tokens] = W_tile @ x_tile^T, so
the dequantized weights are wgmma's register operand A (Triton hoists the decode into the MMA's
register layout; B = x comes from shared memory) and the token count is the MMA's N dimension,
which may be as small as 16: decode batches waste no tensor-core work on padding.
Under Triton's interpreter (CPU tests) the same bit recipe runs as plain integer ops in fp32.

`nvfp4_gemm` (Triton) and `nvfp4_gemm_ref` (torch: dequantize + matmul) share one signature and
accept either the ModelOpt layout (uint8 [N, K/2] + E4M3 [N, K/16]) or the kernel layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tenk.kernels._tiles import dense_tile, shard_scale, store_tile
from tenk.kernels._triton import tl, triton
from tenk.kernels.configs.nvfp4 import Nvfp4Config, dense_config

GROUP_SIZE = 16  # NVFP4: one E4M3 block scale per 16 values along K
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
QUARTERS = 4
K_ALIGN = QUARTERS * GROUP_SIZE  # K must be a multiple of 64: each quarter whole 16-groups
SCALE_EXP = 118  # block scales enter the kernel as E4M3 * 2^118 ...
# ... so products carry 2^(118 - 126) = 2^-8, which the kernels undo with the global scale (gs * 256)


COMPILE_GPU_VARIANT = False  # tests set it to compile the inline-asm variant from CPU tensors (sm_90 checks)


def use_asm(x: torch.Tensor) -> bool:
    """The inline-asm decoding serves bf16 activations on the GPU; elsewhere the portable twin runs."""
    return (x.is_cuda or COMPILE_GPU_VARIANT) and x.dtype == torch.bfloat16


# ---------------------------------------------------------------- format math (torch)
# The NVFP4 definitions live in tenk.quant.nvfp4; kernels/ sits below quant/ in the import order, so
# the few lines the references need are repeated here (tests check both agree).


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., K/2] (low nibble = even k) -> uint8 codes [..., K]."""
    return torch.stack((packed & 0x0F, packed >> 4), dim=-1).flatten(-2)


def dequantize(packed: torch.Tensor, scale: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """ModelOpt layout -> fp32 [..., N, K] = E2M1 * block scale * global scale ([...] or scalar)."""
    codes = unpack_codes(packed)
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=packed.device)
    vals = table[codes.long()].unflatten(-1, (scale.shape[-1], GROUP_SIZE))
    gs = global_scale.float().reshape(*global_scale.shape, *([1] * (vals.ndim - global_scale.dim())))
    return (vals * scale.float().unsqueeze(-1) * gs).flatten(-2)


# ---------------------------------------------------------------- kernel layout (torch, load time)


def _quarter_bits(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes [..., N, K] -> int32 [..., N, K/4] holding the four quarter codes per column."""
    q = codes.shape[-1] // QUARTERS
    c = [codes[..., j * q : (j + 1) * q].to(torch.int32) for j in range(QUARTERS)]
    mag = [x & 7 for x in c]
    sign = [x >> 3 for x in c]
    d = c[3]
    return (
        mag[0] | (sign[0] << 9)
        | (mag[1] << 3) | (sign[1] << 12)
        | (mag[2] << 6) | (sign[2] << 15)
        | ((d & 1) << 10) | (((d >> 1) & 1) << 11) | (((d >> 2) & 1) << 13) | (sign[3] << 14)
    )


def _canonical(codes: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same dequantized values with every block scale positive and nonzero (the kernel's scale
    conversion relies on it): a zero scale becomes 1.0 over zero codes, a negative one is negated
    and its block's code signs flipped. codes uint8 [..., N, K], scale E4M3 [..., N, K/16]."""
    bits = scale.view(torch.uint8)
    zero = (bits & 0x7F) == 0
    neg = ((bits & 0x80) != 0) & ~zero
    group = codes.shape[-1] // scale.shape[-1]
    expand = lambda m: m.repeat_interleave(group, dim=-1)
    codes = torch.where(expand(zero), torch.zeros_like(codes), codes)
    codes = codes ^ (expand(neg).to(torch.uint8) << 3)
    bits = torch.where(zero, torch.full_like(bits, 0x38), bits & 0x7F)  # 0x38 = 1.0
    return codes, bits.view(torch.float8_e4m3fn)


def _pack_rows(weight: torch.Tensor, weight_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    codes, scale = _canonical(unpack_codes(weight), weight_scale)
    bits = _quarter_bits(codes)
    wq = (bits - ((bits >> 15) << 16)).to(torch.int16)  # two's complement view of the 16 bits
    b = scale.view(torch.uint8).to(torch.int32)
    t = b.shape[-1] // QUARTERS
    sq = b[..., :t] | (b[..., t : 2 * t] << 8) | (b[..., 2 * t : 3 * t] << 16) | (b[..., 3 * t :] << 24)
    return wq, sq


def pack_for_kernel(weight: torch.Tensor, weight_scale: torch.Tensor,
                    chunk_bytes: int = 256 << 20) -> tuple[torch.Tensor, torch.Tensor]:
    """ModelOpt layout -> kernel layout: (uint8 [..., N, K/2], E4M3 [..., N, K/16]) ->
    (int16 [..., N, K/4], int32 [..., N, K/64]): same bytes, same dequantized values. Works through
    the rows in chunks so the temporaries (~24 bytes per value) stay under chunk_bytes."""
    k = weight.shape[-1] * 2
    if weight.dtype != torch.uint8 or k % K_ALIGN:
        raise ValueError(f"the NVFP4 kernels need K divisible by {K_ALIGN}, got K={k} ({weight.dtype})")
    if weight_scale.shape[-1] * GROUP_SIZE != k or weight_scale.shape[:-1] != weight.shape[:-1]:
        raise ValueError(f"NVFP4 block scales {tuple(weight_scale.shape)} do not fit the weight {tuple(weight.shape)}")
    lead = weight.shape[:-1]
    w2 = weight.reshape(-1, k // 2)
    s2 = weight_scale.reshape(-1, k // GROUP_SIZE)
    wq = torch.empty((w2.shape[0], k // 4), dtype=torch.int16, device=weight.device)
    sq = torch.empty((w2.shape[0], k // K_ALIGN), dtype=torch.int32, device=weight.device)
    rows = max(1, chunk_bytes // (24 * k))
    for r0 in range(0, w2.shape[0], rows):
        wq[r0 : r0 + rows], sq[r0 : r0 + rows] = _pack_rows(w2[r0 : r0 + rows], s2[r0 : r0 + rows])
    return wq.reshape(*lead, k // 4), sq.reshape(*lead, k // K_ALIGN)


def unpack_from_kernel(wq: torch.Tensor, sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel layout (rows or expert tiles) -> ModelOpt layout (the canonical form of what was packed)."""
    wq, sq = untile_experts(wq, sq)
    h = wq.to(torch.int32) & 0xFFFF
    sign = [(h >> 9) & 1, (h >> 12) & 1, (h >> 15) & 1, (h >> 14) & 1]
    mag = [h & 7, (h >> 3) & 7, (h >> 6) & 7, ((h >> 10) & 1) | (((h >> 11) & 1) << 1) | (((h >> 13) & 1) << 2)]
    codes = torch.cat([(m | (s << 3)) for m, s in zip(mag, sign)], dim=-1).to(torch.uint8)  # [..., N, K]
    scale = torch.cat([((sq >> (8 * j)) & 0xFF).to(torch.uint8) for j in range(QUARTERS)], dim=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous(), scale.view(torch.float8_e4m3fn)


def is_kernel_layout(weight: torch.Tensor) -> bool:
    return weight.dtype == torch.int16


def to_kernel_layout(weight: torch.Tensor, weight_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (weight, weight_scale) if is_kernel_layout(weight) else pack_for_kernel(weight, weight_scale)


def to_modelopt_layout(weight: torch.Tensor, weight_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return unpack_from_kernel(weight, weight_scale) if is_kernel_layout(weight) else (weight, weight_scale)


# ---------------------------------------------------------------- expert tiles (MoE weights, load time)
# A decode-size MoE GEMM streams each expert's weights once. In the row layout one K step of a tile
# reads BKQ * 2 bytes from each of its BN rows: runs of 32 to 128 bytes, one row apart. Expert tiles
# store each group of TN rows chunk by chunk of TQ columns, each chunk row-major
# ([..., N/TN, Q/TQ, TN, TQ]); a K step with BKQ == TQ then reads BN/TN whole chunks of
# TN * TQ * 2 contiguous bytes. Block scales: [..., N/TN, Q/16, TN]. Same values, same kernels (TN,
# TQ constexprs pick the addressing; TN = 1 is the row layout), same results bit for bit, and any
# BKQ still works (slower when it is not TQ). On an H100, with the tables' decode configs, each
# GEMM moved 3% to 10% more bytes per second from [BN, BKQ] row-major chunks than from rows, while
# chunks of 16 columns (every BKQ whole chunks) were no faster than rows.
# rows per tile group (any block_n works: rows are addressed one by one). 16 to 128 measured within
# 2% of each other at 16 to 1,024 tokens on an H100; 32 was 5% ahead at 1 token for Qwen3-30B-A3B
TILE_ROWS = 32


def is_tiled(wq: torch.Tensor, sq: torch.Tensor) -> bool:
    """Expert tiles carry one more dimension than their scales; the row layout has as many."""
    return wq.dtype == torch.int16 and wq.dim() == sq.dim() + 1


def can_tile(wq: torch.Tensor, cols: int, rows: int = TILE_ROWS) -> bool:
    return (wq.dtype == torch.int16 and wq.dim() >= 2 and wq.shape[-2] % rows == 0 and wq.shape[-1] % cols == 0
            and cols in (16, 32, 64, 128))


def tile_experts(wq: torch.Tensor, sq: torch.Tensor, cols: int,
                 rows: int = TILE_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel row layout (int16 [..., N, Q], int32 [..., N, Q/16]) -> expert tiles (int16
    [..., N/rows, Q/cols, rows, cols], int32 [..., N/rows, Q/16, rows]). rows must divide N (and,
    for w1|w3, each half, so no tile mixes gate and up rows); cols (16 to 128) divide Q."""
    if not can_tile(wq, cols, rows) or sq.shape != (*wq.shape[:-1], wq.shape[-1] // 16):
        raise ValueError(f"cannot tile NVFP4 weights {tuple(wq.shape)} / scales {tuple(sq.shape)} "
                         f"into {rows} x {cols} chunks")
    *lead, n, q = wq.shape
    g = n // rows
    # copy_ from the strided views: no temporary beyond the tiled copy itself
    wt = torch.empty((*lead, g, q // cols, rows, cols), dtype=wq.dtype, device=wq.device)
    wt.copy_(wq.reshape(*lead, g, rows, q // cols, cols).transpose(-3, -2))
    st = torch.empty((*lead, g, q // 16, rows), dtype=sq.dtype, device=sq.device)
    st.copy_(sq.reshape(*lead, g, rows, q // 16).transpose(-2, -1))
    return wt, st


def untile_experts(wq: torch.Tensor, sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert tiles -> the row layout (a copy); row-layout weights pass through."""
    if not is_tiled(wq, sq):
        return wq, sq
    *lead, g, qc, rows, cols = wq.shape
    return (wq.transpose(-3, -2).reshape(*lead, g * rows, qc * cols),
            sq.transpose(-2, -1).reshape(*lead, g * rows, sq.shape[-2]))


def expert_layout(wq: torch.Tensor, sq: torch.Tensor) -> tuple[int, int, int, int, int, int, int, int]:
    """(TN, TQ, N, Q, s_we, s_wn, s_se, s_sn) of expert weights [E, ...] in either layout, as the
    kernels address them: TN 1 is the row layout; for tiles s_wn = Q and s_sn = Q/16 are the row
    strides inside a tile group (a group spans TN of them)."""
    if not is_tiled(wq, sq):
        return 1, 1, wq.shape[1], wq.shape[2], wq.stride(0), wq.stride(1), sq.stride(0), sq.stride(1)
    if not (wq.is_contiguous() and sq.is_contiguous()):
        raise ValueError("tiled NVFP4 experts must be contiguous")
    tn, tq = wq.shape[3], wq.shape[4]
    q = wq.shape[2] * tq
    return tn, tq, wq.shape[1] * tn, q, wq.stride(0), q, sq.stride(0), q // 16


# ---------------------------------------------------------------- decoding (Triton device functions)


@triton.jit
def tile_offsets(offs_n, N, s_wn, s_sn, TN: tl.constexpr, TQ: tl.constexpr):
    """(weight, scale) element offsets of weight rows offs_n in the row layout (TN 1) or in expert
    tiles (see TILE_ROWS); rows past N point at valid ones (callers drop their results). In tiles
    the clamp is per tile group, so Triton still sees runs of TN adjacent scale words down the rows."""
    if TN == 1:
        rows = tl.where(offs_n < N, offs_n, 0).to(tl.int64)
        return rows * s_wn, rows * s_sn
    group = tl.minimum(offs_n // TN, N // TN - 1).to(tl.int64)
    r = offs_n % TN
    return group * (TN * s_wn) + r * TQ, group * (TN * s_sn) + r


@triton.jit
def tile_step(kk, BKQ: tl.constexpr, TN: tl.constexpr, TQ: tl.constexpr):
    """Offset of the K step starting at int16 column kk (a multiple of BKQ) from the row offsets.
    Written so Triton can prove it a multiple of 16 bytes (a plain kk % TQ hides that, and the loads
    lose their cp.async pipelining: 255 registers and spills instead of ~100)."""
    if TN == 1:
        return kk
    if BKQ >= TQ:
        return kk * TN
    return (kk // TQ) * (TN * TQ) + ((kk // BKQ) % (TQ // BKQ)) * BKQ


@triton.jit
def tile_cols(c, BKQ: tl.constexpr, TN: tl.constexpr, TQ: tl.constexpr):
    """Offsets of int16 columns c [0, BKQ) of one K step from its start, in either layout."""
    if TN == 1 or BKQ <= TQ:
        return c
    return (c // TQ) * (TN * TQ) + c % TQ


# One unary inline asm per quarter: Triton only hoists single-input, single-output pure asm into the
# MMA's register layout. `pack=2`: one 32-bit register = two int16 -> two bf16 (same recipe per half).
_ASM_Q0 = tl.constexpr("{ .reg .b32 t; shl.b32 t, $1, 6; and.b32 $0, t, 0x81C081C0; }") if tl else None
_ASM_Q1 = tl.constexpr("{ .reg .b32 t; shl.b32 t, $1, 3; and.b32 $0, t, 0x81C081C0; }") if tl else None
_ASM_Q2 = tl.constexpr("and.b32 $0, $1, 0x81C081C0;") if tl else None
_ASM_Q3 = tl.constexpr(
    "{ .reg .b32 a, b, c; shr.b32 a, $1, 4; shr.b32 b, $1, 5; shl.b32 c, $1, 1; and.b32 a, a, 0x00C000C0; "
    "and.b32 b, b, 0x01000100; and.b32 c, c, 0x80008000; or.b32 a, a, b; or.b32 $0, a, c; }"
) if tl else None
# Block scales: one int32 holds the E4M3 scales of the four quarters; the hardware converts two E4M3
# to f16x2 (exact), and f16 -> bf16 * 2^118 is a shift and an exponent add (positive nonzero scales:
# `pack_for_kernel` makes them so). Four bf16 out, one per quarter.
_ASM_SCALES = tl.constexpr(
    "{ .reg .b16 lo, hi; .reg .b32 a, b; mov.b32 {lo, hi}, $4; "
    "cvt.rn.f16x2.e4m3x2 a, lo; cvt.rn.f16x2.e4m3x2 b, hi; "
    "shr.b32 a, a, 3; and.b32 a, a, 0x0FFF0FFF; add.u32 a, a, 0x73007300; "
    "shr.b32 b, b, 3; and.b32 b, b, 0x0FFF0FFF; add.u32 b, b, 0x73007300; "
    "mov.b32 {$0, $1}, a; mov.b32 {$2, $3}, b; }"
) if tl else None


@triton.jit
def _code_bits(e, J: tl.constexpr):
    """Portable twin of the asm: int32 e (the int16 as 0..65535) -> the bf16 bit pattern of quarter J."""
    if J == 0:
        r = (e << 6) & 0x81C0
    elif J == 1:
        r = (e << 3) & 0x81C0
    elif J == 2:
        r = e & 0x81C0
    else:
        r = ((e >> 4) & 0x00C0) | ((e >> 5) & 0x0100) | ((e << 1) & 0x8000)
    return r


@triton.jit
def _codes(h, J: tl.constexpr, USE_ASM: tl.constexpr):
    """int16 [BN, BKQ] -> quarter J's codes as numbers E2M1 * 2^-126 (bf16 with asm, else fp32)."""
    if USE_ASM:
        if J == 0:
            c = tl.inline_asm_elementwise(_ASM_Q0, "=r,r", [h], dtype=tl.bfloat16, is_pure=True, pack=2)
        elif J == 1:
            c = tl.inline_asm_elementwise(_ASM_Q1, "=r,r", [h], dtype=tl.bfloat16, is_pure=True, pack=2)
        elif J == 2:
            c = tl.inline_asm_elementwise(_ASM_Q2, "=r,r", [h], dtype=tl.bfloat16, is_pure=True, pack=2)
        else:
            c = tl.inline_asm_elementwise(_ASM_Q3, "=r,r", [h], dtype=tl.bfloat16, is_pure=True, pack=2)
    else:
        c = (_code_bits(h.to(tl.int32) & 0xFFFF, J) << 16).to(tl.float32, bitcast=True)
    return c


@triton.jit
def _scale_f32(sv, J: tl.constexpr):
    s8 = ((sv >> (8 * J)) & 0xFF).to(tl.uint8).to(tl.float8e4nv, bitcast=True)
    return s8.to(tl.float32) * 3.3230699894622896e35  # 2^118


@triton.jit
def _expand(s, BN: tl.constexpr, BKQ: tl.constexpr):
    """[BN, BKQ/16] -> [BN, BKQ]: each block scale over its 16 columns."""
    return tl.reshape(tl.broadcast_to(s[:, :, None], (BN, BKQ // 16, 16)), (BN, BKQ))


@triton.jit
def _scales(sv, BN: tl.constexpr, BKQ: tl.constexpr, USE_ASM: tl.constexpr):
    """int32 [BN, BKQ/16] -> the four quarters' block scales * 2^118, each [BN, BKQ]."""
    if USE_ASM:
        s0, s1, s2, s3 = tl.inline_asm_elementwise(_ASM_SCALES, "=h,=h,=h,=h,r", [sv], dtype=(tl.bfloat16,) * 4,
                                                   is_pure=True, pack=1)
    else:
        s0 = _scale_f32(sv, 0)
        s1 = _scale_f32(sv, 1)
        s2 = _scale_f32(sv, 2)
        s3 = _scale_f32(sv, 3)
    return _expand(s0, BN, BKQ), _expand(s1, BN, BKQ), _expand(s2, BN, BKQ), _expand(s3, BN, BKQ)


@triton.jit
def _mma(w, xt, acc, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(w, xt, acc, input_precision="ieee")
    return tl.dot(w, xt, acc)


@triton.jit
def _accumulate(acc, acc2, w_rows, s_rows, w_off2, s_off2, x_cols, x_ok, k0, k1, Q,
                BN: tl.constexpr, BKQ: tl.constexpr, COMPUTE: tl.constexpr, USE_ASM: tl.constexpr,
                IEEE: tl.constexpr, TWO: tl.constexpr, TN: tl.constexpr, TQ: tl.constexpr):
    """acc [BN, BM] += W[rows, k] @ x[cols, k]^T over quarter columns [k0, k1) of all four quarters;
    TWO: also acc2 with the rows w_off2 / s_off2 further on (the up half of w1|w3), sharing x.
    w_rows: int16 pointers [BN, 1] to each weight row (masked rows point at a valid row and are
    zeroed by the caller), s_rows: int32 pointers [BN, 1] (both from tile_offsets; TN, TQ: the
    layout), x_cols: pointers [1, BM] to each token. k0 < k1: every split owns a K step
    (nonempty_splits); said to the compiler, it drops the loop's zero-trip path, whose accumulator
    copies before the last wgmma wait made ptxas serialize every wgmma of the kernel (C7515)."""
    tl.assume(k0 < k1)
    c = tl.arange(0, BKQ)
    wc = tile_cols(c, BKQ, TN, TQ)[None, :]
    g = tl.arange(0, BKQ // 16)
    for kk in range(k0, k1, BKQ):
        h = tl.load(w_rows + tile_step(kk, BKQ, TN, TQ) + wc)  # [BN, BKQ] int16
        sa, sb, sc, sd = _scales(tl.load(s_rows + (kk // 16 + g)[None, :] * TN), BN, BKQ, USE_ASM)
        x0 = tl.load(x_cols + (kk + c)[:, None], mask=x_ok, other=0.0)  # [BKQ, BM] of quarter 0
        x1 = tl.load(x_cols + (Q + kk + c)[:, None], mask=x_ok, other=0.0)
        x2 = tl.load(x_cols + (2 * Q + kk + c)[:, None], mask=x_ok, other=0.0)
        x3 = tl.load(x_cols + (3 * Q + kk + c)[:, None], mask=x_ok, other=0.0)
        acc = _mma((_codes(h, 0, USE_ASM) * sa).to(COMPUTE), x0, acc, IEEE)
        acc = _mma((_codes(h, 1, USE_ASM) * sb).to(COMPUTE), x1, acc, IEEE)
        acc = _mma((_codes(h, 2, USE_ASM) * sc).to(COMPUTE), x2, acc, IEEE)
        acc = _mma((_codes(h, 3, USE_ASM) * sd).to(COMPUTE), x3, acc, IEEE)
        if TWO:
            h2 = tl.load(w_rows + w_off2 + tile_step(kk, BKQ, TN, TQ) + wc)
            ta, tb, tc, td = _scales(tl.load(s_rows + s_off2 + (kk // 16 + g)[None, :] * TN), BN, BKQ, USE_ASM)
            acc2 = _mma((_codes(h2, 0, USE_ASM) * ta).to(COMPUTE), x0, acc2, IEEE)
            acc2 = _mma((_codes(h2, 1, USE_ASM) * tb).to(COMPUTE), x1, acc2, IEEE)
            acc2 = _mma((_codes(h2, 2, USE_ASM) * tc).to(COMPUTE), x2, acc2, IEEE)
            acc2 = _mma((_codes(h2, 3, USE_ASM) * td).to(COMPUTE), x3, acc2, IEEE)
    return acc, acc2


# ---------------------------------------------------------------- dense kernel


@triton.jit(do_not_specialize=["M"])
def _nvfp4_gemm_kernel(
    x_ptr, wq_ptr, sq_ptr, gs_ptr, bias_ptr, out_ptr,
    M, N, Q, s_xm, s_wn, s_sn, s_om, s_os, end0, end1,
    NUM_SHARDS: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BKQ: tl.constexpr, GROUP_M: tl.constexpr, USE_ASM: tl.constexpr,
):
    """out^T tile [BN, BM] for one split of K. SPLIT_K == 1: out = acc * global scale (+ bias) in
    out's dtype; else fp32 partials at out + pid_k * s_os (the reduce kernel finishes them)."""
    pid_k, _, offs_m, offs_n, m_ok, n_ok, rows = dense_tile(M, N, BM, BN, GROUP_M)  # masked rows: zeroed below
    w_rows = wq_ptr + rows[:, None] * s_wn
    s_rows = sq_ptr + rows[:, None] * s_sn
    x_cols = x_ptr + offs_m.to(tl.int64)[None, :] * s_xm
    steps = tl.cdiv(Q // BKQ, SPLIT_K)
    k0 = pid_k * steps * BKQ
    k1 = tl.minimum(Q, k0 + steps * BKQ)
    COMPUTE: tl.constexpr = x_ptr.dtype.element_ty
    acc = tl.zeros([BN, BM], tl.float32)
    acc, unused = _accumulate(acc, acc, w_rows, s_rows, 0, 0, x_cols, m_ok[None, :], k0, k1, Q, BN, BKQ, COMPUTE,
                           USE_ASM, COMPUTE == tl.float32, False, 1, 1)

    gs = shard_scale(gs_ptr, offs_n, end0, end1, NUM_SHARDS, BN)
    y = acc * (gs * 256.0)[:, None]  # 256 undoes the 2^-8 of the scales (SCALE_EXP)
    y = tl.where(n_ok[:, None], y, 0.0)
    store_tile(y, out_ptr, bias_ptr, offs_m, offs_n, m_ok, n_ok, pid_k, s_om, s_os, HAS_BIAS, SPLIT_K)


@triton.jit(do_not_specialize=["numel"])
def _split_reduce_kernel(part_ptr, bias_ptr, out_ptr, numel, N, s_ps, SPLIT_K: tl.constexpr,
                         HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    """out = sum over splits of the fp32 partials (+ bias), in out's dtype; fixed order."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    acc = tl.zeros([BLOCK], tl.float32)
    part = part_ptr + offs  # stepped split by split: s * s_ps can pass int32
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(part, mask=ok, other=0.0)
        part += s_ps
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs % N, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=ok)


# ---------------------------------------------------------------- dequantize to a dense weight


@triton.jit
def _nvfp4_dequant_kernel(wq_ptr, sq_ptr, gs_ptr, out_ptr, N, Q, s_we, s_wn, s_se, s_sn, s_ge, s_oe, s_on,
                          GS_MODE: tl.constexpr, BN: tl.constexpr, BKQ: tl.constexpr, TN: tl.constexpr,
                          TQ: tl.constexpr):
    """out[e, n, k] = code * block scale * global scale, rounded once to out's dtype (the number the
    torch reference gets). Global scale per GS_MODE: 1 = gs[e]; 2 = gs[e, 0] for rows [0, N/2) and
    gs[e, 1] for the rest (w1 | w3); 3 = one per row, gs[e, n]."""
    e = tl.program_id(2).to(tl.int64)
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    n_ok = offs_n < N
    kk = tl.program_id(1) * BKQ
    w_off, s_off = tile_offsets(offs_n, N, s_wn, s_sn, TN, TQ)
    cols = tile_cols(tl.arange(0, BKQ), BKQ, TN, TQ)
    h = tl.load(wq_ptr + e * s_we + w_off[:, None] + tile_step(kk, BKQ, TN, TQ) + cols[None, :])
    sv = tl.load(sq_ptr + e * s_se + s_off[:, None] + (kk // 16 + tl.arange(0, BKQ // 16))[None, :] * TN)
    if GS_MODE == 1:
        gs = tl.load(gs_ptr + e * s_ge + tl.zeros([BN], tl.int32))
    elif GS_MODE == 2:
        gs = tl.where(offs_n < N // 2, tl.load(gs_ptr + e * s_ge), tl.load(gs_ptr + e * s_ge + 1))
    else:
        gs = tl.load(gs_ptr + e * s_ge + tl.where(n_ok, offs_n, 0))
    g2 = (gs * 256.0)[:, None]  # exact: code * scale * 2^-8 * (gs * 2^8) rounds once, like the reference
    sa, sb, sc, sd = _scales(sv, BN, BKQ, False)
    base = out_ptr + e * s_oe + offs_n.to(tl.int64)[:, None] * s_on + kk + tl.arange(0, BKQ)[None, :]
    dtype = out_ptr.dtype.element_ty
    tl.store(base, (_codes(h, 0, False) * sa * g2).to(dtype), mask=n_ok[:, None])
    tl.store(base + Q, (_codes(h, 1, False) * sb * g2).to(dtype), mask=n_ok[:, None])
    tl.store(base + 2 * Q, (_codes(h, 2, False) * sc * g2).to(dtype), mask=n_ok[:, None])
    tl.store(base + 3 * Q, (_codes(h, 3, False) * sd * g2).to(dtype), mask=n_ok[:, None])


def dequantize_kernel_layout(wq: torch.Tensor, sq: torch.Tensor, gs: torch.Tensor, dtype: torch.dtype,
                             gs_mode: int = 1, out: torch.Tensor | None = None) -> torch.Tensor:
    """Kernel layout [E, N, K/4] (or expert tiles) + scales [E, N, K/64] + global scales (gs_mode 1:
    [E]; 2: [E, 2] for w1|w3; 3: [E, N]) -> [E, N, K] in dtype, the values of tenk.quant.ops'
    dequantization."""
    tn, tq, N, Q, s_we, s_wn, s_se, s_sn = expert_layout(wq, sq)
    E = wq.shape[0]
    if out is None:
        out = torch.empty((E, N, 4 * Q), dtype=dtype, device=wq.device)
    gs = gs.reshape(E, -1).float().contiguous()
    bkq = 64 if Q % 64 == 0 else (32 if Q % 32 == 0 else 16)
    bn = 32
    _nvfp4_dequant_kernel[(triton.cdiv(N, bn), Q // bkq, E)](
        wq, sq, gs, out, N, Q, s_we, s_wn, s_se, s_sn, gs.stride(0),
        out.stride(0), out.stride(1), GS_MODE=gs_mode, BN=bn, BKQ=bkq, TN=tn, TQ=tq, num_warps=4,
    )
    return out


# ---------------------------------------------------------------- launch configs


def nonempty_splits(split_k: int, steps: int) -> int:
    """How many of split_k K splits of `steps` K steps own at least one (each takes cdiv(steps,
    split_k) steps, so the last ones may own none): the kernels assume every split has work."""
    split = max(1, min(split_k, steps))
    return -(-steps // -(-steps // split))


def fit_block_kq(cfg: Nvfp4Config, q: int) -> int:
    """The largest BKQ <= cfg.block_kq that divides the quarter width Q (Q is a multiple of 16)."""
    b = cfg.block_kq
    while q % b:
        b //= 2
    return b




# ---------------------------------------------------------------- public ops


def _shards(weight_scale_2: torch.Tensor, shard_sizes: list[int] | None, n: int) -> tuple[torch.Tensor, int, int, int]:
    gs = weight_scale_2.reshape(-1).float()
    sizes = list(shard_sizes) if shard_sizes else [n]
    if len(sizes) != gs.numel() or sum(sizes) != n or len(sizes) > 3:
        raise ValueError(f"NVFP4 linear: {gs.numel()} global scales for shards {sizes} of {n} rows")
    ends = [sum(sizes[: i + 1]) for i in range(len(sizes))] + [n, n]
    return gs.contiguous(), len(sizes), ends[0], ends[1]


def nvfp4_gemm_ref(x, weight, weight_scale, weight_scale_2, shard_sizes=None, bias=None, config=None) -> torch.Tensor:
    """Torch reference: dequantize exactly (code * block scale * shard global scale, rounded once to
    x's dtype) and multiply with F.linear. Takes either layout."""
    weight, weight_scale = to_modelopt_layout(weight, weight_scale)
    n = weight.shape[0]
    gs, _, _, _ = _shards(weight_scale_2, shard_sizes, n)
    base = dequantize(weight, weight_scale, torch.ones((), device=weight.device))
    rows = gs.repeat_interleave(torch.tensor(list(shard_sizes) if shard_sizes else [n], device=gs.device))
    w = (base * rows.unsqueeze(1)).to(x.dtype)
    return F.linear(x, w, bias)


def nvfp4_gemm(x, weight, weight_scale, weight_scale_2, shard_sizes=None, bias=None, config: Nvfp4Config | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """y [M, N] = x [M, K] @ dequant(W)^T (+ bias) with the Triton kernel (in-kernel dequant), or
    above the crossover M of the config, dequantize once + F.linear. Either weight layout works; the
    ModelOpt one is re-laid per call (slow: do it once at load time with to_kernel_layout)."""
    if x.dim() != 2:
        raise ValueError(f"nvfp4_gemm expects x [M, K], got {tuple(x.shape)}")
    wq, sq = to_kernel_layout(weight, weight_scale)
    M, K = x.shape
    N, q = wq.shape
    if 4 * q != K:
        raise ValueError(f"x has K={K} but the NVFP4 weight holds K={4 * q}")
    gs, num_shards, end0, end1 = _shards(weight_scale_2, shard_sizes, N)
    cfg = config or dense_config(M, N, K, x.device)
    if out is None:
        out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return out
    if cfg.impl == "dequant":
        rows = gs.repeat_interleave(torch.tensor(list(shard_sizes) if shard_sizes else [N], device=gs.device))
        w = dequantize_kernel_layout(wq.unsqueeze(0), sq.unsqueeze(0), rows.unsqueeze(0), x.dtype, gs_mode=3)[0]
        return torch.addmm(bias, x, w.t(), out=out) if bias is not None else torch.mm(x, w.t(), out=out)
    if x.stride(1) != 1:
        x = x.contiguous()
    bkq = fit_block_kq(cfg, q)
    split = nonempty_splits(cfg.split_k, q // bkq)
    grid = (triton.cdiv(M, cfg.block_m) * triton.cdiv(N, cfg.block_n), split)
    target = out if split == 1 else torch.empty((split, M, N), dtype=torch.float32, device=x.device)
    _nvfp4_gemm_kernel[grid](
        x, wq, sq, gs, bias if bias is not None else gs, target,
        M, N, q, x.stride(0), wq.stride(0), sq.stride(0), N if split > 1 else out.stride(0), M * N,
        end0, end1,
        NUM_SHARDS=num_shards, HAS_BIAS=bias is not None, SPLIT_K=split,
        BM=cfg.block_m, BN=cfg.block_n, BKQ=bkq, GROUP_M=cfg.group_m, USE_ASM=use_asm(x),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **cfg.launch_options(),
    )
    return finish_split_k(target, bias, out, "NVFP4") if split > 1 else out


def finish_split_k(partials: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor, what: str) -> torch.Tensor:
    """out [M, N] = the sum of fp32 split-K partials [split, M, N] (+ bias), in out's dtype; shared
    by the NVFP4 and FP8 dense GEMMs."""
    split, M, N = partials.shape
    if not out.is_contiguous():
        raise ValueError(f"split-K {what} GEMM needs a contiguous out")
    block = 1024
    _split_reduce_kernel[(triton.cdiv(M * N, block),)](
        partials, bias if bias is not None else partials, out, M * N, N, M * N,
        SPLIT_K=split, HAS_BIAS=bias is not None, BLOCK=block, num_warps=4,
    )
    return out
