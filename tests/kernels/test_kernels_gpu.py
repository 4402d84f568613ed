"""Triton kernels vs their torch references on a real GPU, at model shapes (skipped without CUDA).
Also: decode attention and fused MoE captured in a CUDA graph and replayed on new inputs."""

import pytest
import torch

from tenk.kernels import activation, attention_triton as at, moe, qk_norm_rope, rmsnorm, rotary
from tenk.kernels.testing import check_attention, make_attention_case, make_moe_case, rel_err

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
DEV = "cuda"
BF16_TOL = 1e-2


def _lens(n, lo, hi, seed):
    return torch.randint(lo, hi, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


# ---------------------------------------------------------------- attention


@pytest.mark.parametrize("hq,hkv", [(32, 4), (48, 8), (24, 4)], ids=["qwen3-30b", "minimax", "minimax-tp2"])
@pytest.mark.parametrize("splits", [None, 1, 4])
def test_decode(hq, hkv, splits):
    seqs = [(n, 1) for n in _lens(96, 1, 1500, 0)]
    case = make_attention_case(seqs, hq, hkv, 128, dtype=torch.bfloat16, device=DEV, seed=1, max_blocks=128)
    r = check_attention(case, num_kv_splits=splits)
    assert r["cache_equal"] and r["rel_err"] < BF16_TOL, r


@pytest.mark.parametrize("block_size", [16, 32, 64])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_mixed_batch(block_size, dtype):
    """Whole prompts, chunks after cached prefixes, decodes and an idle sequence in one batch."""
    seqs = [(700, 700), (900, 300), (257, 1), (1, 1), (64, 0), (129, 17)] + [(n, 1) for n in _lens(40, 2, 900, 2)]
    case = make_attention_case(seqs, 32, 4, 128, block_size=block_size, dtype=dtype, device=DEV, seed=3)
    r = check_attention(case)
    assert r["cache_equal"] and r["rel_err"] < {torch.float32: 1e-4, torch.float16: 2e-3}.get(dtype, BF16_TOL), r


@pytest.mark.parametrize("d", [64, 16])
def test_small_head_dims(d):
    seqs = [(300, 300), (80, 5), (33, 1)]
    r = check_attention(make_attention_case(seqs, 8, 2, d, dtype=torch.bfloat16, device=DEV, seed=4))
    assert r["cache_equal"] and r["rel_err"] < BF16_TOL, r


@pytest.mark.parametrize("decode", [True, False])
def test_fp8_kv_cache(decode):
    seqs = [(n, 1) for n in _lens(64, 1, 2000, 5)] if decode else [(600, 600), (500, 100), (70, 1)]
    case = make_attention_case(seqs, 32, 4, 128, dtype=torch.bfloat16, cache_dtype=torch.float8_e4m3fn,
                               kv_scale=0.02, device=DEV, seed=6)
    r = check_attention(case)
    assert r["cache_equal"] and r["rel_err"] < BF16_TOL, r


def test_fp8_decode_with_four_programs_an_sm():
    """A decode batch of 4 (sequence, kv head) programs an SM, the fp8 cache computed in fp16 with V
    converted as loaded: the output matches the reference, and the fp16 kernel stays as close to it
    as the bf16 one (FP8_KV_F16 off) to within fp16's extra rounding of P."""
    seqs = [(n, 1) for n in _lens(torch.cuda.get_device_properties(0).multi_processor_count, 1, 1200, 9)]
    case = make_attention_case(seqs, 32, 4, 128, dtype=torch.bfloat16, cache_dtype=torch.float8_e4m3fn,
                               kv_scale=0.02, device=DEV, seed=9)
    r = check_attention(case, num_kv_splits=1)
    assert r["cache_equal"] and r["rel_err"] < BF16_TOL, r
    f16_err, bf16_err = _f16_and_bf16_errors(case, "FP8_KV_F16", num_kv_splits=1)
    assert f16_err <= bf16_err * 1.25 + 1e-3, (f16_err, bf16_err)


def _f16_and_bf16_errors(case, flag, **kwargs):
    """Max error against the fp32 reference of the fp8 cache computed in fp16 (at.<flag> on, as
    shipped) and in bf16 (off)."""
    kc, vc = case.k_cache.clone(), case.v_cache.clone()
    at.store_kvcache_triton(case.k, case.v, kc, vc, case.meta.slot_mapping, case.k_scale, case.v_scale)
    ref = at.paged_attention_scaled_ref(case.q.float(), None, None, kc, vc, case.meta, case.scale, case.k_scale,
                                        case.v_scale)
    run = lambda: at.paged_attention_triton(case.q, None, None, kc, vc, case.meta, case.scale, k_scale=case.k_scale,
                                            v_scale=case.v_scale, **kwargs).float()
    assert getattr(at, flag)
    f16_err = (run() - ref).abs().max().item()
    try:
        setattr(at, flag, False)
        bf16_err = (run() - ref).abs().max().item()
    finally:
        setattr(at, flag, True)
    return f16_err, bf16_err


@pytest.mark.parametrize("seqs", [[(600, 600), (900, 300), (70, 1)], [(300, 2)] * 48], ids=["long", "two-token"])
def test_fp8_prefill_in_fp16_as_close_as_bf16(seqs):
    """The prefill kernel computes an fp8 cache in fp16 too (128-row wgmma tiles for the prompts,
    16-row mma.sync tiles with V converted as loaded for two-token chunks): as close to the fp32
    reference as the bf16 path (FP8_KV_F16_PREFILL off), to within fp16's extra rounding of P."""
    case = make_attention_case(seqs, 32, 4, 128, dtype=torch.bfloat16, cache_dtype=torch.float8_e4m3fn,
                               kv_scale=0.02, device=DEV, seed=11)
    f16_err, bf16_err = _f16_and_bf16_errors(case, "FP8_KV_F16_PREFILL", mixed_decodes=False)
    assert f16_err <= bf16_err * 1.25 + 1e-3, (f16_err, bf16_err)


def test_decode_cuda_graph_replay():
    """Capture decode attention once; new context lengths, block tables and queries written into the
    captured buffers replay correctly (the grid depends on shapes only)."""
    from dataclasses import replace

    B, width, bs = 32, 64, 16
    case = make_attention_case([(n, 1) for n in _lens(B, 1, 1000, 7)], 32, 4, 128, dtype=torch.bfloat16,
                               device=DEV, seed=7, max_blocks=width)
    kc, vc, meta, q = case.k_cache, case.v_cache, case.meta, case.q.contiguous()
    kc.copy_(torch.randn(kc.shape, device=DEV))  # every slot valid: the new tables may point anywhere
    vc.copy_(torch.randn(vc.shape, device=DEV))
    out = torch.empty_like(q)
    at.paged_attention_triton(q, None, None, kc, vc, meta, case.scale, out=out)  # compile before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        at.paged_attention_triton(q, None, None, kc, vc, meta, case.scale, out=out)

    g = torch.Generator(device=DEV).manual_seed(8)
    lens = _lens(B, 1, width * bs, 8)
    meta.seq_lens.copy_(torch.tensor(lens, dtype=torch.int32))
    meta.block_tables.copy_(torch.randint(0, kc.shape[0], meta.block_tables.shape, generator=g, device=DEV))
    q.copy_(torch.randn(q.shape, generator=g, device=DEV))
    graph.replay()
    ref = at.paged_attention_ref(q, None, None, kc, vc, replace(meta, seq_lens_cpu=lens, max_seqlen_k=max(lens)),
                                 case.scale)
    assert rel_err(out, ref) < BF16_TOL


# ---------------------------------------------------------------- MoE


@pytest.mark.parametrize("impl", ["grouped_mm", "triton"])
@pytest.mark.parametrize("tokens", [1, 37, 600])
def test_fused_moe_qwen3_shape(impl, tokens):
    c = make_moe_case(tokens, 2048, 768, 128, 8, dtype=torch.bfloat16, device=DEV, seed=tokens, drop_fraction=0.1)
    ref = moe.fused_moe_ref(c.x, c.w13, c.w2, c.topk_weights, c.topk_ids)
    out = torch.full_like(c.x, float("nan"))
    moe.fused_moe(c.x, c.w13, c.w2, c.topk_weights, c.topk_ids, out=out, impl=impl)
    assert rel_err(out, ref) < BF16_TOL


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_fused_moe_triton_other_dtypes(dtype):
    c = make_moe_case(50, 256, 128, 16, 4, dtype=dtype, device=DEV, seed=9)
    ref = moe.fused_moe_ref(c.x, c.w13, c.w2, c.topk_weights, c.topk_ids)
    out = moe.fused_moe(c.x, c.w13, c.w2, c.topk_weights, c.topk_ids)
    assert rel_err(out, ref) < (1e-4 if dtype == torch.float32 else 2e-3)


@pytest.mark.parametrize("impl", ["grouped_mm", "triton"])
def test_fused_moe_cuda_graph_replay(impl):
    c = make_moe_case(64, 2048, 768, 32, 8, dtype=torch.bfloat16, device=DEV, seed=10)
    out = torch.empty_like(c.x)
    run = lambda: moe.fused_moe(c.x, c.w13, c.w2, c.topk_weights, c.topk_ids, out=out, impl=impl)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        run()  # warm up (compile, allocator) off the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    d = make_moe_case(64, 2048, 768, 32, 8, dtype=torch.bfloat16, device=DEV, seed=11, drop_fraction=0.2)
    c.x.copy_(d.x)
    c.topk_ids.copy_(d.topk_ids)
    c.topk_weights.copy_(d.topk_weights)
    graph.replay()
    assert rel_err(out, moe.fused_moe_ref(c.x, c.w13, c.w2, c.topk_weights, c.topk_ids)) < BF16_TOL


# ---------------------------------------------------------------- small ops


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_norms(dtype):
    g = torch.Generator(device=DEV).manual_seed(12)
    x = torch.randn(1000, 2048, generator=g, device=DEV).to(dtype)
    r = torch.randn(1000, 2048, generator=g, device=DEV).to(dtype)
    w = torch.randn(2048, generator=g, device=DEV).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 4e-3
    assert rel_err(rmsnorm.rms_norm(x, w, 1e-6), rmsnorm.rms_norm_ref(x, w, 1e-6)) < tol
    out, res = rmsnorm.fused_add_rms_norm(x, r, w, 1e-6)
    out_ref, res_ref = rmsnorm.fused_add_rms_norm_ref(x, r, w, 1e-6)
    assert torch.equal(res, res_ref) and rel_err(out, out_ref) < tol
    heads = torch.randn(1000, 40, 128, generator=g, device=DEV).to(dtype)[:, :32]  # per-head QK-norm view
    assert rel_err(rmsnorm.rms_norm(heads, w[:128], 1e-6), rmsnorm.rms_norm_ref(heads, w[:128], 1e-6)) < tol


@pytest.mark.parametrize("hq,hkv,rot", [(32, 4, 128), (48, 8, 64)], ids=["qwen3", "minimax-partial"])
def test_rotary(hq, hkv, rot):
    g = torch.Generator(device=DEV).manual_seed(13)
    T, d = 1000, 128
    qkv = torch.randn(T, (hq + 2 * hkv) * d, generator=g, device=DEV).bfloat16()
    q, k = qkv[:, : hq * d].view(T, hq, d), qkv[:, hq * d : (hq + hkv) * d].view(T, hkv, d)
    pos = torch.randint(0, 4096, (T,), generator=g, device=DEV)
    cache = rotary.rope_cos_sin_cache(rot, 4096, 5e6, device=DEV)
    q_in, k_in = q.clone(), k.clone()
    q_ref, k_ref = rotary.apply_rotary_ref(q.clone(), k.clone(), pos, cache, rot)
    q32, k32 = rotary.apply_rotary_ref(q.float(), k.float(), pos, cache, rot)
    rotary.apply_rotary(q, k, pos, cache, rot)
    # The compiler may fuse one product and the sum into an FMA (one rounding fewer than the torch
    # path), so bf16 results may differ by rounding: each element stays within a few bf16 ulps of
    # the fp32 rotation, scaled by its inputs' size (a wrong angle, sign or half is far outside).
    for out, ref, exact, x in ((q, q_ref, q32, q_in), (k, k_ref, k32, k_in)):
        half = rot // 2
        mag = torch.maximum(x[..., :half].float().abs(), x[..., half:rot].float().abs()).repeat(1, 1, 2)
        err = (out[..., :rot].float() - exact[..., :rot]).abs()
        assert (err <= 2**-6 * (mag + exact[..., :rot].abs())).all()
        assert torch.equal(out[..., rot:], x[..., rot:])  # partial rotary: the rest passes through
        assert rel_err(out, ref) < 4e-3


def test_qk_norm_rope_matches_the_two_steps():
    """Qwen3-30B-A3B's per-head QK-norm and rotation in one launch against the norm and rotary
    kernels it replaces, on views of one qkv buffer: the same values but for rare roundings
    (each kernel may contract a product and a sum differently), within bf16 of the reference."""
    g = torch.Generator(device=DEV).manual_seed(14)
    T, hq, hkv, d = 1000, 32, 4, 128
    qkv = (torch.randn(T, (hq + 2 * hkv) * d, generator=g, device=DEV) * 4).bfloat16()
    q, k = qkv[:, : hq * d].view(T, hq, d), qkv[:, hq * d : (hq + hkv) * d].view(T, hkv, d)
    wq, wk = (torch.randn(d, generator=g, device=DEV).bfloat16() for _ in range(2))
    pos = torch.randint(0, 4096, (T,), generator=g, device=DEV)
    cache = rotary.rope_cos_sin_cache(d, 4096, 1e6, device=DEV)
    qo, ko = qk_norm_rope.qk_norm_rope(q, k, wq, wk, 1e-6, pos, cache)
    q2, k2 = rotary.apply_rotary(rmsnorm.rms_norm(q, wq, 1e-6), rmsnorm.rms_norm(k, wk, 1e-6), pos, cache, d)
    q_ref, k_ref = qk_norm_rope.qk_norm_rope_ref(q, k, wq, wk, 1e-6, pos, cache)
    for out, two_step, ref in ((qo, q2, q_ref), (ko, k2, k_ref)):
        assert (out != two_step).float().mean().item() < 0.01
        assert rel_err(out, ref) < 4e-3


def test_silu_and_mul():
    x = torch.randn(3000, 1536, device=DEV).bfloat16() * 3
    out = activation.silu_and_mul(x)
    ref = activation.silu_and_mul_ref(x)
    assert rel_err(out, ref) < 4e-3 and (out != ref).float().mean() < 0.01
