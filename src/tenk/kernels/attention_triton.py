"""Triton paged attention for a flat mixed batch, and the KV-cache store.

Layouts and metadata are those of `tenk.kernels.attention` (read its docstring first):
  q [T, Hq, D], k/v [T, Hkv, D], k_cache/v_cache [num_blocks, block_size, Hkv, D], out [T, Hq, D].

Two attention kernels:
- `_decode_kernel` (every sequence has q_len <= 1): one program per (sequence, kv head, split). The
  G = Hq / Hkv query heads of a group are the rows of one tile, so each K/V block is loaded once per
  group. Long contexts are split over NUM_SPLITS programs (chosen from the batch size, the head count
  and the block-table width only, so a captured CUDA graph stays valid) and merged by
  `_decode_reduce_kernel`.
- `_prefill_kernel` (mixed batches): rows of a tile are (query position, head-in-group) pairs of one
  sequence and one kv head; programs map to sequences by a binary search over cu_seqlens_q, so the
  grid depends only on T and B (vLLM's unified-attention trick). A sequence with q_len > 0 and an
  empty context (seq_len 0) gets zero rows, as in the reference.
In a mixed batch both run: the decode kernel on the sequences with one query (and a context),
whose G rows would otherwise fill a prefill tile of up to 128 rows, the prefill kernel's tiles on
the others (each kernel's programs for the other kind exit at once, so a CUDA graph holds both).
Both run an online softmax in fp32 (exp2 with log2(e) folded into the scale) and read K/V pages
through the block table. No host syncs: everything the host needs is a shape or meta.max_seqlen_q.

fp8 (e4m3) KV cache: pass k_scale / v_scale (per tensor, Python floats). The store divides by the
scale and saturates at +-448; attention folds k_scale into the softmax scale and v_scale into the
output. The torch references for this are `store_kvcache_scaled_ref` / `paged_attention_scaled_ref`.
The decode kernel computes an fp8 cache's tiles in fp16 (`FP8_KV_F16`): E4M3 -> fp16 is one exact
conversion per two values (cvt.rn.f16x2.e4m3x2), where E4M3 -> bf16 takes either Triton's cast (that
conversion, then one F2F per value on the conversion pipe) or an integer sequence of 4
instructions per two values. q is cast to fp16 once per program, saturated at +-65,504 (bf16 can
hold more; a query that large is no model's), and the probabilities P enter the second MMA in fp16,
which holds [0, 1] more finely than bf16. On the GPU the V tile is converted as loaded (d
contiguous) and reaches the MMA as fp16 through ldmatrix.trans; Triton would move a plain cast
into the MMA operand load, where an 8-bit tile whose keys are strided loads byte by byte. The
decode loop went from 1,152 sm_90 instructions a warp and K/V step (bf16) to 844 (fp16) to 525
(V converted as loaded), and the program from 162 to 118 registers, so 4 CTAs share an SM
without a register cap. On an H100 the fp16 kernel ran 1.06x-1.12x faster than the bf16 one from
192 sequences of 400 tokens up (benchmarks/results/attn_decode_f16_h100.json), and converting V
as loaded another 1.02x-1.07x (attn_decode_v_loaded_h100.json), as close to the fp32 reference.
The prefill kernel does the same (`FP8_KV_F16_PREFILL`): its loop over a 128-row tile's K/V step
went from 691 to 588 sm_90 instructions a warp (no fp16 -> bf16 F2F a value), and over a 16-row
tile of two-token chunks from 1,011 to 561 (V converted as loaded). On an H100 against the bf16
kernel: 1.05x-1.10x for 1,024-16,384-token prefills, 1.33x for 256 two-token chunks of 400-token
contexts, as close to the fp32 reference (benchmarks/results/attn_prefill_f16_h100.json).
"""

from __future__ import annotations

import math

import torch

from tenk.kernels import fp8_gemm
from tenk.kernels._common import FP8_E4M3_MAX, is_fp8, next_pow2, num_sms, scale_value, use_pdl
from tenk.kernels._tiles import wait_prior_grid
from tenk.kernels._triton import tl, triton
from tenk.kernels.attention import AttentionMetadata, paged_attention_ref, store_kvcache_ref

FP8_KV_F16 = True  # decode: an fp8 cache's tiles computed in fp16 (see the module docstring)
FP8_KV_F16_PREFILL = True  # the prefill kernel likewise
FP16_MAX = tl.constexpr(65504.0) if tl else 65504.0  # q saturates here in the fp16 decode
# E4M3 -> fp16, four values (one register) in two conversions. Triton keeps an asm where it stands
# (is_pure=False), so the V tile is converted in the layout it was loaded in (see the docstring).
_ASM_E4M3X4_TO_F16 = tl.constexpr(
    "{ .reg .b16 lo, hi; mov.b32 {lo, hi}, $2; cvt.rn.f16x2.e4m3x2 $0, lo; cvt.rn.f16x2.e4m3x2 $1, hi; }"
) if tl else None
LOG2E = 1.4426950408889634


# ---------------------------------------------------------------- KV store


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr,
    k_inv_scale, v_inv_scale,
    s_kt, s_kh, s_vt, s_vh,
    s_slot, s_ch,
    HKV: tl.constexpr, D: tl.constexpr, H_PAD: tl.constexpr, D_PAD: tl.constexpr,
    QUANT: tl.constexpr, FP8_MAX: tl.constexpr, PDL: tl.constexpr,
):
    wait_prior_grid(PDL)
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot < 0:
        return
    h = tl.arange(0, H_PAD)[:, None]
    d = tl.arange(0, D_PAD)[None, :]
    m = (h < HKV) & (d < D)
    kk = tl.load(k_ptr + t * s_kt + h * s_kh + d, mask=m)
    vv = tl.load(v_ptr + t * s_vt + h * s_vh + d, mask=m)
    if QUANT:
        kk = tl.minimum(tl.maximum(kk.to(tl.float32) * k_inv_scale, -FP8_MAX), FP8_MAX)
        vv = tl.minimum(tl.maximum(vv.to(tl.float32) * v_inv_scale, -FP8_MAX), FP8_MAX)
    dst = slot * s_slot + h * s_ch + d
    tl.store(kc_ptr + dst, kk.to(kc_ptr.dtype.element_ty), mask=m)
    tl.store(vc_ptr + dst, vv.to(vc_ptr.dtype.element_ty), mask=m)


def _check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if k_cache.shape != v_cache.shape or k_cache.stride() != v_cache.stride():
        raise ValueError("k_cache and v_cache must have the same shape and strides")
    if k_cache.stride(3) != 1 or k_cache.stride(0) != k_cache.shape[1] * k_cache.stride(1):
        raise ValueError("KV cache must be [num_blocks, block_size, Hkv, D] with D contiguous")


def store_kvcache_triton(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Write k/v [T, Hkv, D] (views with any token/head stride) into cache slots; slot -1 = skip."""
    _check_cache(k_cache, v_cache)
    T, hkv, d = k.shape
    if T == 0:
        return
    if k.stride(2) != 1:
        k = k.contiguous()
    if v.stride(2) != 1:
        v = v.contiguous()
    quant = is_fp8(k_cache.dtype)
    pdl = use_pdl(k.device)
    _store_kv_kernel[(T,)](
        k, v, k_cache, v_cache, slot_mapping,
        1.0 / scale_value(k_scale), 1.0 / scale_value(v_scale),
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(1), k_cache.stride(2),
        HKV=hkv, D=d, H_PAD=next_pow2(hkv), D_PAD=next_pow2(d),
        QUANT=quant, FP8_MAX=FP8_E4M3_MAX, PDL=pdl,
        num_warps=1 if hkv * d <= 1024 else 4, launch_pdl=pdl,
    )


# ---------------------------------------------------------------- decode


@triton.jit
def _attend_tile(q, kc_ptr, vc_ptr, row, n_ok, visible, d, d_ok, m_i, l_i, acc, qk_scale,
                 IEEE: tl.constexpr, V_ASM: tl.constexpr):
    """One K/V tile of the online softmax, shared by the decode and prefill kernels: the rows of q
    against the BLOCK_N keys at `row` (cache offsets; n_ok: keys that exist, visible: [rows,
    BLOCK_N] what each row may see). K/V and P take q's dtype for the MMAs (fp16 q: an fp8 cache
    computed in fp16; V_ASM: its V tile converted as loaded). Returns the updated (m_i, l_i, acc)."""
    kt = tl.load(kc_ptr + row[None, :] + d[:, None], mask=n_ok[None, :] & d_ok[:, None], other=0.0)
    if IEEE:
        s = tl.dot(q, kt.to(q.dtype), input_precision="ieee")
    else:
        s = tl.dot(q, kt.to(q.dtype))
    s = tl.where(visible, s * qk_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    vt = tl.load(vc_ptr + row[:, None] + d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    if V_ASM:
        vt = tl.inline_asm_elementwise(_ASM_E4M3X4_TO_F16, "=r,=r,r", [vt], dtype=tl.float16, is_pure=False, pack=4)
    if IEEE:
        acc = acc * alpha[:, None] + tl.dot(p, vt.to(tl.float32), input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), vt.to(q.dtype))
    return m_new, l_i, acc


@triton.jit(do_not_specialize=["s_bt"])
def _decode_kernel(
    q_ptr, kc_ptr, vc_ptr, out_ptr, part_acc_ptr, part_ml_ptr,
    cu_q_ptr, seq_lens_ptr, bt_ptr,
    qk_scale, v_scale,
    s_qt, s_qh, s_ot, s_oh,
    s_kb, s_ks, s_kh, s_bt,
    HQ: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    PAGE: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, IEEE: tl.constexpr,
    KV_F16: tl.constexpr, V_ASM: tl.constexpr, PDL: tl.constexpr,
):
    wait_prior_grid(PDL)
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    q_start = tl.load(cu_q_ptr + seq)
    q_len = tl.load(cu_q_ptr + seq + 1) - q_start
    ctx = tl.load(seq_lens_ptr + seq)
    if (q_len != 1) | (ctx == 0):  # no query, or not one this kernel takes in a mixed batch
        return

    g = tl.arange(0, G_PAD)
    d = tl.arange(0, D_PAD)
    g_ok = g < G
    d_ok = d < D
    head = kvh * G + g
    q = tl.load(q_ptr + q_start * s_qt + head[:, None] * s_qh + d[None, :],
                mask=g_ok[:, None] & d_ok[None, :], other=0.0)
    if KV_F16:
        q = tl.minimum(tl.maximum(q.to(tl.float32), -FP16_MAX), FP16_MAX).to(tl.float16)

    n_tiles = tl.cdiv(ctx, BLOCK_N)
    per_split = tl.cdiv(n_tiles, NUM_SPLITS)
    t0 = split * per_split
    t1 = tl.minimum(n_tiles, t0 + per_split)

    m_i = tl.full([G_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D_PAD], tl.float32)
    kv_head_off = kvh * s_kh
    for t in range(t0, t1):
        n = t * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = n < ctx
        page = tl.load(bt_ptr + seq * s_bt + n // PAGE, mask=n_ok, other=0).to(tl.int64)
        row = page * s_kb + (n % PAGE) * s_ks + kv_head_off  # [BLOCK_N]
        m_i, l_i, acc = _attend_tile(q, kc_ptr, vc_ptr, row, n_ok, n_ok[None, :], d, d_ok, m_i, l_i, acc, qk_scale,
                                     IEEE, V_ASM)

    if NUM_SPLITS == 1:
        o = acc / l_i[:, None] * v_scale
        tl.store(out_ptr + q_start * s_ot + head[:, None] * s_oh + d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=g_ok[:, None] & d_ok[None, :])
    else:
        # Unnormalised partials, [B, Hq, NUM_SPLITS, D] and [B, Hq, NUM_SPLITS, 2] (m, l).
        base = (seq * HQ + head) * NUM_SPLITS + split  # [G_PAD]
        tl.store(part_acc_ptr + base[:, None] * D_PAD + d[None, :], acc, mask=g_ok[:, None])
        tl.store(part_ml_ptr + base * 2, m_i, mask=g_ok)
        tl.store(part_ml_ptr + base * 2 + 1, l_i, mask=g_ok)


@triton.jit
def _decode_reduce_kernel(
    out_ptr, part_acc_ptr, part_ml_ptr, cu_q_ptr, seq_lens_ptr, v_scale,
    s_ot, s_oh,
    HQ: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    NUM_SPLITS: tl.constexpr, S_PAD: tl.constexpr, PDL: tl.constexpr,
):
    wait_prior_grid(PDL)
    seq = tl.program_id(0)
    h = tl.program_id(1)
    q_start = tl.load(cu_q_ptr + seq)
    if (tl.load(cu_q_ptr + seq + 1) - q_start != 1) | (tl.load(seq_lens_ptr + seq) == 0):
        return
    s = tl.arange(0, S_PAD)
    d = tl.arange(0, D_PAD)
    s_ok = s < NUM_SPLITS
    base = (seq * HQ + h) * NUM_SPLITS + s
    m = tl.load(part_ml_ptr + base * 2, mask=s_ok, other=float("-inf"))
    l = tl.load(part_ml_ptr + base * 2 + 1, mask=s_ok, other=0.0)
    m_max = tl.max(m, 0)  # finite: split 0 always holds the first key
    w = tl.exp2(m - m_max)  # empty splits: exp2(-inf) = 0
    acc = tl.load(part_acc_ptr + base[:, None] * D_PAD + d[None, :], mask=s_ok[:, None], other=0.0)
    o = tl.sum(acc * w[:, None], 0) / tl.sum(l * w, 0) * v_scale
    tl.store(out_ptr + q_start * s_ot + h * s_oh + d, o.to(out_ptr.dtype.element_ty), mask=d < D)


def choose_num_splits(num_seqs: int, num_kv_heads: int, max_blocks: int, block_size: int, device) -> int:
    """Split the context only when (sequence, kv head) programs cannot fill the GPU. Depends on shapes
    only (block-table width, not the live context lengths), so a CUDA graph can bake it in."""
    programs = num_seqs * num_kv_heads
    sms = num_sms(device)
    if programs >= sms:
        return 1
    max_tiles = max(1, (max_blocks * block_size) // 256)  # a split should own >= ~256 keys
    return int(max(1, min(16, -(-2 * sms // programs), max_tiles)))


def _fp16_path(q, k_cache, enabled: bool) -> tuple[bool, bool]:
    """(KV_F16, V_ASM): an fp8 cache's tiles computed in fp16, and its V tile converted as loaded
    (inline PTX: on the GPU, or when tests compile the GPU variant; the interpreter runs none)."""
    kv_f16 = enabled and is_fp8(k_cache.dtype) and q.dtype != torch.float32
    return kv_f16, kv_f16 and (q.is_cuda or fp8_gemm.COMPILE_GPU_VARIANT)


def _decode(q, k_cache, v_cache, meta, out, qk_scale, v_scale, num_splits, block_n, **launch):
    """launch: num_warps / num_stages / maxnreg in place of the shipped ones (benchmarks/attn_decode.py sweeps them)."""
    T, hq, d = q.shape
    _, page, hkv, _ = k_cache.shape
    bsz = meta.seq_lens.shape[0]
    group = hq // hkv
    if num_splits is None:
        num_splits = choose_num_splits(bsz, hkv, meta.block_tables.shape[1], page, q.device)
    if block_n is None:
        block_n = 32 if q.dtype == torch.float32 else 64
    d_pad = next_pow2(d)
    ieee = q.dtype == torch.float32
    if num_splits > 1:
        part_acc = torch.empty((bsz, hq, num_splits, d_pad), dtype=torch.float32, device=q.device)
        part_ml = torch.empty((bsz, hq, num_splits, 2), dtype=torch.float32, device=q.device)
    else:
        part_acc = part_ml = out  # unused
    pdl = use_pdl(q.device)
    kv_f16, v_asm = _fp16_path(q, k_cache, FP8_KV_F16)
    _decode_kernel[(bsz, hkv, num_splits)](
        q, k_cache, v_cache, out, part_acc, part_ml,
        meta.cu_seqlens_q, meta.seq_lens, meta.block_tables,
        qk_scale, v_scale,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), meta.block_tables.stride(0),
        HQ=hq, G=group, G_PAD=max(16, next_pow2(group)), D=d, D_PAD=d_pad,
        PAGE=page, BLOCK_N=block_n, NUM_SPLITS=num_splits, IEEE=ieee,
        KV_F16=kv_f16, V_ASM=v_asm, PDL=pdl, launch_pdl=pdl, **{"num_warps": 4, "num_stages": 3, **launch},
    )
    if num_splits > 1:
        _decode_reduce_kernel[(bsz, hq)](
            out, part_acc, part_ml, meta.cu_seqlens_q, meta.seq_lens, v_scale,
            out.stride(0), out.stride(1),
            HQ=hq, D=d, D_PAD=d_pad, NUM_SPLITS=num_splits, S_PAD=next_pow2(num_splits), PDL=pdl,
            num_warps=1 if d_pad * num_splits <= 1024 else 4, launch_pdl=pdl,
        )


# ---------------------------------------------------------------- prefill / mixed


@triton.jit
def _find_seq(cu_q_ptr, target, num_seqs, G: tl.constexpr, BLOCK_M: tl.constexpr):
    """Largest i with cu_q[i] * G // BLOCK_M + i <= target: sequence i owns that many tile slots."""
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        val = tl.load(cu_q_ptr + mid) * G // BLOCK_M + mid
        if val <= target:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit(do_not_specialize=["num_seqs", "s_bt"])
def _prefill_kernel(
    q_ptr, kc_ptr, vc_ptr, out_ptr,
    cu_q_ptr, seq_lens_ptr, bt_ptr, num_seqs,
    qk_scale, v_scale,
    s_qt, s_qh, s_ot, s_oh,
    s_kb, s_ks, s_kh, s_bt,
    G: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    PAGE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
    SKIP_DECODES: tl.constexpr, KV_F16: tl.constexpr, V_ASM: tl.constexpr,
):
    pid = tl.program_id(0)
    kvh = tl.program_id(1)
    seq = _find_seq(cu_q_ptr, pid, num_seqs, G, BLOCK_M)
    q_start = tl.load(cu_q_ptr + seq)
    q_len = tl.load(cu_q_ptr + seq + 1) - q_start
    tile = pid - (q_start * G // BLOCK_M + seq)
    n_rows = q_len * G
    r0 = tile * BLOCK_M
    if r0 >= n_rows:
        return
    ctx = tl.load(seq_lens_ptr + seq)
    if SKIP_DECODES:
        if (q_len == 1) & (ctx > 0):  # _decode_kernel's
            return
    prefix = ctx - q_len  # cached positions before this step's queries

    r = r0 + tl.arange(0, BLOCK_M)  # row = (query position, head in group)
    r_ok = r < n_rows
    qi = r // G
    head = kvh * G + r % G
    d = tl.arange(0, D_PAD)
    d_ok = d < D
    q = tl.load(q_ptr + (q_start + qi)[:, None] * s_qt + head[:, None] * s_qh + d[None, :],
                mask=r_ok[:, None] & d_ok[None, :], other=0.0)
    if KV_F16:
        q = tl.minimum(tl.maximum(q.to(tl.float32), -FP16_MAX), FP16_MAX).to(tl.float16)
    q_pos = prefix + qi  # absolute position; rows past n_rows see everything (no NaN rows)

    last_row = tl.minimum(r0 + BLOCK_M, n_rows) - 1
    kv_end = prefix + last_row // G + 1
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    kv_head_off = kvh * s_kh
    for start in range(0, kv_end, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_ok = n < kv_end
        page = tl.load(bt_ptr + seq * s_bt + n // PAGE, mask=n_ok, other=0).to(tl.int64)
        row = page * s_kb + (n % PAGE) * s_ks + kv_head_off
        visible = (n[None, :] <= q_pos[:, None]) & n_ok[None, :]
        m_i, l_i, acc = _attend_tile(q, kc_ptr, vc_ptr, row, n_ok, visible, d, d_ok, m_i, l_i, acc, qk_scale,
                                     IEEE, V_ASM)

    # a sequence with an empty context (the padding of a mixed-step CUDA graph) has no key to
    # attend: its rows are zeros, not 0 / 0
    o = tl.where(l_i[:, None] > 0, acc / l_i[:, None], 0.0) * v_scale
    tl.store(out_ptr + (q_start + qi)[:, None] * s_ot + head[:, None] * s_oh + d[None, :],
             o.to(out_ptr.dtype.element_ty), mask=r_ok[:, None] & d_ok[None, :])


def _prefill(q, k_cache, v_cache, meta, out, qk_scale, v_scale, block_m, block_n, skip_decodes=False):
    T, hq, d = q.shape
    _, page, hkv, _ = k_cache.shape
    bsz = meta.seq_lens.shape[0]
    group = hq // hkv
    if block_m is None:
        rows = meta.max_seqlen_q * group
        block_m = 16 if rows <= 16 else 64 if (rows <= 64 or d > 128 or q.dtype == torch.float32) else 128
    if block_n is None:
        block_n = 32 if q.dtype == torch.float32 else 64
    grid = (T * group // block_m + bsz, hkv)
    kv_f16, v_asm = _fp16_path(q, k_cache, FP8_KV_F16_PREFILL)
    _prefill_kernel[grid](
        q, k_cache, v_cache, out,
        meta.cu_seqlens_q, meta.seq_lens, meta.block_tables, bsz,
        qk_scale, v_scale,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), meta.block_tables.stride(0),
        G=group, D=d, D_PAD=next_pow2(d),
        PAGE=page, BLOCK_M=block_m, BLOCK_N=block_n, IEEE=q.dtype == torch.float32, SKIP_DECODES=skip_decodes,
        KV_F16=kv_f16, V_ASM=v_asm, num_warps=8 if block_m >= 128 else 4, num_stages=2 if d > 128 else 3,
    )


# ---------------------------------------------------------------- entry point


def paged_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    out: torch.Tensor | None = None,
    num_kv_splits: int | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    mixed_decodes: bool = True,
) -> torch.Tensor:
    """Same contract as `paged_attention_ref`: this step's k/v are already in the cache (k, v unused).
    Decode-only batches (every q_len <= 1) take the grouped decode kernel. In other batches its
    one-query sequences go to the decode kernel too (their G rows would fill a prefill tile of
    block_m rows), the rest to the prefill kernel; `mixed_decodes=False`: all to the prefill kernel."""
    _check_cache(k_cache, v_cache)
    T, hq, d = q.shape
    hkv = k_cache.shape[2]
    if hq % hkv != 0:
        raise ValueError(f"query heads ({hq}) must be a multiple of kv heads ({hkv})")
    if k_cache.shape[3] != d:
        raise ValueError(f"head_dim of q ({d}) and of the KV cache ({k_cache.shape[3]}) differ")
    if q.stride(2) != 1:
        q = q.contiguous()
    if out is None:
        out = torch.empty((T, hq, d), dtype=q.dtype, device=q.device)
    if T == 0:
        return out
    qk_scale = float(scale) * scale_value(k_scale) * LOG2E
    v_scale = scale_value(v_scale)
    decode_only = meta.decode_only or meta.max_seqlen_q <= 1
    if decode_only or mixed_decodes:  # in a mixed batch: its one-query sequences
        _decode(q, k_cache, v_cache, meta, out, qk_scale, v_scale, num_kv_splits, block_n)
    if not decode_only:  # the prefill kernel's tiles take the rest (all, without mixed_decodes)
        _prefill(q, k_cache, v_cache, meta, out, qk_scale, v_scale, block_m, block_n, skip_decodes=mixed_decodes)
    return out


# ---------------------------------------------------------------- references with KV scales


def quantize_kv_ref(x: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """x / scale saturated to the fp8 range, then cast (what the store kernel does)."""
    if not is_fp8(dtype):
        return x.to(dtype)
    return (x.float() / scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(dtype)


def store_kvcache_scaled_ref(k, v, k_cache, v_cache, slot_mapping, k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    store_kvcache_ref(quantize_kv_ref(k, k_scale, k_cache.dtype), quantize_kv_ref(v, v_scale, v_cache.dtype),
                      k_cache, v_cache, slot_mapping)


def paged_attention_scaled_ref(q, k, v, k_cache, v_cache, meta, scale, k_scale: float = 1.0, v_scale: float = 1.0):
    """Reference for a scaled (fp8) cache: dequantize the cache to fp32, then the plain reference."""
    kc = k_cache.float() * k_scale
    vc = v_cache.float() * v_scale
    return paged_attention_ref(q, k, v, kc, vc, meta, scale)


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
