"""NVFP4 kernels (tenk.kernels.nvfp4_gemm / nvfp4_moe) against their torch references.

CPU: the kernels run under Triton's interpreter on tiny shapes (its portable decode twin); the
inline-asm decoding the GPU runs is checked instruction by instruction by a small PTX emulator
over every int16 pattern and every E4M3 scale, and compiled for sm_90 (no spills, shared memory
within an H100's). GPU-marked tests run the real thing at model shapes and skip without CUDA.
"""

import dataclasses
import json
import os
import re

import numpy as np
import pytest
import torch

from tenk.kernels import moe, nvfp4_gemm as ng, nvfp4_moe as nm, nvfp4_moe_wgmma as nm_wgmma
from tenk.kernels._common import next_pow2
from tenk.kernels._triton import tl
from tenk.kernels.configs.nvfp4 import Nvfp4Config, Nvfp4MoeConfig, heuristic_dense, heuristic_moe
from tenk.kernels.testing import capture_cuda_graph, make_moe_case, rel_err
from tenk.quant.nvfp4 import dequantize_nvfp4, quantize_nvfp4
from tests.kernels.conftest import (H100_MAX_SHARED, align_kernels, assert_fits_sm90, assert_shipped_tables_load,
                                    assert_waits_first, ptxas_notes)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # exp overflow on masked garbage lanes

SMALL = Nvfp4Config(block_m=16, block_n=32, block_kq=16)
SPLIT = Nvfp4Config(block_m=16, block_n=64, block_kq=16, split_k=2)


def _quantize_rows(w: torch.Tensor):
    """[..., N, K] float -> ModelOpt packed, block scales, one global scale per leading index."""
    flat = w.reshape(-1, *w.shape[-2:]).float()
    qs = [quantize_nvfp4(m) for m in flat]
    lead = w.shape[:-2]
    return (torch.stack([q for q, _, _ in qs]).reshape(*lead, *qs[0][0].shape),
            torch.stack([s for _, s, _ in qs]).reshape(*lead, *qs[0][1].shape),
            torch.stack([g for _, _, g in qs]).reshape(lead))


def _awkward_scales(scale: torch.Tensor) -> torch.Tensor:
    """Block scales a checkpoint may hold that the kernels' fast conversion cannot: zero, negative,
    subnormal. Packing must keep the dequantized values exact."""
    b = scale.view(torch.uint8).clone()
    flat = b.view(-1)
    flat[0] = 0x00  # zero
    flat[1] |= 0x80  # negative
    flat[2] = 0x01  # smallest subnormal
    flat[3] = 0x7E  # 448
    return b.view(torch.float8_e4m3fn)


# ---------------------------------------------------------------- layout


def test_kernel_format_math_matches_quant():
    g = torch.Generator().manual_seed(0)
    packed = torch.randint(0, 256, (3, 8, 32), generator=g, dtype=torch.uint8)
    scale = torch.rand(3, 8, 4, generator=g).mul(4).to(torch.float8_e4m3fn)
    gs = torch.tensor([0.5, 0.01, 3.0])
    assert torch.equal(ng.dequantize(packed, scale, gs), dequantize_nvfp4(packed, scale, gs))


def test_pack_for_kernel_keeps_every_value():
    g = torch.Generator().manual_seed(1)
    packed = torch.randint(0, 256, (2, 24, 64), generator=g, dtype=torch.uint8)  # every code appears
    scale = _awkward_scales(torch.rand(2, 24, 8, generator=g).mul(2).to(torch.float8_e4m3fn))
    gs = torch.tensor([0.3, 2.0])
    wq, sq = ng.pack_for_kernel(packed, scale, chunk_bytes=1)  # one row per chunk
    assert wq.dtype == torch.int16 and wq.shape == (2, 24, 32) and sq.dtype == torch.int32 and sq.shape == (2, 24, 2)
    assert wq.numel() * 2 == packed.numel() and sq.numel() * 4 == scale.numel()  # same bytes
    back, back_scale = ng.unpack_from_kernel(wq, sq)
    assert torch.equal(dequantize_nvfp4(back, back_scale, gs), dequantize_nvfp4(packed, scale, gs))
    bits = back_scale.view(torch.uint8)
    assert ((bits & 0x80) == 0).all() and ((bits & 0x7F) != 0).all()  # what the GPU conversion needs


def test_pack_rejects_k_not_multiple_of_64():
    with pytest.raises(ValueError, match="divisible by 64"):
        ng.pack_for_kernel(torch.zeros(4, 16, dtype=torch.uint8), torch.zeros(4, 2, dtype=torch.float8_e4m3fn))


# ---------------------------------------------------------------- the inline asm, emulated


def _ptx(asm: str, outs: int, ins: list[np.ndarray]) -> list[np.ndarray]:
    """Runs the few PTX instructions the kernels' asm uses on uint32 numpy arrays ($0.. outputs,
    then inputs); .b16 registers are the low 16 bits."""
    regs: dict[str, np.ndarray] = {f"${outs + i}": v.astype(np.uint32) for i, v in enumerate(ins)}
    val = lambda t: np.uint32(int(t, 0)) if t[0].isdigit() else regs[t]
    for stmt in asm.strip().strip("{}").split(";"):
        stmt = stmt.strip()
        if not stmt or stmt.startswith(".reg"):
            continue
        op, args = stmt.split(None, 1)
        if m := re.fullmatch(r"\{(\S+), (\S+)\}, (\S+)", args):  # mov.b32 {lo, hi}, a: split
            lo, hi, a = m.groups()
            regs[lo], regs[hi] = val(a) & 0xFFFF, val(a) >> 16
            continue
        d, *src = [t.strip() for t in args.split(",")]
        a = val(src[0])
        if op == "shl.b32":
            r = a << val(src[1])
        elif op == "shr.b32":
            r = a >> val(src[1])
        elif op == "and.b32":
            r = a & val(src[1])
        elif op == "or.b32":
            r = a | val(src[1])
        elif op == "add.u32":
            r = a + val(src[1])
        elif op == "cvt.rn.f16x2.e4m3x2":  # low byte -> low half
            f16 = lambda byte: torch.from_numpy((byte & 0xFF).astype(np.uint8)).view(torch.float8_e4m3fn).half()
            lo, hi = f16(a), f16(a >> 8)
            r = (lo.view(torch.int16).numpy().astype(np.uint32) & 0xFFFF) | (
                (hi.view(torch.int16).numpy().astype(np.uint32) & 0xFFFF) << 16)
        else:
            raise AssertionError(f"emulator lacks {op}")
        regs[d] = np.asarray(r, dtype=np.uint64).astype(np.uint32)
    return [regs[f"${i}"] for i in range(outs)]


def _bf16(bits: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((bits & 0xFFFF).astype(np.int32)).to(torch.int16).view(torch.bfloat16).float()


@pytest.mark.parametrize("quarter", range(4))
def test_decode_asm_gives_every_code(quarter):
    """Each quarter's asm maps all 65536 int16 patterns (both halves of the register) to the E2M1
    value of that quarter's code times 2^-126, as the packing placed it."""
    h = np.arange(65536, dtype=np.uint32)
    reg = h | (h[::-1] << 16)  # low half: h, high half: another pattern
    asm = [ng._ASM_Q0, ng._ASM_Q1, ng._ASM_Q2, ng._ASM_Q3][quarter].value
    (out,) = _ptx(asm, 1, [reg])
    packed, _ = ng.unpack_from_kernel(torch.from_numpy(h.astype(np.int32)).to(torch.int16).view(-1, 1),
                                      torch.zeros(65536, 1, dtype=torch.int32))
    codes = ng.unpack_codes(packed)[:, quarter]  # [65536] the code of column `quarter` (K = 4: Q = 1)
    want = torch.tensor(ng.E2M1_VALUES)[codes.long()]
    assert torch.equal(_bf16(out) * 2.0**126, want)
    assert torch.equal(_bf16(out >> 16) * 2.0**126, want.flip(0))


def test_scale_asm_gives_every_e4m3_times_2_118():
    positive = np.arange(1, 0x7F, dtype=np.uint32)  # every positive, nonzero, non-NaN E4M3
    sv = positive | (positive[::-1] << 8) | (positive[::3].repeat(3)[: len(positive)] << 16) | (0x38 << 24)
    outs = _ptx(ng._ASM_SCALES.value, 4, [sv])
    for j, got in enumerate(outs):
        byte = torch.from_numpy(((sv >> (8 * j)) & 0xFF).astype(np.uint8)).view(torch.float8_e4m3fn)
        assert torch.equal(_bf16(got), (byte.float() * 2.0**118).bfloat16().float()), j


def test_portable_twin_matches_asm_bits():
    """The interpreter's integer recipe (_code_bits) and the asm agree bit for bit."""
    h = np.arange(65536, dtype=np.uint32)
    for j, asm in enumerate([ng._ASM_Q0, ng._ASM_Q1, ng._ASM_Q2, ng._ASM_Q3]):
        (out,) = _ptx(asm.value, 1, [h])
        twin = ng._code_bits.fn(torch.from_numpy(h.astype(np.int64)), j)  # the jit function's Python body
        assert np.array_equal(out & 0xFFFF, twin.numpy().astype(np.uint32)), j


# ---------------------------------------------------------------- dense GEMM (interpreter)


def _dense_case(n, k, seed, shards=None):
    g = torch.Generator().manual_seed(seed)
    sizes = shards or [n]
    parts = [torch.randn(s, k, generator=g) * 10.0 ** (i - 1) for i, s in enumerate(sizes)]  # scales far apart
    quant = [quantize_nvfp4(p) for p in parts]
    packed = torch.cat([q for q, _, _ in quant])
    scale = torch.cat([s for _, s, _ in quant])
    gs = torch.stack([x for _, _, x in quant])
    return packed, scale, gs, sizes


@pytest.mark.parametrize("cfg", [SMALL, SPLIT, Nvfp4Config(impl="dequant")], ids=["fused", "split_k", "dequant"])
def test_gemm_matches_reference_fp32(interpret, cfg):
    packed, scale, gs, sizes = _dense_case(96, 128, 0, shards=[32, 48, 16])  # q | k | v, 3 global scales
    x = torch.randn(21, 128, generator=torch.Generator().manual_seed(1))  # 21: not a multiple of 16
    bias = torch.randn(96, generator=torch.Generator().manual_seed(2))
    ref = ng.nvfp4_gemm_ref(x, packed, scale, gs, sizes, bias)
    out = torch.full((21, 96), float("nan"))
    ng.nvfp4_gemm(x, packed, scale, gs, sizes, bias, config=cfg, out=out)
    assert rel_err(out, ref) < 1e-6  # the dequantization is exact: only the summation order differs


def test_gemm_bf16_and_kernel_layout(interpret):
    packed, scale, gs, sizes = _dense_case(80, 192, 3)  # N 80: not a multiple of the 32-row tile
    scale = _awkward_scales(scale)
    wq, sq = ng.pack_for_kernel(packed, scale)
    x = torch.randn(5, 192, generator=torch.Generator().manual_seed(4)).bfloat16()
    ref = ng.nvfp4_gemm_ref(x.float(), packed, scale, gs, sizes)
    out = ng.nvfp4_gemm(x, wq, sq, gs, sizes, config=SMALL)
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) < 4e-3  # one bf16 rounding of the output
    assert torch.equal(ng.nvfp4_gemm_ref(x, wq, sq, gs, sizes), ng.nvfp4_gemm_ref(x, packed, scale, gs, sizes))


def test_dequantize_kernel_layout_is_exact(interpret):
    packed, scale, gs, _ = _dense_case(40, 128, 5)
    scale = _awkward_scales(scale)
    wq, sq = ng.pack_for_kernel(packed, scale)
    got = ng.dequantize_kernel_layout(wq[None], sq[None], gs.reshape(1), torch.float32)[0]
    assert torch.equal(got, dequantize_nvfp4(packed, scale, gs))
    assert torch.equal(ng.dequantize_kernel_layout(wq[None], sq[None], gs.reshape(1), torch.bfloat16)[0],
                       dequantize_nvfp4(packed, scale, gs, torch.bfloat16))


# ---------------------------------------------------------------- MoE (interpreter)


def _moe_case(tokens, hidden, inter, experts, top_k, dtype=torch.float32, drop=0.0, seed=0, up_gain=40.0):
    """A random MoE with NVFP4 experts; w3 is scaled by up_gain before quantizing, so its global
    scales differ from w1's by that much (a kernel mixing them up fails)."""
    c = make_moe_case(tokens, hidden, inter, experts, top_k, dtype=torch.float32, drop_fraction=drop, seed=seed)
    w1 = _quantize_rows(c.w13[:, :inter])
    w3 = _quantize_rows(c.w13[:, inter:] * up_gain)
    w2 = _quantize_rows(c.w2)
    weights = (torch.cat([w1[0], w3[0]], 1), torch.cat([w1[1], w3[1]], 1), torch.stack([w1[2], w3[2]], 1),
               w2[0], w2[1], w2[2])
    return c.x.to(dtype), weights, c.topk_weights, c.topk_ids


def _moe_cfg(bm=16, bn=32, bkq=16, split13=1, split2=1, impl="fused", direct=False):
    return Nvfp4MoeConfig(block_m=bm, impl=impl, w13=Nvfp4Config(block_m=bm, block_n=bn, block_kq=bkq, split_k=split13),
                          w2=Nvfp4Config(block_m=bm, block_n=bn, block_kq=bkq, split_k=split2), direct=direct)


@pytest.mark.parametrize("cfg", [_moe_cfg(), _moe_cfg(bn=16, split13=2, split2=4), _moe_cfg(direct=True, split13=2),
                                 _moe_cfg(impl="dequant"), _moe_cfg(bn=64, impl="wgmma")],
                         ids=["fused", "split_k", "direct", "dequant", "wgmma_tiles_in_triton"])  # fmt: skip
@pytest.mark.parametrize("drop", [0.0, 0.3])
def test_moe_matches_reference_fp32(interpret, cfg, drop):
    x, w, tw, ids = _moe_case(tokens=11, hidden=128, inter=64, experts=6, top_k=3, drop=drop, seed=7)
    ref = nm.nvfp4_fused_moe_ref(x, *w, tw, ids)
    out = torch.full_like(x, float("nan"))  # poisoned: every token row must be written
    nm.nvfp4_fused_moe(x, *w, tw, ids, out=out, config=cfg)
    assert rel_err(out, ref) < 1e-6


@pytest.mark.parametrize("split", [1, 2])
def test_moe_narrow_tiles_bit_for_bit(interpret, split):
    """Nvfp4Config.narrow: blocks whose pairs fit half of their 32 run 16-wide tiles; the results are
    the full-width tiles' (up to the interpreter's fp32 matmul order: numpy sums a narrower product in
    another order; on the GPU, bit for bit) and the reference's, with and without split-K."""
    x, w, tw, ids = _moe_case(tokens=40, hidden=128, inter=64, experts=6, top_k=3, drop=0.1, seed=5)
    counts = torch.bincount(ids[ids >= 0].long(), minlength=6) % 32
    assert ((counts > 0) & (counts <= 16)).any() and (counts > 16).any()  # both tile widths run
    wide = dataclasses.replace(_moe_cfg(bm=32, bn=32, split13=split, split2=split))
    narrow = dataclasses.replace(wide, w13=dataclasses.replace(wide.w13, narrow=True),
                                 w2=dataclasses.replace(wide.w2, narrow=True))
    want = nm.nvfp4_fused_moe(x, *w, tw, ids, config=wide)
    out = torch.full_like(x, float("nan"))
    nm.nvfp4_fused_moe(x, *w, tw, ids, out=out, config=narrow)
    assert rel_err(out, want) < 1e-6 and rel_err(out, nm.nvfp4_fused_moe_ref(x, *w, tw, ids)) < 1e-6
    assert Nvfp4Config.from_dict(narrow.w13.to_dict()) == narrow.w13 and "narrow" not in wide.w13.to_dict()


def test_moe_bf16_kernel_layout(interpret):
    x, w, tw, ids = _moe_case(tokens=9, hidden=128, inter=64, experts=5, top_k=2, dtype=torch.bfloat16, drop=0.2, seed=8)
    w13q, w13s = ng.pack_for_kernel(w[0], w[1])
    w2q, w2s = ng.pack_for_kernel(w[3], w[4])
    ref = nm.nvfp4_fused_moe_ref(x.float(), *w, tw, ids)
    out = nm.nvfp4_fused_moe(x, w13q, w13s, w[2], w2q, w2s, w[5], tw, ids, config=_moe_cfg())
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) < 1e-2  # bf16 rounding of act, y and out


def test_expert_tiles_round_trip_and_refuse_misfits():
    g = torch.Generator().manual_seed(3)
    wq = torch.randint(-32768, 32767, (3, 64, 64), generator=g, dtype=torch.int16)
    sq = torch.randint(-2**31, 2**31 - 1, (3, 64, 4), generator=g, dtype=torch.int32)
    for rows, cols in ((16, 16), (32, 32), (32, 64)):
        wt, st = ng.tile_experts(wq, sq, cols, rows)
        assert wt.shape == (3, 64 // rows, 64 // cols, rows, cols) and st.shape == (3, 64 // rows, 4, rows)
        assert ng.is_tiled(wt, st) and not ng.is_tiled(wq, sq)
        assert wt[1, 1, 0, 5, 7] == wq[1, rows + 5, 7] and st[2, 1, 1, 3] == sq[2, rows + 3, 1]
        assert wt[0, 0, -1, 2, cols - 1] == wq[0, 2, 63]
        back = ng.untile_experts(wt, st)
        assert torch.equal(back[0], wq) and torch.equal(back[1], sq)
        assert ng.expert_layout(wt, st)[:4] + ng.expert_layout(wt, st)[5:6] + ng.expert_layout(wt, st)[7:] == (
            rows, cols, 64, 64, 64, 4)
    with pytest.raises(ValueError, match="cannot tile"):
        ng.tile_experts(wq[:, :48], sq[:, :48], 16)  # 48 rows: no whole 32-row tiles
    with pytest.raises(ValueError, match="cannot tile"):
        ng.tile_experts(wq[..., :48], sq[..., :3], 32)  # 48 columns: no whole 32-column chunks


# Launch configs the tiled experts run (block_n, K step in int16 columns, path) and which of them
# each tile shape runs: every path on two tile shapes, and across the pairs K steps narrower than,
# equal to and wider than a chunk, tiles taller than, as tall as and shorter than block_n.
_TILE_CFGS = {
    "fused": _moe_cfg(bn=32, bkq=16), "split_k": _moe_cfg(bn=32, bkq=32, split13=2, split2=2),
    "direct": _moe_cfg(bn=64, bkq=64, direct=True), "dequant": _moe_cfg(impl="dequant"),
}
_TILE_RUNS = {(16, 16): ("split_k", "dequant"), (32, 32): ("fused", "direct"),
              (32, 64): ("direct", "split_k"), (64, 32): ("fused", "dequant")}


@pytest.fixture(scope="module")
def _row_layout_runs():
    """The row layout's output per config, run once for every tile shape's comparison."""
    x, w, tw, ids = _moe_case(tokens=11, hidden=256, inter=128, experts=6, top_k=3, drop=0.2, seed=7)
    return (x, w, tw, ids), {}


@pytest.mark.parametrize("rows,cols", list(_TILE_RUNS))
def test_moe_expert_tiles_bit_for_bit(interpret, _row_layout_runs, rows, cols):
    """Tiled experts give the row layout's results exactly, through every path (fused, split-K,
    direct, dequant), with K steps narrower, equal to and wider than a chunk, and with tiles taller
    and shorter than block_n; the reference reads them too."""
    (x, w, tw, ids), wants = _row_layout_runs
    w13, w2 = ng.pack_for_kernel(w[0], w[1]), ng.pack_for_kernel(w[3], w[4])
    t13, t2 = ng.tile_experts(*w13, cols, rows), ng.tile_experts(*w2, min(cols, 32), rows)
    ref = nm.nvfp4_fused_moe_ref(x, *w, tw, ids)
    assert torch.equal(nm.nvfp4_fused_moe_ref(x, *t13, w[2], *t2, w[5], tw, ids), ref)
    for name in _TILE_RUNS[(rows, cols)]:
        cfg = _TILE_CFGS[name]
        if name not in wants:
            wants[name] = nm.nvfp4_fused_moe(x, *w13, w[2], *w2, w[5], tw, ids, config=cfg)
        got = nm.nvfp4_fused_moe(x, *t13, w[2], *t2, w[5], tw, ids, config=cfg)
        assert torch.equal(got, wants[name]) and rel_err(got, ref) < 1e-6


def test_tile_runs_cover_every_path_and_relation():
    """The pairs above keep what the full cross product covered (see _TILE_CFGS)."""
    seen = {"path": {}, "k": set(), "rows": set()}
    for (rows, cols), names in _TILE_RUNS.items():
        for name in names:
            seen["path"][name] = seen["path"].get(name, 0) + 1
            cfg = _TILE_CFGS[name]
            if cfg.impl == "dequant":
                continue
            for gemm, tile_cols in ((cfg.w13, cols), (cfg.w2, min(cols, 32))):
                seen["k"].add((gemm.block_kq > tile_cols) - (gemm.block_kq < tile_cols))
                seen["rows"].add((rows > gemm.block_n) - (rows < gemm.block_n))
    assert seen["path"] == dict.fromkeys(_TILE_CFGS, 2)
    assert seen["k"] == {-1, 0, 1} and seen["rows"] == {-1, 0, 1}


def test_tile_moe_experts_cuts_chunks_as_wide_as_decode_steps(monkeypatch):
    """The load-time tiling reads the launch table's decode K steps; shapes without whole tiles
    keep the row layout."""
    w13 = (torch.zeros(4, 2 * 768, 512, dtype=torch.int16), torch.zeros(4, 2 * 768, 32, dtype=torch.int32))
    w2 = (torch.zeros(4, 2048, 192, dtype=torch.int16), torch.zeros(4, 2048, 12, dtype=torch.int32))
    t = nm.tile_moe_experts(*w13, *w2, 8)
    steps = {nm.fit_block_kq(cfg.w13, 512) for cfg in (nm.moe_config(n, 4, 2048, 768, 8) for n in (16, 64, 256))}
    assert ng.is_tiled(t[0], t[1]) and ng.is_tiled(t[2], t[3]) and t[0].shape[-2] == ng.TILE_ROWS
    assert len(steps) > 1 or t[0].shape[-1] == steps.pop()
    odd = (torch.zeros(4, 2 * 80, 512, dtype=torch.int16), torch.zeros(4, 2 * 80, 32, dtype=torch.int32))
    kept = nm.tile_moe_experts(*odd, torch.zeros(4, 2048, 20, dtype=torch.int16),
                               torch.zeros(4, 2048, 1, dtype=torch.int32), 8)  # I = 80: no whole 32-row tiles
    assert kept[0] is odd[0] and not ng.is_tiled(kept[0], kept[1])
    monkeypatch.setenv(nm.TILES_ENV, "0")
    assert nm.tile_moe_experts(*w13, *w2, 8)[0] is w13[0]  # switched off: the row layout stays


def test_moe_uses_w1_and_w3_scales_separately(interpret):
    x, w, tw, ids = _moe_case(tokens=6, hidden=64, inter=64, experts=4, top_k=2, seed=9, up_gain=1000.0)
    assert (w[2][:, 1] / w[2][:, 0]).min() > 100  # the two halves' global scales are far apart
    out = nm.nvfp4_fused_moe(x, *w, tw, ids, config=_moe_cfg())
    assert rel_err(out, nm.nvfp4_fused_moe_ref(x, *w, tw, ids)) < 1e-6
    for wrong in (w[2][:, :1].repeat(1, 2), w[2][:, 1:].repeat(1, 2)):  # a kernel that used one scale for both
        assert rel_err(nm.nvfp4_fused_moe(x, w[0], w[1], wrong, *w[3:], tw, ids, config=_moe_cfg()), out) > 0.9


def test_moe_remote_experts_contribute_nothing(interpret):
    x, w, tw, ids = _moe_case(tokens=4, hidden=64, inter=64, experts=4, top_k=2, seed=10)
    ids[0] = -1
    ids[1, 1] = -1
    for cfg in (_moe_cfg(split13=2, split2=2), _moe_cfg(direct=True)):
        out = nm.nvfp4_fused_moe(x, *w, tw, ids, config=cfg)
        assert torch.equal(out[0], torch.zeros_like(out[0]))
        one = nm.nvfp4_fused_moe_ref(x[1:2], *w, tw[1:2, :1], ids[1:2, :1])
        assert rel_err(out[1:2], one) < 1e-6


def test_moe_dequant_path_in_chunks(interpret):
    x, w, tw, ids = _moe_case(tokens=7, hidden=64, inter=64, experts=5, top_k=2, seed=11, drop=0.2)
    ref = nm.nvfp4_fused_moe_ref(x, *w, tw, ids)
    out = nm.nvfp4_fused_moe(x, *w, tw, ids, config=_moe_cfg(impl="dequant"), scratch_bytes=1)  # one expert at a time
    assert rel_err(out, ref) < 1e-6


@pytest.mark.parametrize("one_cta", [True, False], ids=["one_cta", "multi_cta"])
@pytest.mark.parametrize("tokens,top_k,experts,block_m,chunk", [(1, 8, 128, 16, None), (37, 3, 6, 16, None),
                                                                (300, 8, 64, 64, None), (300, 8, 64, 16, 256),
                                                                (40, 8, 256, 16, None), (64, 8, 128, 64, None)])  # fmt: skip
def test_align_kernel_matches_torch_blocks(interpret, monkeypatch, one_cta, tokens, top_k, experts, block_m, chunk):
    """chunk 256 < 2,400 pairs: the passes over the pairs carry the histogram and cursors along.
    256 experts with 16-row blocks: more blocks than pairs; 64 tokens of 128 experts: empty experts
    between used ones, whose runs end where the previous one's did. Multi-CTA: 256 pairs and 4 token
    blocks per program, so several programs share the counts, the cursors and the block experts."""
    monkeypatch.setattr(nm, "ALIGN_CTA_PAIRS", 256)
    monkeypatch.setattr(nm, "ALIGN_CTA_BLOCKS", 4)
    g = torch.Generator().manual_seed(tokens)
    ids = torch.stack([torch.randperm(experts, generator=g)[:top_k] for _ in range(tokens)]).int()
    ids[torch.rand(tokens, top_k, generator=g) < 0.2] = -1
    want = moe.moe_align_block_size(ids, experts, block_m)
    got = nm.moe_align_block_size_triton(ids, experts, block_m, chunk, one_cta=one_cta)
    n = int(want[2])
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2]) and torch.equal(got[0][n:], want[0][n:])
    for b in range(0, n, block_m):  # same pairs in each block (their order inside an expert may differ)
        assert sorted(got[0][b : b + block_m].tolist()) == sorted(want[0][b : b + block_m].tolist())


if tl is not None:  # the module imports without Triton too (tenk.kernels._triton's stand-in)

    def _block_expert_probe(ids_ptr, out_ptr, P, E, BM: tl.constexpr, NB: tl.constexpr, BP: tl.constexpr):
        """Interpreted below (the interpreter context swaps tenk's own kernels only)."""
        b = tl.program_id(0)
        tl.store(out_ptr + b, nm._block_expert(ids_ptr, P, b, E, BM, NB, BP))


@pytest.mark.parametrize("tokens,top_k,experts,block_m,bp", [(2, 8, 128, 16, 256), (16, 8, 128, 16, 256),
                                                              (300, 8, 64, 16, 256), (40, 8, 256, 16, 512),
                                                              (37, 3, 6, 64, 256)])  # fmt: skip
def test_block_expert_matches_align(interpret, tokens, top_k, experts, block_m, bp):
    """What the w1|w3 prefetch works out per token block from the flat ids alone is the block's expert
    in moe_align_block_size (E or more past the used blocks); 2,400 pairs in passes of 256, empty
    experts between used ones, dropped (-1) pairs."""
    g = torch.Generator().manual_seed(tokens)
    ids = torch.stack([torch.randperm(experts, generator=g)[:top_k] for _ in range(tokens)]).int()
    ids[torch.rand(tokens, top_k, generator=g) < 0.2] = -1
    want = moe.moe_align_block_size(ids, experts, block_m)[1]
    from triton.runtime.interpreter import InterpretedFunction

    got = torch.full_like(want, -7)
    InterpretedFunction(_block_expert_probe)[(want.numel(),)](ids.reshape(-1), got, ids.numel(), experts, BM=block_m,
                                         NB=next_pow2(experts + 1), BP=bp)
    assert torch.equal(torch.where(got < experts, got, -1), want)


def test_align_chunk_is_a_few_powers_of_two():
    # capped where the multi-CTA kernels take over (a forced one-CTA run above makes several passes)
    assert nm.ALIGN_ONE_CTA_MAX_PAIRS == 2048
    assert [nm.align_chunk(p) for p in (1, 256, 257, 1500, 2048, 8192)] == [256, 256, 512, 2048, 2048, 2048]


def test_cpu_layers_keep_modelopt_layout():
    """process_weights_after_loading re-lays weights only on CUDA; the CPU reference path is untouched."""
    from torch import nn

    from tenk.quant.methods import Nvfp4LinearMethod

    layer = nn.Module()
    m = Nvfp4LinearMethod()
    m.create_weights(layer, 128, [32, 32], torch.bfloat16)
    layer.weight_scale_2.data.fill_(0.01)
    m.process_weights_after_loading(layer)
    assert layer.weight.dtype == torch.uint8 and layer.weight.shape == (64, 64)


# ---------------------------------------------------------------- configs


def test_wgmma_moe_configs_are_whole_warp_groups():
    """The Gluon MoE's tiles: 64 weight rows per warp group, no split-K, aligned token blocks."""
    ok = _moe_cfg(bm=128, bn=64, impl="wgmma")
    assert ok.impl == "wgmma" and Nvfp4MoeConfig.from_dict(ok.to_dict()) == ok
    for bad in (dict(bn=32), dict(bn=64, split13=2), dict(bn=64, direct=True)):
        with pytest.raises(ValueError, match="wgmma"):
            _moe_cfg(impl="wgmma", **bad)
    with pytest.raises(ValueError, match="wgmma"):
        Nvfp4MoeConfig(block_m=64, impl="wgmma", w13=Nvfp4Config(block_m=64, block_n=64, num_warps=8),
                       w2=Nvfp4Config(block_m=64, block_n=128, num_warps=8))  # 8 warps need 128 rows
    assert not nm.wgmma_usable(torch.zeros(2, 2, dtype=torch.bfloat16))  # CPU: the Triton kernels run


def test_config_lookup_and_heuristics():
    from tenk.kernels.configs import nvfp4 as cfgs

    assert cfgs.bucket(1) == 1 and cfgs.bucket(300) == 256 and cfgs.bucket(10**6) == 16384
    assert_shipped_tables_load("nvfp4", Nvfp4MoeConfig, Nvfp4Config)
    assert heuristic_moe(1, 128, 2048, 768, 8).block_m == 16
    assert heuristic_moe(4096, 128, 2048, 768, 8).impl == "wgmma"  # prefill: the Gluon kernels where usable
    assert heuristic_dense(8192, 4096, 4096).impl == "dequant"
    with pytest.raises(ValueError):
        Nvfp4MoeConfig(block_m=32, w13=Nvfp4Config(block_m=16), w2=Nvfp4Config(block_m=32))


def test_tables_by_gpu_name_and_from_a_folder_of_ones_own(tmp_path, monkeypatch):
    """Every GPU has a tag (H100 / H200 families by name, others by their full name), so a table
    tuned on any GPU is found; $TENK_KERNEL_CONFIGS folders come before the package's tables."""
    from tenk.kernels.configs import nvfp4 as cfgs

    assert cfgs.device_tag("NVIDIA H100 80GB HBM3") == cfgs.device_tag("NVIDIA H100 NVL") == "h100"
    assert cfgs.device_tag("NVIDIA GH200 480GB") == "h200"
    assert cfgs.device_tag("NVIDIA A100-SXM4-80GB") == "nvidia_a100_sxm4_80gb"
    assert cfgs.find_table("h100") == cfgs.table_path("h100") and cfgs.find_table("nvidia_a10g") is None
    own = {"moe": {cfgs.moe_key(128, 2048, 768, 8): {"1": heuristic_moe(300, 128, 2048, 768, 8).to_dict()}},
           "dense": {}}  # fmt: skip
    for tag in ("nvidia_a10g", "h100"):
        (tmp_path / f"nvfp4_{tag}.json").write_text(json.dumps(own))
    monkeypatch.setenv("TENK_KERNEL_CONFIGS", f"{tmp_path / 'missing'}{os.pathsep}{tmp_path}")
    cfgs.load_table.cache_clear()
    try:
        assert cfgs.find_table("h100") == tmp_path / "nvfp4_h100.json"
        monkeypatch.setattr(cfgs, "gpu_tag", lambda device=None: "nvidia_a10g")
        assert cfgs.moe_config(1, 128, 2048, 768, 8) == heuristic_moe(300, 128, 2048, 768, 8)  # its own entry
        assert cfgs.moe_config(1, 128, 2048, 768, 8) != heuristic_moe(1, 128, 2048, 768, 8)
    finally:
        cfgs.load_table.cache_clear()  # later tests read the package's tables again


def test_an_h200_guess_gives_way_to_the_h100s_measured_entry(monkeypatch):
    """A bucket the H200's table only guesses but the H100 measured runs the H100's config (the same
    chip), one neither measured keeps the H200's guess, and an H200 measurement wins over both (the
    shipped H200 table measures the H100's buckets itself)."""
    from tenk.kernels.configs import nvfp4 as cfgs

    qwen3 = (128, 2048, 768, 8)
    key = cfgs.moe_key(*qwen3)
    h100, h200 = cfgs.load_table("h100", "nvfp4"), cfgs.load_table("h200", "nvfp4")
    assert "ms" in h100["moe"][key]["256"] and "ms" in h200["moe"][key]["256"]
    monkeypatch.setattr(cfgs, "gpu_tag", lambda device=None: "h200")
    assert cfgs.moe_config(256, *qwen3) == Nvfp4MoeConfig.from_dict(h200["moe"][key]["256"])
    guess = {"moe": {key: {"256": heuristic_moe(256, *qwen3).to_dict()}}, "dense": {}}
    measured = {"moe": {key: {"256": {**heuristic_moe(4096, *qwen3).to_dict(), "ms": 0.1}}}, "dense": {}}
    for h100_table, h200_table, want in [(guess, guess, heuristic_moe(256, *qwen3)),
                                         (h100, guess, Nvfp4MoeConfig.from_dict(h100["moe"][key]["256"])),
                                         (h100, measured, heuristic_moe(4096, *qwen3))]:
        monkeypatch.setattr(cfgs, "load_table", lambda tag, fmt, a=h100_table, b=h200_table: a if tag == "h100" else b)
        assert cfgs.moe_config(256, *qwen3) == want


# ---------------------------------------------------------------- sm_90 compile (CPU, no GPU needed)

QWEN3 = dict(experts=128, hidden=2048, inter=768)
MINIMAX = dict(experts=256, hidden=3072, inter=1536)


def _kernel_layout_experts(experts, hidden, inter):
    """Uninitialised expert weights in expert tiles, as the engine holds them: only shapes and
    dtypes matter to a compile."""
    t = nm.tile_moe_experts(torch.empty(experts, 2 * inter, hidden // 4, dtype=torch.int16),
                            torch.empty(experts, 2 * inter, hidden // 64, dtype=torch.int32),
                            torch.empty(experts, hidden, inter // 4, dtype=torch.int16),
                            torch.empty(experts, hidden, inter // 64, dtype=torch.int32), 8)
    return (t[0], t[1], torch.ones(experts, 2), t[2], t[3], torch.ones(experts))


@pytest.fixture
def gpu_variant(monkeypatch, sm90_compile):
    monkeypatch.setattr(ng, "COMPILE_GPU_VARIANT", True)
    return sm90_compile


@pytest.mark.slow
@pytest.mark.parametrize("tokens", [1, 64, 4096])
@pytest.mark.parametrize("model", ["qwen3", "minimax"])
def test_moe_compiles_for_sm90(gpu_variant, model, tokens):
    """The shipped heuristic configs at the benchmark's expert shapes (decode, mid, prefill)."""
    shape = QWEN3 if model == "qwen3" else MINIMAX
    cfg = heuristic_moe(tokens, shape["experts"], shape["hidden"], shape["inter"], 8)
    experts = 8  # the expert count only sizes the grid; configs come from the real one
    x = torch.empty(tokens, shape["hidden"], dtype=torch.bfloat16)
    ids = torch.stack([torch.randperm(experts)[:8] for _ in range(tokens)]).int()
    w = _kernel_layout_experts(experts, shape["hidden"], shape["inter"])
    results = gpu_variant([nm], lambda: nm.nvfp4_fused_moe(x, *w, torch.full((tokens, 8), 0.125), ids, config=cfg))
    expected = ["_nvfp4_moe_gemm_kernel", "_combine_splits_kernel"]
    if not cfg.direct:
        expected += align_kernels(tokens * 8)
    if cfg.w13.split_k > 1:
        expected.append("_silu_mul_reduce_kernel")
    assert_fits_sm90(results, expected)


@pytest.mark.slow
@pytest.mark.parametrize("tokens", [256, 512, 1024])
def test_moe_wgmmas_are_not_serialized(gpu_variant, tokens):
    """Qwen3-30B-A3B's decode buckets whose H100 table configs run wgmma (4-warp tiles) with the
    decoded weights in registers; ptxas must not serialize those wgmmas (C7515: each would wait
    for the last)."""
    from tenk.kernels.configs import nvfp4 as cfgs

    table = json.loads(cfgs.table_path("h100").read_text())["moe"]["e128_h2048_i768_top8"]
    cfg = Nvfp4MoeConfig.from_dict(table[str(tokens)])
    experts = 8
    x = torch.empty(tokens, QWEN3["hidden"], dtype=torch.bfloat16)
    ids = torch.stack([torch.randperm(experts)[:8] for _ in range(tokens)]).int()
    w = _kernel_layout_experts(experts, QWEN3["hidden"], QWEN3["inter"])
    results = gpu_variant([nm], lambda: nm.nvfp4_fused_moe(x, *w, torch.full((tokens, 8), 0.125), ids, config=cfg))
    gemms = [r for r in results if r["name"] == "_nvfp4_moe_gemm_kernel" and "wgmma.mma_async" in r["ptx"]]
    assert gemms
    for r in gemms:
        assert "C7515" not in ptxas_notes(r["ptx"])


def test_nonempty_splits_keep_each_splits_steps():
    """Split-K launches only splits that own a K step, each as many steps as before."""
    for steps in range(1, 65):
        for split_k in range(1, 17):
            n = ng.nonempty_splits(split_k, steps)
            per = -(-steps // max(1, min(split_k, steps)))
            assert 1 <= n <= split_k and -(-steps // n) == per
            assert (n - 1) * per < steps <= n * per  # the last split owns a step, none is left over


@pytest.mark.slow
@pytest.mark.parametrize("tokens", [1, 64])
def test_moe_pdl_variant_waits_before_memory(gpu_variant, monkeypatch, tokens):
    """Under programmatic dependent launch each kernel of the decode MoE may start while its
    predecessor still runs: every one waits for it before touching global memory."""
    monkeypatch.setattr(nm, "use_pdl", lambda device: True)
    cfg = heuristic_moe(tokens, QWEN3["experts"], QWEN3["hidden"], QWEN3["inter"], 8)
    cfg = dataclasses.replace(cfg, w13=dataclasses.replace(cfg.w13, split_k=2),
                              w2=dataclasses.replace(cfg.w2, split_k=2))  # the SiLU reduce launches too
    experts = 8
    x = torch.empty(tokens, QWEN3["hidden"], dtype=torch.bfloat16)
    ids = torch.stack([torch.randperm(experts)[:8] for _ in range(tokens)]).int()
    w = _kernel_layout_experts(experts, QWEN3["hidden"], QWEN3["inter"])
    results = gpu_variant([nm], lambda: nm.nvfp4_fused_moe(x, *w, torch.full((tokens, 8), 0.125), ids, config=cfg))
    expected = ["_nvfp4_moe_gemm_kernel", "_silu_mul_reduce_kernel", "_nvfp4_moe_gemm_kernel", "_combine_splits_kernel"]
    if not cfg.direct:
        expected += align_kernels(tokens * 8)
    assert sorted(r["name"] for r in results) == sorted(expected)
    assert_waits_first(results)


@pytest.mark.slow
def test_moe_narrow_tiles_compile_for_sm90(gpu_variant):
    """Both tile widths of Nvfp4Config.narrow in one launch (Qwen3-30B-A3B's 256-token tiles) fit an
    H100 without spilling."""
    tokens, experts = 256, 8
    gemm = lambda bn, bkq, stages: Nvfp4Config(block_m=32, block_n=bn, block_kq=bkq, num_stages=stages, narrow=True)
    cfg = Nvfp4MoeConfig(block_m=32, w13=gemm(64, 64, 2), w2=gemm(128, 32, 3))
    x = torch.empty(tokens, QWEN3["hidden"], dtype=torch.bfloat16)
    ids = torch.stack([torch.randperm(experts)[:8] for _ in range(tokens)]).int()
    w = _kernel_layout_experts(experts, QWEN3["hidden"], QWEN3["inter"])
    results = gpu_variant([nm], lambda: nm.nvfp4_fused_moe(x, *w, torch.full((tokens, 8), 0.125), ids, config=cfg))
    assert_fits_sm90(results, ["_nvfp4_moe_gemm_kernel", "_combine_splits_kernel"] + align_kernels(tokens * 8))
    gemms = [r for r in results if r["name"] == "_nvfp4_moe_gemm_kernel"]
    assert len(gemms) == 2 and all(r["ptx"].count("wgmma.mma_async") > 0 for r in gemms)


_PRE_WAIT_ALLOWED = re.compile(r"\b(ld\.global|cp\.async\.bulk\.prefetch\.L2\.global)")


@pytest.mark.slow
@pytest.mark.parametrize("tokens", [16, 256])
def test_moe_prefetch_variant_compiles_for_sm90(gpu_variant, monkeypatch, tokens):
    """Nvfp4Config.prefetch on both GEMMs: they fit an H100 without spilling and issue bulk L2
    prefetches; before their PDL wait they only load (the ids or block experts) and prefetch, never
    store or take atomics, and they release the next launch after the wait."""
    monkeypatch.setattr(nm, "use_pdl", lambda device: True)
    cfg = heuristic_moe(tokens, QWEN3["experts"], QWEN3["hidden"], QWEN3["inter"], 8)
    on = lambda g: dataclasses.replace(g, split_k=1, prefetch=8192)
    cfg = dataclasses.replace(cfg, direct=False, w13=on(cfg.w13), w2=on(cfg.w2))
    experts = 8
    x = torch.empty(tokens, QWEN3["hidden"], dtype=torch.bfloat16)
    ids = torch.stack([torch.randperm(experts)[:8] for _ in range(tokens)]).int()
    w = _kernel_layout_experts(experts, QWEN3["hidden"], QWEN3["inter"])
    assert ng.is_tiled(w[0], w[1])  # prefetch needs expert tiles
    results = gpu_variant([nm], lambda: nm.nvfp4_fused_moe(x, *w, torch.full((tokens, 8), 0.125), ids, config=cfg))
    assert_fits_sm90(results, ["_nvfp4_moe_gemm_kernel", "_combine_splits_kernel"] + align_kernels(tokens * 8))
    gemms = [r for r in results if r["name"] == "_nvfp4_moe_gemm_kernel"]
    assert len(gemms) == 2  # w1|w3 and w2
    for r in gemms:
        ptx = r["ptx"]
        wait = ptx.find("griddepcontrol.wait")
        assert 0 < ptx.find("cp.async.bulk.prefetch.L2.global") < wait < ptx.find("griddepcontrol.launch_dependents")
        before = [m.group(0) for m in re.finditer(r"\b((ld|st|atom|red)\.global|cp\.async)\S*", ptx[:wait])]
        assert before and all(_PRE_WAIT_ALLOWED.match(op) for op in before), before
    assert_waits_first([r for r in results if r["name"] != "_nvfp4_moe_gemm_kernel"])


@pytest.mark.slow
@pytest.mark.skipif(not nm_wgmma.AVAILABLE, reason="needs Triton's Gluon")
@pytest.mark.parametrize("model,tiles", [("qwen3", ((64, 32, 2, 4), (64, 32, 2, 4))),
                                         ("minimax", ((128, 32, 3, 8), (128, 64, 2, 8))),
                                         ("qwen3", ((64, 32, 2, 4), (128, 32, 2, 8, 128)))])  # fmt: skip
def test_moe_wgmma_compiles_for_sm90(sm90_compile, model, tiles):
    """The Gluon MoE GEMMs at the tuned tables' prefill tiles: they fit an H100 without spilling. A
    register cap (the tiles' fifth field) holds, so two CTAs of the capped tile share an SM. Their
    epilogues store 16-byte runs of out rows, never the MMA layout's 2-byte values."""
    shape = QWEN3 if model == "qwen3" else MINIMAX
    gemm = lambda t: Nvfp4Config(block_m=128, block_n=t[0], block_kq=t[1], num_stages=t[2], num_warps=t[3],
                                 maxnreg=t[4] if len(t) > 4 else 0)
    cfg = Nvfp4MoeConfig(block_m=128, impl="wgmma", w13=gemm(tiles[0]), w2=gemm(tiles[1]))
    tokens, experts = 512, 8
    x = torch.empty(tokens, shape["hidden"], dtype=torch.bfloat16)
    ids = torch.stack([torch.randperm(experts)[:8] for _ in range(tokens)]).int()
    w = _kernel_layout_experts(experts, shape["hidden"], shape["inter"])
    align = moe.moe_align_block_size(ids, experts, 128)
    act = torch.empty(tokens * 8, shape["inter"], dtype=torch.bfloat16)
    y = torch.empty(tokens * 8, shape["hidden"], dtype=torch.bfloat16)

    def both():
        l13, l2 = ng.expert_layout(w[0], w[1]), ng.expert_layout(w[3], w[4])
        nm_wgmma.moe_gemm_wgmma(x, w[0], w[1], w[2], act, align[0], align[1], tokens * 8, shape["inter"], 8, True, True,
                                cfg.w13, nm.fit_block_kq(cfg.w13, l13[2]), l13)
        nm_wgmma.moe_gemm_wgmma(act, w[3], w[4], w[5].reshape(-1, 1), y, align[0], align[1], tokens * 8, shape["hidden"],
                                8, False, False, cfg.w2, nm.fit_block_kq(cfg.w2, l2[2]), l2)

    results = sm90_compile([nm_wgmma], both)
    assert len(results) == 2  # w1|w3 (gated) and w2
    assert_fits_sm90(results, ["_nvfp4_moe_wgmma_kernel"])
    for r, g in zip(results, (cfg.w13, cfg.w2)):
        stores = re.findall(r"st\.global[.\w]*", r["ptx"])
        assert stores and set(stores) == {"st.global.v4.b32"}, stores
        if g.maxnreg:
            assert r["options"]["maxnreg"] == g.maxnreg and r["regs"] <= g.maxnreg
            assert 2 * r["regs"] * 32 * g.num_warps <= 65536 and 2 * r["shared_bytes"] <= H100_MAX_SHARED


@pytest.mark.slow
@pytest.mark.parametrize("pairs,experts,block_m", [(8192, 256, 16), (8192, 128, 64), (512, 128, 16),
                                                   (131072, 256, 16), (131072, 128, 128)])  # fmt: skip
def test_align_compiles_for_sm90(sm90_compile, pairs, experts, block_m):
    """The one-CTA align kernel up to ALIGN_ONE_CTA_MAX_PAIRS (its block histogram grows with the
    blocks), the multi-CTA ones above (16,384 tokens of top-8)."""
    ids = torch.randint(0, experts, (pairs // 8, 8), dtype=torch.int32)
    results = sm90_compile([nm], lambda: nm.moe_align_block_size_triton(ids, experts, block_m))
    assert_fits_sm90(results, align_kernels(pairs))


@pytest.mark.slow
@pytest.mark.parametrize("m,dtype", [(1, torch.bfloat16), (16, torch.bfloat16), (256, torch.bfloat16),
                                     (16, torch.float16)])  # fp16: the portable decode, compiled
def test_gemm_compiles_for_sm90(gpu_variant, m, dtype):
    n, k = 4096, 4096
    x = torch.empty(m, k, dtype=dtype)
    wq, sq = torch.empty(n, k // 4, dtype=torch.int16), torch.empty(n, k // 64, dtype=torch.int32)
    cfg = heuristic_dense(m, n, k)
    results = gpu_variant([ng], lambda: ng.nvfp4_gemm(x, wq, sq, torch.ones(3), [2048, 1024, 1024], config=cfg))
    assert_fits_sm90(results, ["_nvfp4_gemm_kernel"] + (["_split_reduce_kernel"] if cfg.split_k > 1 else []))


@pytest.mark.slow
def test_dequant_kernel_compiles_for_sm90(gpu_variant):
    wq, sq = torch.empty(4, 1536, 512, dtype=torch.int16), torch.empty(4, 1536, 32, dtype=torch.int32)
    results = gpu_variant([ng], lambda: ng.dequantize_kernel_layout(wq, sq, torch.ones(4, 2), torch.bfloat16, gs_mode=2))
    assert_fits_sm90(results, ["_nvfp4_dequant_kernel"])


# ---------------------------------------------------------------- on a GPU

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("tokens", [1, 16, 256, 2048])
@pytest.mark.parametrize("model", ["qwen3", "minimax"])
@pytest.mark.parametrize("impl", ["fused", "dequant", "wgmma"])
@pytest.mark.parametrize("tiles", [True, False], ids=["tiles", "rows"])
def test_gpu_moe_matches_reference(model, tokens, impl, tiles):
    shape = QWEN3 if model == "qwen3" else MINIMAX
    x, w, tw, ids = _gpu_moe_case(shape, tokens)
    ref = nm.nvfp4_fused_moe_ref(x, *w, tw, ids)
    cfg = heuristic_moe(tokens, min(32, shape["experts"]), shape["hidden"], shape["inter"], 8)
    if impl == "wgmma":  # the Gluon kernels at the heuristic's token block, in warp-group tiles
        gemm = lambda c: Nvfp4Config(block_m=c.block_m, block_n=64, block_kq=c.block_kq, num_stages=2, num_warps=4)
        cfg = Nvfp4MoeConfig(block_m=cfg.block_m, w13=gemm(cfg.w13), w2=gemm(cfg.w2), impl="wgmma")
    else:
        cfg = Nvfp4MoeConfig(block_m=cfg.block_m, w13=cfg.w13, w2=cfg.w2, impl=impl, direct=cfg.direct)
    packed = (*ng.pack_for_kernel(w[0], w[1]), *ng.pack_for_kernel(w[3], w[4]))
    if tiles:
        packed = nm.tile_moe_experts(*packed, 8)
    packed = (packed[0], packed[1], w[2], packed[2], packed[3], w[5])
    out = torch.full_like(x, float("nan"))
    nm.nvfp4_fused_moe(x, *packed, tw, ids, out=out, config=cfg)
    assert rel_err(out, ref) < 1e-2


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("impl", ["fused", "wgmma"])
def test_gpu_moe_tiles_bit_for_bit(impl):
    """Expert tiles and the row layout give identical outputs on the GPU (asm decode, both kernels)."""
    x, w, tw, ids = _gpu_moe_case(QWEN3, 256 if impl == "fused" else 2048)
    rows = (*ng.pack_for_kernel(w[0], w[1]), w[2], *ng.pack_for_kernel(w[3], w[4]), w[5])
    tiles = (*ng.tile_experts(rows[0], rows[1], 32), w[2], *ng.tile_experts(rows[3], rows[4], 32), w[5])
    gemm = Nvfp4Config(block_m=64, block_n=64, block_kq=32, num_stages=3, num_warps=4)
    cfg = Nvfp4MoeConfig(block_m=64, w13=gemm, w2=gemm, impl=impl)
    want = nm.nvfp4_fused_moe(x, *rows, tw, ids, config=cfg)
    assert torch.equal(nm.nvfp4_fused_moe(x, *tiles, tw, ids, config=cfg), want)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.skipif(not nm_wgmma.AVAILABLE, reason="needs Triton's Gluon")
def test_gpu_moe_wgmma_narrow_tiles(monkeypatch):
    """Expert blocks whose last 128-pair block holds 1, 3, 10, 32, 50, 64 or 100 pairs run the quarter,
    half and whole wide tiles (the quarter and half boundaries included): bit for bit the result of
    whole tiles alone, and the reference's within rounding."""
    counts = [138, 178, 100, 3, 160, 192, 129, 64]  # expert e's pairs: tails 10, 50, 100, 3, 32, 64, 1, 64
    tokens = max(counts)
    x, w, _, _ = _gpu_moe_case(QWEN3, tokens)
    t = torch.arange(tokens, device="cuda")[:, None]
    ids = torch.where(t < torch.tensor(counts, device="cuda")[None, :], torch.arange(8, device="cuda"), -1).int()
    tw = torch.full((tokens, 8), 0.125, device="cuda")
    packed = (*ng.pack_for_kernel(w[0], w[1]), w[2], *ng.pack_for_kernel(w[3], w[4]), w[5])
    gemm = Nvfp4Config(block_m=128, block_n=64, block_kq=32, num_stages=2, num_warps=4)
    cfg = Nvfp4MoeConfig(block_m=128, w13=gemm, w2=gemm, impl="wgmma")
    assert nm_wgmma.narrow_steps(128) == 2
    narrow = nm.nvfp4_fused_moe(x, *packed, tw, ids, config=cfg)
    monkeypatch.setattr(nm_wgmma, "NARROW_STEPS", 0)
    assert torch.equal(narrow, nm.nvfp4_fused_moe(x, *packed, tw, ids, config=cfg))
    assert rel_err(narrow, nm.nvfp4_fused_moe_ref(x, *w, tw, ids)) < 1e-2


@pytest.mark.gpu
@needs_gpu
@pytest.mark.skipif(not nm_wgmma.AVAILABLE, reason="needs Triton's Gluon")
@pytest.mark.parametrize("w2_warps", [4, 8])
def test_gpu_moe_wgmma_matches_triton_bit_for_bit(w2_warps):
    """The Gluon kernels give the Triton kernel's results bit for bit at the same tiles: w1|w3's
    SiLU*mul and w2's rows, staged through shared memory for 16-byte stores, on whole tiles and on
    narrow tail tiles (1,000 tokens: expert tails of every width)."""
    x, packed, w, tw, ids = _tiled_gpu_moe(1000)
    w13 = Nvfp4Config(block_m=128, block_n=64, block_kq=32, num_stages=2, num_warps=4)
    w2 = Nvfp4Config(block_m=128, block_n=128, block_kq=32, num_stages=2, num_warps=w2_warps)
    cfg = Nvfp4MoeConfig(block_m=128, w13=w13, w2=w2, impl="wgmma")
    out = nm.nvfp4_fused_moe(x, *packed, tw, ids, config=cfg)
    assert torch.equal(out, nm.nvfp4_fused_moe(x, *packed, tw, ids, config=dataclasses.replace(cfg, impl="fused")))
    assert rel_err(out, nm.nvfp4_fused_moe_ref(x, *w, tw, ids)) < 1e-2


@pytest.mark.gpu
@needs_gpu
def test_gpu_moe_wgmma_register_cap():
    """A register cap on the 8-warp w2 tile (two CTAs an SM) changes nothing in the result: bit for bit
    the uncapped kernel's."""
    tokens = 512
    x, w, tw, ids = _gpu_moe_case(QWEN3, tokens)
    packed = (*ng.pack_for_kernel(w[0], w[1]), w[2], *ng.pack_for_kernel(w[3], w[4]), w[5])
    w13 = Nvfp4Config(block_m=128, block_n=64, block_kq=32, num_stages=2, num_warps=4)
    w2 = Nvfp4Config(block_m=128, block_n=128, block_kq=32, num_stages=2, num_warps=8)
    cfg = Nvfp4MoeConfig(block_m=128, w13=w13, w2=w2, impl="wgmma")
    capped = dataclasses.replace(cfg, w2=dataclasses.replace(w2, maxnreg=128))
    out = nm.nvfp4_fused_moe(x, *packed, tw, ids, config=capped)
    assert torch.equal(out, nm.nvfp4_fused_moe(x, *packed, tw, ids, config=cfg))
    assert rel_err(out, nm.nvfp4_fused_moe_ref(x, *w, tw, ids)) < 1e-2


def _tiled_gpu_moe(tokens):
    """_gpu_moe_case's Qwen3-30B-A3B experts in the kernel layout, cut into expert tiles."""
    x, w, tw, ids = _gpu_moe_case(QWEN3, tokens)
    packed = nm.tile_moe_experts(*ng.pack_for_kernel(w[0], w[1]), *ng.pack_for_kernel(w[3], w[4]), 8)
    return x, (packed[0], packed[1], w[2], packed[2], packed[3], w[5]), w, tw, ids


def _assert_bit_for_bit(x, packed, tw, ids, cfg, variant, rounds):
    """variant gives cfg's results exactly, in eager calls and in a CUDA graph (replayed `rounds` times)."""
    want = nm.nvfp4_fused_moe(x, *packed, tw, ids, config=cfg)
    out = torch.full_like(x, float("nan"))
    graph = capture_cuda_graph(lambda: nm.nvfp4_fused_moe(x, *packed, tw, ids, out=out, config=variant))
    for _ in range(rounds):
        assert torch.equal(nm.nvfp4_fused_moe(x, *packed, tw, ids, config=variant), want)
        out.fill_(float("nan"))
        graph.replay()
        assert torch.equal(out, want)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("tokens", [16, 256])
def test_gpu_moe_prefetch_bit_for_bit(tokens):
    """The L2 prefetch before the PDL wait changes nothing in the result, on expert tiles with PDL on
    (the configuration that prefetches), in eager calls and in a CUDA graph."""
    x, packed, w, tw, ids = _tiled_gpu_moe(tokens)
    gemm = Nvfp4Config(block_m=16, block_n=64, block_kq=64, num_stages=3, num_warps=2)
    cfg = Nvfp4MoeConfig(block_m=16, w13=gemm, w2=gemm)
    pre = dataclasses.replace(cfg, w13=dataclasses.replace(gemm, prefetch=8192), w2=dataclasses.replace(gemm, prefetch=4096))
    assert nm.prefetch_args(pre.w13, True, 1, False, nm.use_pdl(x.device), 32, packed[0].shape[2] * 32,
                            tokens * 8, w[0].shape[0], x.device)[0] > 0
    _assert_bit_for_bit(x, packed, tw, ids, cfg, pre, 3)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("tokens", [64, 256])
def test_gpu_moe_narrow_tiles_bit_for_bit(tokens):
    """Narrow tiles (Nvfp4Config.narrow) give the full-width tiles' bf16 results bit for bit, eager
    and in a CUDA graph."""
    x, packed, w, tw, ids = _tiled_gpu_moe(tokens)
    gemm = Nvfp4Config(block_m=64, block_n=64, block_kq=64, num_stages=2, num_warps=4)
    cfg = Nvfp4MoeConfig(block_m=64, w13=gemm, w2=gemm)
    on = dataclasses.replace(gemm, narrow=True)
    _assert_bit_for_bit(x, packed, tw, ids, cfg, dataclasses.replace(cfg, w13=on, w2=on), 2)


def test_register_cap_config():
    """maxnreg: 0 (the compiler's choice, left out of tables) or a multiple of 8 in [24, 256], passed
    to the launch."""
    capped = Nvfp4Config(maxnreg=128)
    assert capped.launch_options() == {"maxnreg": 128} and Nvfp4Config().launch_options() == {}
    assert "maxnreg" not in Nvfp4Config().to_dict() and Nvfp4Config.from_dict(capped.to_dict()) == capped
    moe_cfg = Nvfp4MoeConfig(block_m=128, impl="wgmma", w13=Nvfp4Config(block_m=128, block_n=64),
                             w2=Nvfp4Config(block_m=128, block_n=128, num_warps=8, maxnreg=128))
    assert Nvfp4MoeConfig.from_dict(moe_cfg.to_dict()) == moe_cfg and "maxnreg" not in moe_cfg.to_dict()["w13"]
    for bad in (20, 130, 264, -8):
        with pytest.raises(ValueError, match="maxnreg"):
            Nvfp4Config(maxnreg=bad)


def test_prefetch_config_and_launch_args():
    """prefetch: 0 (off, left out of tables) or a multiple of 16 bytes; the launch prefetches only
    with PDL, aligned blocks, whole K per program, expert tiles, and for w1|w3 up to the one-CTA
    align's pair count, clamped to one tile's K run."""
    on = Nvfp4Config(prefetch=8192, block_n=64, num_warps=2)
    assert "prefetch" not in Nvfp4Config().to_dict() and Nvfp4Config.from_dict(on.to_dict()) == on
    for bad in (8, 100, 65552, -16):
        with pytest.raises(ValueError, match="prefetch"):
            Nvfp4Config(prefetch=bad)
    cpu = torch.device("cpu")
    args = lambda cfg=on, gated=True, split=1, direct=False, pdl=True, tn=32, pairs=128: nm.prefetch_args(
        cfg, gated, split, direct, pdl, tn, 512, pairs, 128, cpu)
    programs, meta = args()
    assert programs == nm.PREFETCH_CTAS_PER_SM * 4 and meta["PF"] == 8192  # num_sms is 4 off the GPU
    assert meta["PF_PIECES"] == 16 and meta["PF_NB"] == 256 and meta["PF_BP"] == 256  # 64 threads, 4 tiles
    assert args(gated=False)[1]["PF_PIECES"] == 32
    assert args(cfg=dataclasses.replace(on, prefetch=65536))[1]["PF"] == 32 * 512 * 2  # one tile's K run
    for off in (dict(cfg=Nvfp4Config()), dict(split=2), dict(direct=True), dict(pdl=False), dict(tn=1),
                dict(pairs=nm.ALIGN_ONE_CTA_MAX_PAIRS + 8)):
        assert args(**off) == (0, {"PF": 0, "PF_PIECES": 1, "PF_NB": 2, "PF_BP": 2}), off
    assert args(gated=False, pairs=nm.ALIGN_ONE_CTA_MAX_PAIRS + 8)[0] > 0  # w2 reads the aligned experts


def test_wgmma_narrow_tile_widths():
    """Tiles narrow to a half and a quarter of the token block, never below wgmma's 16 tokens."""
    assert [nm_wgmma.narrow_steps(bm) for bm in (256, 128, 64, 32, 16)] == [2, 2, 2, 1, 0]


@pytest.mark.gpu
@needs_gpu
def test_gpu_moe_split_k_partials_past_int32_offsets():
    """8 K-splits at a MiniMax-M2 prefill size: the last split's partials start past 2^31 elements
    (7 * P * 2I and 7 * P * H), though each stride alone fits int32 (the tuner once hit an illegal
    address here)."""
    tokens = 13_000  # P = 104,000 pairs: 7 * P * 3072 > 2^31 > P * 3072
    x, w, tw, ids = _gpu_moe_case(MINIMAX, tokens)
    ref = nm.nvfp4_fused_moe_ref(x, *w, tw, ids)
    packed = (*ng.pack_for_kernel(w[0], w[1]), w[2], *ng.pack_for_kernel(w[3], w[4]), w[5])
    cfg = _moe_cfg(bm=128, bn=128, bkq=16, split13=8, split2=8)
    out = torch.full_like(x, float("nan"))
    nm.nvfp4_fused_moe(x, *packed, tw, ids, out=out, config=cfg)
    assert rel_err(out, ref) < 1e-2


def _gpu_moe_case(shape, tokens):
    """Random NVFP4 experts made directly on the GPU (random codes and scales: quantizing real
    weights at these sizes would take the test's whole budget). The model's H and I, but at most 32
    experts: the torch reference dequantizes all of them with int64 indices (~20 GB for MiniMax's 256)."""
    g = torch.Generator(device="cuda").manual_seed(tokens)
    e, h, i = min(32, shape["experts"]), shape["hidden"], shape["inter"]
    rnd = lambda *s: torch.randint(0, 256, s, generator=g, device="cuda", dtype=torch.uint8)
    scale = lambda *s: (torch.rand(*s, generator=g, device="cuda") * 2 + 0.25).to(torch.float8_e4m3fn)
    w = (rnd(e, 2 * i, h // 2), scale(e, 2 * i, h // 16),
         torch.stack([torch.full((e,), 0.02 / h**0.5, device="cuda"), torch.full((e,), 1.0 / h**0.5, device="cuda")], 1),
         rnd(e, h, i // 2), scale(e, h, i // 16), torch.full((e,), 0.05 / i**0.5, device="cuda"))
    x = torch.randn(tokens, h, generator=g, device="cuda").bfloat16()
    logits = torch.randn(tokens, e, generator=g, device="cuda")
    tw, ids = logits.softmax(-1).topk(8, dim=-1)
    ids = ids.int()
    ids[torch.rand(tokens, 8, generator=g, device="cuda") < 0.05] = -1
    return x, w, (tw / tw.sum(-1, keepdim=True)).contiguous(), ids


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("m", [1, 16, 200, 4096])
def test_gpu_gemm_matches_reference(m):
    g = torch.Generator(device="cuda").manual_seed(m)
    n, k = 4096, 2048
    packed = torch.randint(0, 256, (n, k // 2), generator=g, device="cuda", dtype=torch.uint8)
    scale = (torch.rand(n, k // 16, generator=g, device="cuda") + 0.5).to(torch.float8_e4m3fn)
    gs = torch.tensor([0.01, 0.02, 0.005], device="cuda")
    x = torch.randn(m, k, generator=g, device="cuda").bfloat16()
    ref = ng.nvfp4_gemm_ref(x, packed, scale, gs, [2048, 1024, 1024])
    wq, sq = ng.pack_for_kernel(packed, scale)
    assert rel_err(ng.nvfp4_gemm(x, wq, sq, gs, [2048, 1024, 1024]), ref) < 1e-2


@pytest.mark.gpu
@needs_gpu
def test_gpu_moe_cuda_graph_replay():
    x, w, tw, ids = _gpu_moe_case(QWEN3, 64)
    packed = (*ng.pack_for_kernel(w[0], w[1]), w[2], *ng.pack_for_kernel(w[3], w[4]), w[5])
    out = torch.empty_like(x)
    run = lambda: nm.nvfp4_fused_moe(x, *packed, tw, ids, out=out)
    graph = capture_cuda_graph(run)
    x2, _, tw2, ids2 = _gpu_moe_case(QWEN3, 65)
    x.copy_(x2[:64]), tw.copy_(tw2[:64]), ids.copy_(ids2[:64])
    graph.replay()
    assert rel_err(out, nm.nvfp4_fused_moe_ref(x, *w, tw, ids)) < 1e-2


@pytest.mark.gpu
@needs_gpu
def test_gpu_layers_relayout_and_dispatch():
    """On CUDA, the NVFP4 methods re-lay weights once at load time and ops dispatch to the kernels;
    the result matches the torch reference on the original (ModelOpt-layout) weights."""
    from torch import nn

    from tenk.quant import ops
    from tenk.quant.methods import Nvfp4LinearMethod, Nvfp4MoEMethod

    g = torch.Generator(device="cuda").manual_seed(0)
    layer = nn.Module()
    m = Nvfp4LinearMethod()
    m.create_weights(layer, 2048, [1024, 512], torch.bfloat16)
    layer.cuda()
    layer.weight.data.copy_(torch.randint(0, 256, layer.weight.shape, generator=g, device="cuda", dtype=torch.uint8))
    layer.weight_scale.data.copy_((torch.rand(layer.weight_scale.shape, generator=g, device="cuda") + 0.5)
                                  .to(torch.float8_e4m3fn))
    layer.weight_scale_2.data.copy_(torch.tensor([0.01, 0.03], device="cuda"))
    original = (layer.weight.data.clone(), layer.weight_scale.data.clone())
    m.process_weights_after_loading(layer)
    assert layer.weight.dtype == torch.int16
    x = torch.randn(7, 2048, generator=g, device="cuda").bfloat16()
    want = ng.nvfp4_gemm_ref(x, *original, layer.weight_scale_2, layer.shard_sizes)
    assert rel_err(m.apply(layer, x), want) < 1e-2

    experts = nn.Module()
    em = Nvfp4MoEMethod()
    em.create_weights(experts, 16, 1024, 256, torch.bfloat16)
    experts.cuda()
    for name in ("w13_weight", "w2_weight"):
        p = getattr(experts, name)
        p.data.copy_(torch.randint(0, 256, p.shape, generator=g, device="cuda", dtype=torch.uint8))
    for name in ("w13_weight_scale", "w2_weight_scale"):
        p = getattr(experts, name)
        p.data.copy_((torch.rand(p.shape, generator=g, device="cuda") + 0.5).to(torch.float8_e4m3fn))
    experts.w13_weight_scale_2.data.copy_(torch.rand(16, 2, generator=g, device="cuda") * 0.05)
    experts.w2_weight_scale_2.data.copy_(torch.rand(16, generator=g, device="cuda") * 0.05)
    before = [getattr(experts, n).data.clone() for n in ("w13_weight", "w13_weight_scale", "w2_weight", "w2_weight_scale")]
    em.process_weights_after_loading(experts)
    assert experts.w13_weight.dtype == torch.int16 and experts.w2_weight.dtype == torch.int16
    assert ng.is_tiled(experts.w13_weight, experts.w13_weight_scale) and ng.is_tiled(experts.w2_weight,
                                                                                    experts.w2_weight_scale)
    x = torch.randn(5, 1024, generator=g, device="cuda").bfloat16()
    tw, ids = torch.rand(5, 16, generator=g, device="cuda").softmax(-1).topk(4, dim=-1)
    ids = ids.int()
    want = nm.nvfp4_fused_moe_ref(x, before[0], before[1], experts.w13_weight_scale_2, before[2], before[3],
                                  experts.w2_weight_scale_2, tw, ids)
    assert rel_err(em.apply(experts, x, tw, ids), want) < 1e-2
    assert rel_err(ops.nvfp4_moe(x, before[0], before[1], experts.w13_weight_scale_2, before[2], before[3],
                                 experts.w2_weight_scale_2, tw, ids), want) < 1e-2  # ModelOpt layout: re-laid per call


@pytest.mark.slow
def test_benchmark_smoke_run(tmp_path):
    """benchmarks/moe_kernels.py runs end to end (--smoke: CPU, interpreter, tiny shapes), so the
    GPU run does not fail on plumbing."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "moe_kernels.py"
    proc = subprocess.run([sys.executable, str(script), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "moe_kernels_smoke.json").read_text())
    assert not result["errors"] and result["checks"] and all(c["ok"] for c in result["checks"])
    rows = result["rows"]
    assert {r["model"] for r in rows} == {"qwen3", "minimax"} and len(rows) == 6
    for r in rows:
        assert r["nvfp4_bytes"] < r["bf16_bytes"] / 3 and r["flops"] > 0 and r["nvfp4_ms"] > 0
    aligned = [r for r in rows if "align_ms" in r]  # every row but the tiny batches' direct mode
    assert aligned and all(r["align_ms"] > 0 for r in aligned)
