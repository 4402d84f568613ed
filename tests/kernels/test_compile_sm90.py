"""Every Triton launch that the GPU path makes, at realistic shapes, compiles for an H100 (sm_90)
without register spills and within shared memory. Runs on a CPU-only machine: Triton ships ptxas;
the launchers run on CPU tensors with the kernels replaced by recorders, so nothing executes."""

import pytest
import torch

from tenk.kernels import activation, attention_triton, moe, qk_norm_rope, rmsnorm, rotary
from tenk.kernels.testing import make_attention_case
from tests.kernels.conftest import assert_waits_first

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
MAX_SHARED = 227 * 1024  # H100 per-block limit


def _check(results, expected_kernels):
    names = sorted({r["name"] for r in results})
    assert names == sorted(expected_kernels)
    for r in results:
        assert r["spill_bytes"] == 0, r
        assert r["shared_bytes"] <= MAX_SHARED, r


def _attention(seqs, hq, hkv, d, cache_dtype=None, **kw):
    case = make_attention_case(seqs, hq, hkv, d, dtype=torch.bfloat16, cache_dtype=cache_dtype,
                               kv_scale=0.05 if cache_dtype else 1.0, seed=0)

    def call():
        attention_triton.store_kvcache_triton(case.k, case.v, case.k_cache, case.v_cache, case.meta.slot_mapping,
                                              case.k_scale, case.v_scale)
        attention_triton.paged_attention_triton(case.q, case.k, case.v, case.k_cache, case.v_cache, case.meta,
                                                case.scale, k_scale=case.k_scale, v_scale=case.v_scale, **kw)

    return call


# Qwen3-30B-A3B (32/4 heads) and MiniMax-M2 under TP=2 (24/4: groups of 6), head_dim 128.
@pytest.mark.parametrize("hq,hkv", [(32, 4), (24, 4)])
@pytest.mark.parametrize("cache_dtype", [None, torch.float8_e4m3fn], ids=["bf16", "fp8"])
def test_decode_compiles(sm90_compile, hq, hkv, cache_dtype):
    seqs = [(300, 1), (17, 1), (600, 1)]
    _check(sm90_compile(attention_triton, _attention(seqs, hq, hkv, 128, cache_dtype, num_kv_splits=1)),
           ["_store_kv_kernel", "_decode_kernel"])


@pytest.mark.parametrize("hq,hkv", [(32, 4), (24, 4)])
def test_decode_fp8_computes_in_fp16(sm90_compile, monkeypatch, hq, hkv):
    """The fp8 decode converts K/V tiles to fp16 two values an instruction and runs fp16 MMAs; the
    GPU's V tile is converted as loaded and reaches the MMA through ldmatrix.trans."""
    from tenk.kernels import fp8_gemm

    monkeypatch.setattr(fp8_gemm, "COMPILE_GPU_VARIANT", True)
    results = sm90_compile(attention_triton, _attention([(300, 1), (17, 1), (600, 1)], hq, hkv, 128,
                                                        torch.float8_e4m3fn, num_kv_splits=1))
    _check(results, ["_store_kv_kernel", "_decode_kernel"])
    decode = [r for r in results if r["name"] == "_decode_kernel"]
    for r in decode:
        mmas = [line for line in r["ptx"].splitlines() if "mma.sync" in line]
        assert "cvt.rn.f16x2.e4m3x2" in r["ptx"] and "prmt.b32" not in r["ptx"]
        assert mmas and all(".f32.f16.f16.f32" in line for line in mmas), mmas[:2]
        assert "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16" in r["ptx"]


def test_decode_fp8_fits_four_ctas_an_sm(sm90_compile, monkeypatch):
    """The fp8 decode program (V converted as loaded) fits 4 CTAs an SM in registers and shared
    memory without a register cap: 4 (sequence, kv head) programs an SM run in one wave."""
    from tenk.kernels import fp8_gemm

    monkeypatch.setattr(fp8_gemm, "COMPILE_GPU_VARIANT", True)
    results = sm90_compile(attention_triton, _attention([(400, 1)] * 8, 32, 4, 128, torch.float8_e4m3fn,
                                                        num_kv_splits=1))
    _check(results, ["_store_kv_kernel", "_decode_kernel"])
    decode = next(r for r in results if r["name"] == "_decode_kernel")
    assert "maxnreg" not in decode["options"]
    assert decode["regs"] <= 128 and 4 * (decode["shared_bytes"] + 1024) <= 228 * 1024, decode


def test_decode_split_compiles(sm90_compile):
    _check(sm90_compile(attention_triton, _attention([(3000, 1)], 32, 4, 128, num_kv_splits=8)),
           ["_store_kv_kernel", "_decode_kernel", "_decode_reduce_kernel"])


@pytest.mark.parametrize("seqs", [[(200, 200), (64, 1)], [(40, 4), (30, 1)]], ids=["long", "short"])
@pytest.mark.parametrize("cache_dtype", [None, torch.float8_e4m3fn], ids=["bf16", "fp8"])
def test_prefill_compiles(sm90_compile, seqs, cache_dtype):
    """A mixed batch: its one-query sequences take the decode kernel, the rest the prefill kernel."""
    _check(sm90_compile(attention_triton, _attention(seqs, 32, 4, 128, cache_dtype, num_kv_splits=1)),
           ["_store_kv_kernel", "_decode_kernel", "_prefill_kernel"])


@pytest.mark.parametrize("seqs", [[(600, 600)] * 2, [(300, 2)] * 4], ids=["wgmma", "two-token"])
def test_prefill_fp8_computes_in_fp16(sm90_compile, monkeypatch, seqs):
    """The fp8 prefill converts K/V tiles to fp16 two values an instruction (no fp16 -> bf16 F2F a
    value) and runs fp16 MMAs: 128-row wgmma tiles for prompts, and for two-token chunks 16-row
    mma.sync tiles whose V tile is converted as loaded and reaches the MMA through ldmatrix.trans."""
    from tenk.kernels import fp8_gemm

    monkeypatch.setattr(fp8_gemm, "COMPILE_GPU_VARIANT", True)
    results = sm90_compile(attention_triton, _attention(seqs, 32, 4, 128, torch.float8_e4m3fn, mixed_decodes=False))
    _check(results, ["_store_kv_kernel", "_prefill_kernel"])
    ptx = next(r for r in results if r["name"] == "_prefill_kernel")["ptx"]
    mmas = [line for line in ptx.splitlines() if "mma.sync" in line or "wgmma.mma_async" in line]
    assert "cvt.rn.f16x2.e4m3x2" in ptx and "cvt.bf16.f16" not in ptx
    assert mmas and all(".f32.f16.f16" in line for line in mmas), mmas[:2]
    if seqs[0][1] == 2:
        assert "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16" in ptx


def test_prefill_head_dim_64_compiles(sm90_compile):
    _check(sm90_compile(attention_triton, _attention([(200, 200)], 16, 16, 64, num_kv_splits=1)),
           ["_store_kv_kernel", "_decode_kernel", "_prefill_kernel"])
    _check(sm90_compile(attention_triton, _attention([(200, 200)], 16, 16, 64, mixed_decodes=False)),
           ["_store_kv_kernel", "_prefill_kernel"])


@pytest.mark.parametrize("per_expert", [8, 32, 128, 512])
@pytest.mark.parametrize("impl", ["triton", "grouped_mm"])
def test_moe_compiles(sm90_compile, per_expert, impl):
    """Qwen3-30B-A3B expert shapes (H 2048, I 768; 8 experts here, weights left uninitialised: only
    shapes matter); pairs per expert select each default GEMM config."""
    E, k = 8, 8
    T = per_expert * E // k
    x = torch.randn(T, 2048).bfloat16()
    w13, w2 = torch.empty(E, 1536, 2048, dtype=torch.bfloat16), torch.empty(E, 2048, 768, dtype=torch.bfloat16)
    ids = torch.stack([torch.randperm(E)[:k] for _ in range(T)]).int()
    weights = torch.full((T, k), 1.0 / k)
    fn = moe.fused_moe_triton if impl == "triton" else moe.fused_moe_grouped_mm
    if impl == "grouped_mm":
        if per_expert > 8:
            pytest.skip("the grouped_mm path launches the same two kernels at every size")
        w13.zero_(), w2.zero_()
    results = sm90_compile([moe, activation], lambda: fn(x, w13, w2, weights, ids))
    expected = ["_silu_and_mul_kernel", "_combine_kernel"] if impl == "grouped_mm" else ["_moe_gemm_kernel", "_combine_kernel"]
    _check(results, expected)


def test_small_ops_compile(sm90_compile):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2048, generator=g).bfloat16()
    w = torch.randn(2048, generator=g).bfloat16()
    heads = torch.randn(64, 40, 128, generator=g).bfloat16()[:, :32]  # strided per-head QK-norm
    _check(sm90_compile(rmsnorm, lambda: (rmsnorm.rms_norm_triton(x, w, 1e-6),
                                          rmsnorm.fused_add_rms_norm_triton(x, x, w, 1e-6),
                                          rmsnorm.rms_norm_triton(heads, w[:128], 1e-6),
                                          rmsnorm.rms_norm_triton(torch.randn(8, 6144).bfloat16(),
                                                                  torch.ones(6144).bfloat16(), 1e-6))),
           ["_rms_norm_kernel"])
    q = torch.randn(64, 48, 128).bfloat16()
    k = torch.randn(64, 8, 128).bfloat16()
    pos = torch.arange(64)
    _check(sm90_compile(rotary, lambda: (rotary.apply_rotary_triton(q, k, pos, rotary.rope_cos_sin_cache(64, 128, 5e6), 64),
                                         rotary.apply_rotary_triton(q, k, pos, rotary.rope_cos_sin_cache(128, 128, 1e6), 128))),
           ["_rotary_kernel"])
    _check(sm90_compile(activation, lambda: activation.silu_and_mul_triton(torch.randn(64, 1536).bfloat16())),
           ["_silu_and_mul_kernel"])
    qkv = torch.randn(64, 40 * 128).bfloat16()  # Qwen3-30B-A3B's q (32 heads) and k (4) as views of qkv
    q32, k4 = qkv[:, : 32 * 128].view(64, 32, 128), qkv[:, 32 * 128 : 36 * 128].view(64, 4, 128)
    ones = torch.ones(128).bfloat16()
    _check(sm90_compile(qk_norm_rope, lambda: (
        qk_norm_rope.qk_norm_rope_triton(q32, k4, ones, ones, 1e-6, pos, rotary.rope_cos_sin_cache(128, 128, 1e6)),
        qk_norm_rope.qk_norm_rope_triton(q[:, :16], k[:, :2], ones, ones, 1e-6, pos,
                                         rotary.rope_cos_sin_cache(128, 128, 1e6)))),
           ["_qk_norm_rope_kernel"])


@pytest.mark.parametrize("splits", [1, 4])
def test_decode_layer_kernels_wait_first_under_pdl(sm90_compile, monkeypatch, splits):
    """Under programmatic dependent launch the attention half of a decode layer (QK-norm, RoPE, KV
    store, decode and its split reduce) runs as a chain of overlapping launches: each kernel waits
    for its predecessor before touching global memory."""
    modules = [rmsnorm, rotary, qk_norm_rope, attention_triton]
    for m in modules:
        monkeypatch.setattr(m, "use_pdl", lambda device: True)
    heads = torch.randn(8, 40, 128).bfloat16()[:, :32]
    q, k = torch.randn(3, 32, 128).bfloat16(), torch.randn(3, 4, 128).bfloat16()
    ones = torch.ones(128).bfloat16()

    def layer():
        rmsnorm.rms_norm_triton(heads, ones, 1e-6)  # MiniMax-M2's partial rotary: the two-step path
        rotary.apply_rotary_triton(q, k, torch.arange(3), rotary.rope_cos_sin_cache(64, 128, 1e6), 64)
        qk_norm_rope.qk_norm_rope_triton(q, k, ones, ones, 1e-6, torch.arange(3),
                                         rotary.rope_cos_sin_cache(128, 128, 1e6))  # Qwen3's fused one
        _attention([(3000, 1), (17, 1), (600, 1)], 32, 4, 128, num_kv_splits=splits)()

    results = sm90_compile(modules, layer)
    expected = ["_rms_norm_kernel", "_rotary_kernel", "_qk_norm_rope_kernel", "_store_kv_kernel", "_decode_kernel"]
    _check(results, expected + (["_decode_reduce_kernel"] if splits > 1 else []))
    assert_waits_first(results)


def test_pdl_is_off_on_cpu_and_with_tenk_pdl_0(monkeypatch):
    """Kernels launch with PDL only on a CUDA GPU that has it, unless TENK_PDL=0 (checked before
    any CUDA call, so this runs without a GPU)."""
    from tenk.kernels._common import use_pdl

    assert not use_pdl(torch.device("cpu"))
    monkeypatch.setenv("TENK_PDL", "0")
    assert not use_pdl(torch.device("cuda", 0))
