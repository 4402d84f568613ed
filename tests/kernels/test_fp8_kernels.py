"""FP8 weight-only kernels (tenk.kernels.fp8_gemm / fp8_moe) against their torch references.

CPU: the kernels run under Triton's interpreter on tiny shapes (Triton's own E4M3 cast); the
inline-asm conversion the GPU runs for bf16 is checked instruction by instruction by a small PTX
emulator over every pair of E4M3 codes (tests/kernels/test_fp8_compile_sm90.py compiles it for
sm_90). GPU-marked tests run the real thing at MiniMax-M2 shapes and skip without CUDA.
"""

import numpy as np
import pytest
import torch

from tenk.kernels import fp8_gemm as fg
from tenk.kernels import fp8_moe as fm
from tenk.kernels.configs.fp8 import Fp8Config, Fp8MoeConfig, dense_config, fit_block_k, fit_block_n, moe_config
from tenk.kernels.testing import capture_cuda_graph, make_moe_case, rel_err
from tenk.quant import ops
from tenk.quant.fp8 import quantize_fp8_block, quantize_fp8_per_tensor
from tests.kernels.conftest import assert_shipped_tables_load

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # exp overflow on masked garbage lanes

SMALL = Fp8Config(block_m=16, block_n=32, block_k=64)
SPLIT = Fp8Config(block_m=16, block_n=16, block_k=32, split_k=3)


# ---------------------------------------------------------------- format math


def _dense_case(scheme, n, k, seed, shards=None, block=(32, 64)):
    """An E4M3 weight with its scales; per-tensor shards get scales 100x apart (a kernel that
    mixes them up fails), block scales differ block by block."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    if scheme == "block":
        w = w * torch.logspace(-2, 1, n).unsqueeze(1)  # rows (hence block rows) of very different size
        q, s = quantize_fp8_block(w, block)
        return q, s, None
    if scheme == "channel":
        return (w * 40).clamp(-448, 448).to(torch.float8_e4m3fn), torch.rand(n, generator=g) * 0.1 + 0.01, None
    sizes = shards or [n]
    parts, start = [], 0
    for i, size in enumerate(sizes):
        parts.append(quantize_fp8_per_tensor(w[start : start + size] * 10.0 ** (i - 1)))
        start += size
    return torch.cat([p[0] for p in parts]), torch.stack([p[1] for p in parts]), sizes


@pytest.mark.parametrize("scheme", ["block", "tensor", "channel"])
def test_kernel_format_math_matches_quant(scheme):
    block = (32, 64)
    q, s, sizes = _dense_case(scheme, 80, 200, 0, shards=[32, 32, 16], block=block)  # partial blocks both ways
    want = ops.fp8_dequant_linear_weight(q, s, scheme, sizes or [80], torch.float32, block)
    assert torch.equal(fg.dequantize_weight(q, s, scheme, sizes, torch.float32, block), want)
    assert torch.equal(fg.dequantize_weight(q, s, scheme, sizes, torch.bfloat16, block), want.bfloat16())


@pytest.mark.parametrize("scheme", ["block", "tensor", "channel"])
def test_one_pass_dequantization_is_exact(interpret, scheme):
    """The dense "dequant" impl's Triton pass gives dequantize_weight's values bit for bit
    (partial scale blocks along both dimensions, ragged tiles, three per-tensor shards)."""
    block = (32, 64)
    q, s, sizes = _dense_case(scheme, 80, 200, 3, shards=[32, 32, 16], block=block)
    for dtype in (torch.float32, torch.bfloat16):
        want = fg.dequantize_weight(q, s, scheme, sizes, dtype, block)
        assert torch.equal(fg.dequantize_weight_triton(q, s, scheme, sizes, dtype, block), want)


def test_expert_dequantization_matches_quant_per_expert():
    g = torch.Generator().manual_seed(1)
    w13 = torch.randn(3, 128, 64, generator=g)
    w2 = torch.randn(3, 64, 64, generator=g)
    q13 = [quantize_fp8_block(w, (32, 32)) for w in w13]
    q2 = [quantize_fp8_block(w, (32, 32)) for w in w2]
    stack = lambda qs, i: torch.stack([q[i] for q in qs])
    got13, got2 = fm.dequantize_experts(stack(q13, 0), stack(q13, 1), stack(q2, 0), stack(q2, 1), "block",
                                        torch.float32, (32, 32))
    for e in range(3):
        assert torch.equal(got13[e], ops.fp8_dequant_linear_weight(q13[e][0], q13[e][1], "block", [128], torch.float32,
                                                                    (32, 32)))
        assert torch.equal(got2[e], ops.fp8_dequant_linear_weight(q2[e][0], q2[e][1], "block", [64], torch.float32,
                                                                   (32, 32)))


# ---------------------------------------------------------------- the inline asm, emulated


def _emulate(asm: str, src: np.ndarray) -> np.ndarray:
    """Runs the conversion's PTX on uint32 numpy arrays: $1 is the 16-bit input, $0 the output."""
    regs = {"$1": src.astype(np.uint32) & 0xFFFF}
    val = lambda t: np.uint32(int(t, 0)) if t[0].isdigit() else regs[t]
    for stmt in asm.strip().strip("{}").split(";"):
        stmt = stmt.strip()
        if not stmt or stmt.startswith(".reg"):
            continue
        op, args = stmt.split(None, 1)
        d, *a = [t.strip() for t in args.split(",")]
        if op == "mov.b32":
            r = val(a[0]) + np.zeros_like(src, dtype=np.uint32)
        elif op == "cvt.u32.u16":
            r = val(a[0]) & 0xFFFF
        elif op == "prmt.b32":  # default mode: selector nibble -> byte of {b, a}; bit 3 replicates its sign
            pool = (val(a[0]).astype(np.uint64) | (val(a[1]).astype(np.uint64) << 32))
            sel = int(a[2], 0)
            r = np.zeros_like(src, dtype=np.uint64)
            for i in range(4):
                nib = (sel >> (4 * i)) & 0xF
                byte = (pool >> np.uint64(8 * (nib & 7))) & np.uint64(0xFF)
                if nib & 8:
                    byte = np.where(byte & np.uint64(0x80), np.uint64(0xFF), np.uint64(0))
                r |= byte << np.uint64(8 * i)
        elif op == "shl.b32":
            r = val(a[0]).astype(np.uint64) << np.uint64(int(a[1]))
        elif op == "and.b32":
            r = val(a[0]) & val(a[1])
        elif op == "mul.rn.bf16x2":
            halves = lambda v: [torch.from_numpy(((v >> s) & 0xFFFF).astype(np.int32)).to(torch.int16).view(torch.bfloat16)
                                for s in (0, 16)]
            prods = [(x.float() * y.float()).bfloat16().view(torch.int16).numpy().astype(np.uint32) & 0xFFFF
                     for x, y in zip(halves(val(a[0])), halves(val(a[1])))]
            r = prods[0] | (prods[1] << 16)
        else:
            raise AssertionError(f"emulator lacks {op}")
        regs[d] = np.asarray(r).astype(np.uint64).astype(np.uint32)
    return regs["$0"]


def test_conversion_asm_gives_every_e4m3_in_bf16():
    """All 65536 pairs of E4M3 codes (NaN codes aside) -> the two values in bf16, exactly, in order."""
    pairs = np.arange(65536, dtype=np.uint32)
    out = _emulate(fg._ASM_E4M3_TO_BF16.value, pairs)
    codes = torch.from_numpy(pairs.astype(np.int32))
    for half in (0, 1):
        byte = ((codes >> (8 * half)) & 0xFF).to(torch.uint8)
        want = byte.view(torch.float8_e4m3fn).to(torch.bfloat16)
        got = torch.from_numpy(((out >> (16 * half)) & 0xFFFF).astype(np.int32)).to(torch.int16).view(torch.bfloat16)
        ok = (byte & 0x7F) != 0x7F
        assert torch.equal(got[ok].view(torch.int16), want[ok].view(torch.int16)), half  # -0.0 included
        assert (got[~ok].float().abs() == 480).all()  # NaN codes: documented, never in checkpoints


# ---------------------------------------------------------------- dense GEMM (interpreter)


@pytest.mark.parametrize("m", [1, 5, 33])
@pytest.mark.parametrize("cfg", [SMALL, SPLIT], ids=["fused", "split_k"])
@pytest.mark.parametrize("scheme", ["block", "tensor", "channel"])
def test_gemm_matches_reference_fp32(interpret, scheme, cfg, m):
    q, s, sizes = _dense_case(scheme, 96, 256, 2, shards=[32, 48, 16])  # q | k | v, three scales
    x = torch.randn(m, 256, generator=torch.Generator().manual_seed(m))
    bias = torch.randn(96, generator=torch.Generator().manual_seed(3))
    ref = fg.fp8_gemm_ref(x, q, s, scheme, sizes, bias, (32, 64))
    out = torch.full((m, 96), float("nan"))  # poisoned: every element must be written
    fg.fp8_gemm(x, q, s, scheme, sizes, bias, (32, 64), config=cfg, out=out)
    assert rel_err(out, ref) < 1e-6  # the scales go on fp32 sums: only rounding order differs


@pytest.mark.parametrize("scheme", ["block", "tensor"])
def test_gemm_bf16_ragged_shapes(interpret, scheme):
    """N 80 and K 200: neither a multiple of the tiles nor of the scale blocks (partial blocks)."""
    q, s, sizes = _dense_case(scheme, 80, 200, 4, shards=[48, 32])
    x = torch.randn(7, 200, generator=torch.Generator().manual_seed(5)).bfloat16()
    ref = fg.fp8_gemm_ref(x.float(), q, s, scheme, sizes, None, (32, 64))
    out = fg.fp8_gemm(x, q, s, scheme, sizes, None, (32, 64), config=SMALL)
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) < 4e-3  # one bf16 rounding of the output


def test_gemm_more_shards_than_the_kernel_reads(interpret):
    q, s, sizes = _dense_case("tensor", 64, 128, 6, shards=[16, 16, 16, 16])
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(6))
    assert rel_err(fg.fp8_gemm(x, q, s, "tensor", sizes, config=SMALL), fg.fp8_gemm_ref(x, q, s, "tensor", sizes)) < 1e-6


def test_gemm_dequant_impl_is_the_reference():
    q, s, _ = _dense_case("block", 64, 256, 7)
    x = torch.randn(9, 256, generator=torch.Generator().manual_seed(7))
    bias = torch.randn(64, generator=torch.Generator().manual_seed(8))
    out = fg.fp8_gemm(x, q, s, "block", None, bias, (32, 64), config=Fp8Config(impl="dequant"))
    assert rel_err(out, fg.fp8_gemm_ref(x, q, s, "block", None, bias, (32, 64))) < 1e-6


def test_gemm_rejects_what_does_not_fit():
    q, s, _ = _dense_case("block", 64, 256, 9)
    with pytest.raises(ValueError, match="block scale shape"):
        fg.fp8_gemm(torch.zeros(2, 256), q, s, "block", None, None, (64, 64))
    with pytest.raises(ValueError, match="K=128"):
        fg.fp8_gemm(torch.zeros(2, 128), q, s, "block", None, None, (32, 64))


# ---------------------------------------------------------------- MoE (interpreter)

BLOCK = (32, 32)


def _moe_case(tokens, scheme, hidden=128, inter=64, experts=6, top_k=3, drop=0.3, seed=0, up_gain=40.0,
              dtype=torch.float32):
    """A random MoE with E4M3 experts; w3 is scaled by up_gain before quantizing, so per-tensor w1
    and w3 scales differ by that much (a kernel mixing them up fails)."""
    c = make_moe_case(tokens, hidden, inter, experts, top_k, dtype=torch.float32, drop_fraction=drop, seed=seed)
    w13 = torch.cat([c.w13[:, :inter], c.w13[:, inter:] * up_gain], 1)
    if scheme == "block":
        q13 = [quantize_fp8_block(w, BLOCK) for w in w13]
        q2 = [quantize_fp8_block(w, BLOCK) for w in c.w2]
        weights = (torch.stack([q for q, _ in q13]), torch.stack([s for _, s in q13]),
                   torch.stack([q for q, _ in q2]), torch.stack([s for _, s in q2]))
    else:
        g = [quantize_fp8_per_tensor(w[:inter]) for w in w13]
        u = [quantize_fp8_per_tensor(w[inter:]) for w in w13]
        q2 = [quantize_fp8_per_tensor(w) for w in c.w2]
        weights = (torch.stack([torch.cat([a[0], b[0]]) for a, b in zip(g, u)]),
                   torch.stack([torch.stack([a[1], b[1]]) for a, b in zip(g, u)]),
                   torch.stack([q for q, _ in q2]), torch.stack([s for _, s in q2]))
    return c.x.to(dtype), weights, c.topk_weights, c.topk_ids


def _moe_cfg(bm=16, bn=32, bk=32, split13=1, split2=1, direct=False):
    return Fp8MoeConfig(block_m=bm, w13=Fp8Config(block_m=bm, block_n=bn, block_k=bk, split_k=split13),
                        w2=Fp8Config(block_m=bm, block_n=bn, block_k=bk, split_k=split2), direct=direct)


MOE_CONFIGS = {"aligned": _moe_cfg(), "split_k": _moe_cfg(bn=16, bk=16, split13=2, split2=3),
               "direct": _moe_cfg(direct=True, split13=2)}


@pytest.mark.parametrize("cfg", list(MOE_CONFIGS))
@pytest.mark.parametrize("tokens", [1, 5, 33])
@pytest.mark.parametrize("scheme", ["block", "tensor"])
def test_moe_matches_reference_fp32(interpret, scheme, tokens, cfg):
    if cfg == "direct" and tokens > 5:
        pytest.skip("direct mode is for a handful of pairs (one program per pair: slow to interpret)")
    x, w, tw, ids = _moe_case(tokens, scheme, seed=tokens)
    ref = fm.fp8_fused_moe_ref(x, *w, tw, ids, scheme, BLOCK)
    out = torch.full_like(x, float("nan"))  # poisoned: every token row must be written
    fm.fp8_fused_moe(x, *w, tw, ids, scheme, BLOCK, out=out, config=MOE_CONFIGS[cfg])
    assert rel_err(out, ref) < 1e-6


def test_moe_bf16(interpret):
    x, w, tw, ids = _moe_case(9, "block", seed=11, dtype=torch.bfloat16)
    ref = fm.fp8_fused_moe_ref(x.float(), *w, tw, ids, "block", BLOCK)
    out = fm.fp8_fused_moe(x, *w, tw, ids, "block", BLOCK, config=_moe_cfg())
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) < 1e-2  # bf16 rounding of act, y and out


def test_moe_uses_w1_and_w3_scales_separately(interpret):
    x, w, tw, ids = _moe_case(6, "tensor", hidden=64, drop=0.0, seed=12, up_gain=1000.0)
    assert (w[1][:, 1] / w[1][:, 0]).min() > 100  # the two halves' scales are far apart
    out = fm.fp8_fused_moe(x, *w, tw, ids, "tensor", config=_moe_cfg())
    assert rel_err(out, fm.fp8_fused_moe_ref(x, *w, tw, ids, "tensor")) < 1e-6
    for wrong in (w[1][:, :1].repeat(1, 2), w[1][:, 1:].repeat(1, 2)):  # one scale used for both halves
        assert rel_err(fm.fp8_fused_moe(x, w[0], wrong, *w[2:], tw, ids, "tensor", config=_moe_cfg()), out) > 0.9


def test_moe_remote_experts_contribute_nothing(interpret):
    x, w, tw, ids = _moe_case(4, "block", hidden=64, experts=4, top_k=2, drop=0.0, seed=13)
    ids[0] = -1
    ids[1, 1] = -1
    for cfg in (_moe_cfg(split13=2, split2=2), _moe_cfg(direct=True)):
        out = fm.fp8_fused_moe(x, *w, tw, ids, "block", BLOCK, config=cfg)
        assert torch.equal(out[0], torch.zeros_like(out[0]))
        one = fm.fp8_fused_moe_ref(x[1:2], *w, tw[1:2, :1], ids[1:2, :1], "block", BLOCK)
        assert rel_err(out[1:2], one) < 1e-6


def test_moe_rejects_scales_that_do_not_fit():
    x, w, tw, ids = _moe_case(2, "block", drop=0.0)
    with pytest.raises(ValueError, match="do not fit"):
        fm.fp8_fused_moe(x, *w, tw, ids, "block", (64, 64))
    with pytest.raises(ValueError, match="do not fit"):
        fm.fp8_fused_moe(x, w[0], w[1], w[2], w[3][:, :1], tw, ids, "tensor")


# ---------------------------------------------------------------- configs


def test_configs_fit_scale_blocks_and_shapes():
    assert fit_block_k(128, 3072, 128) == 128 and fit_block_k(128, 200, 64) == 16 and fit_block_k(64, 768, None) == 64
    assert fit_block_n(128, 128) == 128 and fit_block_n(128, 64) == 64 and fit_block_n(256, None) == 256
    for m in (1, 16, 64, 512, 8192):
        dense_config(m, 4096, 3072)
        cfg = moe_config(m, 256, 3072, 768, 8)
        assert cfg.w13.block_m == cfg.w2.block_m == cfg.block_m <= 64
    assert dense_config(1, 4096, 3072).split_k > 1  # decode fills the GPU by splitting K
    assert moe_config(1, 256, 3072, 768, 8).direct and not moe_config(64, 256, 3072, 768, 8).direct
    assert dense_config(8192, 4096, 3072).impl == "dequant"
    with pytest.raises(ValueError):
        Fp8MoeConfig(block_m=32, w13=Fp8Config(block_m=16), w2=Fp8Config(block_m=32))


def test_tables_are_read_on_their_gpu_and_heuristics_elsewhere(monkeypatch):
    """fp8_<gpu>.json (benchmarks/tune_fp8.py) decides on an H100 / H200; its buckets are the largest
    listed M at or below the batch; shapes it lacks, and the CPU, get the heuristics."""
    from tenk.kernels.configs import fp8 as cfgs
    from tenk.kernels.configs import nvfp4 as tables  # the table machinery of both formats

    assert_shipped_tables_load("fp8", Fp8MoeConfig, Fp8Config)
    tuned = {"dense": {"4096x3072": {"1": Fp8Config(block_n=128, num_stages=5, split_k=8).to_dict(),
                                     "64": {**Fp8Config(block_m=64, num_stages=3).to_dict(), "ms": 0.01}}},
             "moe": {"e256_h3072_i768_top8": {"16": Fp8MoeConfig(block_m=32, w13=Fp8Config(block_m=32, split_k=2),
                                                                  w2=Fp8Config(block_m=32)).to_dict()}}}  # fmt: skip
    monkeypatch.setattr(tables, "load_table", lambda tag, fmt: tuned if (tag, fmt) == ("h100", "fp8")
                        else {"dense": {}, "moe": {}})  # fmt: skip
    monkeypatch.setattr(tables, "gpu_tag", lambda device=None: "h100")
    assert cfgs.dense_config(1, 4096, 3072) == Fp8Config(block_n=128, num_stages=5, split_k=8)
    assert cfgs.dense_config(63, 4096, 3072).num_stages == 5 and cfgs.dense_config(100, 4096, 3072).block_m == 64
    assert cfgs.dense_config(8, 2048, 3072) == cfgs.heuristic_dense(8, 2048, 3072)  # a shape the table lacks
    assert cfgs.moe_config(16, 256, 3072, 768, 8).w13.split_k == 2
    assert cfgs.moe_config(8, 256, 3072, 768, 8).block_m == 32  # below the smallest bucket: the smallest entry
    monkeypatch.setattr(tables, "gpu_tag", lambda device=None: None)
    assert cfgs.dense_config(1, 4096, 3072) == cfgs.heuristic_dense(1, 4096, 3072)


def test_cpu_ops_keep_the_reference(monkeypatch):
    """On CPU tenk.quant.ops never launches a kernel: the reference computes."""
    q, s, sizes = _dense_case("tensor", 32, 64, 14, shards=[16, 16])
    x = torch.randn(3, 2, 64).bfloat16()
    monkeypatch.setattr(fg, "fp8_gemm", None)  # a call would fail
    want = torch.nn.functional.linear(x, ops.fp8_dequant_linear_weight(q, s, "tensor", sizes, torch.bfloat16))
    assert torch.equal(ops.fp8_linear(x, q, s, "tensor", sizes), want)


# ---------------------------------------------------------------- on a GPU

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
H, I, TOP_K = 3072, 768, 8  # MiniMax-M2 experts under TP=2


def _gpu_weight(n, k, scheme, g, shards=None):
    """Random E4M3 weights made on the GPU (like quantized ones: |w| up to 448) with scales that keep
    outputs O(1); per-shard scales 10x apart."""
    q = (torch.randn(n, k, generator=g, device="cuda") * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    if scheme == "block":
        s = (torch.rand(-(-n // 128), -(-k // 128), generator=g, device="cuda") + 0.5) / (100 * k**0.5)
    else:
        s = torch.tensor([10.0**-i for i in range(len(shards or [n]))], device="cuda") / (100 * k**0.5)
    return q, s


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("m", [1, 16, 200, 4096])
@pytest.mark.parametrize("scheme", ["block", "tensor"])
def test_gpu_gemm_matches_reference(scheme, m):
    g = torch.Generator(device="cuda").manual_seed(m)
    shards = [3072, 512, 512]
    q, s = _gpu_weight(4096, 3072, scheme, g, shards)
    x = torch.randn(m, 3072, generator=g, device="cuda").bfloat16()
    bias = torch.randn(4096, generator=g, device="cuda").bfloat16()
    ref = fg.fp8_gemm_ref(x.float(), q, s, scheme, shards, bias.float())
    assert rel_err(fg.fp8_gemm(x, q, s, scheme, shards, bias), ref) < 1e-2
    assert rel_err(fg.fp8_gemm(x, q, s, scheme, shards, bias, config=Fp8Config(impl="dequant")), ref) < 1e-2


@pytest.mark.gpu
@needs_gpu
def test_gpu_conversion_is_exact_for_every_code():
    """x = identity: out = every E4M3 code (NaN aside) in bf16, exactly, through the asm and the MMA
    (compared as numbers: the MMA's sum turns -0 into +0)."""
    codes = torch.arange(256, dtype=torch.int32)
    codes = codes[(codes & 0x7F) != 0x7F].to(torch.uint8)  # 254 codes
    w = codes.repeat(64 * 128 // 254 + 1)[: 64 * 128].view(64, 128).view(torch.float8_e4m3fn).cuda()
    eye = torch.eye(128, device="cuda").bfloat16()
    out = fg.fp8_gemm(eye, w, torch.ones(1, device="cuda"), "tensor", None, config=Fp8Config(block_m=128))
    assert torch.equal(out.t(), w.to(torch.bfloat16))


def _gpu_moe_case(scheme, tokens, experts=32):
    """MiniMax-M2 expert shapes under TP=2 but at most 32 experts (the reference dequantizes them
    all in fp32); 5% of the pairs on another rank (-1)."""
    g = torch.Generator(device="cuda").manual_seed(tokens)
    q13, s13 = zip(*[_gpu_weight(2 * I, H, scheme, g, [I, I]) for _ in range(experts)])
    q2, s2 = zip(*[_gpu_weight(H, I, scheme, g) for _ in range(experts)])
    s2 = torch.stack(s2)
    w = (torch.stack(q13), torch.stack(s13), torch.stack(q2), s2.reshape(experts) if scheme == "tensor" else s2)
    x = torch.randn(tokens, H, generator=g, device="cuda").bfloat16()
    tw, ids = torch.randn(tokens, experts, generator=g, device="cuda").softmax(-1).topk(TOP_K, dim=-1)
    ids = ids.int()
    ids[torch.rand(tokens, TOP_K, generator=g, device="cuda") < 0.05] = -1
    return x, w, (tw / tw.sum(-1, keepdim=True)).contiguous(), ids


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("tokens", [1, 16, 256, 2048])
@pytest.mark.parametrize("scheme", ["block", "tensor"])
def test_gpu_moe_matches_reference(scheme, tokens):
    x, w, tw, ids = _gpu_moe_case(scheme, tokens)
    ref = fm.fp8_fused_moe_ref(x.float(), *w, tw, ids, scheme)
    out = torch.full_like(x, float("nan"))
    fm.fp8_fused_moe(x, *w, tw, ids, scheme, out=out, config=moe_config(tokens, 256, H, I, TOP_K))
    assert rel_err(out, ref) < 1e-2


@pytest.mark.gpu
@needs_gpu
def test_gpu_moe_cuda_graph_replay():
    x, w, tw, ids = _gpu_moe_case("block", 64)
    out = torch.empty_like(x)
    run = lambda: fm.fp8_fused_moe(x, *w, tw, ids, "block", out=out)
    graph = capture_cuda_graph(run)
    x2, _, tw2, ids2 = _gpu_moe_case("block", 65)
    x.copy_(x2[:64]), tw.copy_(tw2[:64]), ids.copy_(ids2[:64])
    graph.replay()
    assert rel_err(out, fm.fp8_fused_moe_ref(x.float(), *w, tw, ids, "block")) < 1e-2


@pytest.mark.gpu
@needs_gpu
def test_gpu_methods_dispatch_to_the_kernels(monkeypatch):
    """Fp8LinearMethod / Fp8MoEMethod on CUDA bf16 go through the Triton kernels (the references
    are made unreachable) and match the references."""
    from torch import nn

    from tenk.quant.methods import Fp8LinearMethod, Fp8MoEMethod

    g = torch.Generator(device="cuda").manual_seed(0)
    layer = nn.Module()
    m = Fp8LinearMethod("block")
    m.create_weights(layer, 3072, [3072, 512, 512], torch.bfloat16)
    layer.cuda()
    layer.weight.data, layer.weight_scale.data = _gpu_weight(4096, 3072, "block", g)
    m.process_weights_after_loading(layer)
    x = torch.randn(5, 3072, generator=g, device="cuda").bfloat16()
    want = fg.fp8_gemm_ref(x.float(), layer.weight, layer.weight_scale, "block")

    experts = nn.Module()
    em = Fp8MoEMethod("block")
    em.create_weights(experts, 32, H, I, torch.bfloat16)
    experts.cuda()
    _, w, tw, ids = _gpu_moe_case("block", 5)
    for p, v in zip((experts.w13_weight, experts.w13_weight_scale, experts.w2_weight, experts.w2_weight_scale), w):
        p.data = v
    em.process_weights_after_loading(experts)
    want_moe = fm.fp8_fused_moe_ref(x.float(), *w, tw, ids, "block")

    monkeypatch.setattr(ops, "fp8_dequant_linear_weight", None)  # the references must not run
    monkeypatch.setattr(fm, "dequantize_experts", None)
    assert rel_err(m.apply(layer, x), want) < 1e-2
    assert rel_err(em.apply(experts, x, tw, ids), want_moe) < 1e-2


@pytest.mark.slow
def test_benchmark_smoke_run(tmp_path):
    """benchmarks/fp8_kernels.py runs end to end (--smoke: CPU, interpreter, tiny shapes; one TP and
    scheme here to stay quick), so the GPU run does not fail on plumbing."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "fp8_kernels.py"
    proc = subprocess.run([sys.executable, str(script), "--smoke", "--tp", "2", "--schemes", "block", "--tokens", "1,5",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "fp8_kernels_smoke.json").read_text())
    assert not result["errors"] and result["checks"] and all(c["ok"] for c in result["checks"])
    rows = result["rows"]
    assert {(r["kind"], r["shape"]) for r in rows} == {("moe", "tp2"), ("dense", "tp2/qkv"), ("dense", "tp2/o")}
    assert len(rows) == 6
    for r in rows:
        assert r["bf16_bytes"] / 2.2 < r["fp8_bytes"] < r["bf16_bytes"] / 1.5 and r["flops"] > 0 and r["fp8_ms"] > 0
