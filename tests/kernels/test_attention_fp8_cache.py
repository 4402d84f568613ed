"""An fp8 (e4m3) KV cache through the attention dispatcher (`store_kvcache` / `paged_attention`),
which is what the model's attention layer calls: on CPU the torch references, on CUDA Triton.

The store writes k / k_scale rounded to e4m3; attention reads the cache back times the scale.
Against attention over an unquantized cache the output stays within e4m3's rounding."""

from dataclasses import replace

import pytest
import torch

from tenk.kernels import attention_triton as at
from tenk.kernels.attention import paged_attention, paged_attention_ref, store_kvcache, store_kvcache_ref
from tenk.kernels.testing import make_attention_case, rel_err

FP8 = torch.float8_e4m3fn
# (context after this step, query length): a prompt, a chunk after a cached prefix, decodes.
MIXED = [(37, 37), (50, 13), (17, 1), (33, 1), (64, 16)]


def _quantized_copy(cache: torch.Tensor, scale: float) -> torch.Tensor:
    return (cache / scale).clamp(-448, 448).to(FP8)  # NaN (unused slots) stays NaN


def _on(case, device):
    m = case.meta
    meta = replace(m, cu_seqlens_q=m.cu_seqlens_q.to(device), seq_lens=m.seq_lens.to(device),
                   slot_mapping=m.slot_mapping.to(device), block_tables=m.block_tables.to(device))
    moved = {f: getattr(case, f).to(device) for f in ("q", "k", "v", "k_cache", "v_cache")}
    return replace(case, meta=meta, **moved)


def _fp8_and_exact(scale: float, device="cpu"):
    """Attention with an fp8 cache (prefix quantized from the fp32 one) and with the fp32 cache."""
    case = _on(make_attention_case(MIXED, 8, 2, 32, dtype=torch.float32, seed=3), device)
    exact_kc, exact_vc = case.k_cache.clone(), case.v_cache.clone()
    store_kvcache(case.k, case.v, exact_kc, exact_vc, case.meta.slot_mapping)
    exact = paged_attention(case.q, case.k, case.v, exact_kc, exact_vc, case.meta, case.scale)
    kc, vc = _quantized_copy(case.k_cache, scale), _quantized_copy(case.v_cache, scale)
    store_kvcache(case.k, case.v, kc, vc, case.meta.slot_mapping, scale, scale)
    out = paged_attention(case.q, case.k, case.v, kc, vc, case.meta, case.scale, scale, scale)
    return case, kc, vc, out, exact


@pytest.mark.parametrize("scale", [1.0, 0.05], ids=["uncalibrated", "scaled"])
def test_fp8_cache_attention_close_to_unquantized(scale):
    case, kc, vc, out, exact = _fp8_and_exact(scale)
    err = rel_err(out, exact)
    assert 1e-4 < err < 0.06, err  # quantized, so not exact; e4m3 keeps 3 mantissa bits (~3.5% here)
    # The new tokens went in as k / k_scale rounded to e4m3, nothing else.
    slots = case.meta.slot_mapping
    flat = kc.view(-1, *kc.shape[2:])
    want = (case.k / scale).to(FP8)
    assert torch.equal(flat[slots].view(torch.uint8), want.view(torch.uint8))
    assert torch.equal(vc.view(-1, *vc.shape[2:])[slots].view(torch.uint8), (case.v / scale).to(FP8).view(torch.uint8))


def test_fp8_store_saturates_instead_of_nan():
    k = torch.tensor([[[1e4, -1e4, 3.0, 0.0]]])
    kc = torch.zeros(1, 4, 1, 4, dtype=FP8)
    vc = torch.zeros_like(kc)
    store_kvcache_ref(k, k, kc, vc, torch.tensor([2]), k_scale=2.0, v_scale=1.0)
    assert kc[0, 2, 0].float().tolist() == [448.0, -448.0, 1.5, 0.0]
    assert vc[0, 2, 0].float().tolist() == [448.0, -448.0, 3.0, 0.0]


def test_dispatcher_reference_matches_triton(interpret):
    """The CPU reference the engine runs and the Triton kernels the GPU runs store the same bytes
    and attend to the same output (Triton's interpreter on CPU)."""
    case = make_attention_case(MIXED, 4, 2, 16, dtype=torch.bfloat16, cache_dtype=FP8, kv_scale=0.05, seed=6)
    ref_kc, ref_vc = case.k_cache.clone(), case.v_cache.clone()
    store_kvcache_ref(case.k, case.v, ref_kc, ref_vc, case.meta.slot_mapping, case.k_scale, case.v_scale)
    ref = paged_attention_ref(case.q, case.k, case.v, ref_kc, ref_vc, case.meta, case.scale, case.k_scale, case.v_scale)
    kc, vc = case.k_cache.clone(), case.v_cache.clone()
    at.store_kvcache_triton(case.k, case.v, kc, vc, case.meta.slot_mapping, case.k_scale, case.v_scale)
    out = at.paged_attention_triton(case.q, case.k, case.v, kc, vc, case.meta, case.scale,
                                    k_scale=case.k_scale, v_scale=case.v_scale)
    same = lambda a, b: torch.equal(a.view(torch.uint8), b.view(torch.uint8))  # NaN-safe
    assert same(kc, ref_kc) and same(vc, ref_vc)
    assert rel_err(out, ref) < 1e-2


@pytest.mark.parametrize("seqs", [[(40, 1), (23, 1)], [(40, 12), (23, 23)]], ids=["decode", "prefill"])
def test_fp8_attention_saturates_a_query_past_fp16_range(interpret, seqs):
    """Both kernels compute an fp8 cache in fp16: a bf16 query element past 65,504 saturates there
    instead of turning into inf (and the row into NaN)."""
    case = make_attention_case(seqs, 4, 2, 16, dtype=torch.bfloat16, cache_dtype=FP8, kv_scale=0.05, seed=8)
    case.q[0, 1, :4] = torch.tensor([1e5, -3e5, 7e4, 2.0])
    kc, vc = case.k_cache.clone(), case.v_cache.clone()
    at.store_kvcache_triton(case.k, case.v, kc, vc, case.meta.slot_mapping, case.k_scale, case.v_scale)
    out = at.paged_attention_triton(case.q, case.k, case.v, kc, vc, case.meta, case.scale,
                                    k_scale=case.k_scale, v_scale=case.v_scale)
    q = case.q.float().clamp(-torch.finfo(torch.float16).max, torch.finfo(torch.float16).max)
    ref = at.paged_attention_scaled_ref(q, None, None, kc, vc, case.meta, case.scale, case.k_scale, case.v_scale)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp8_cache_on_cuda_matches_cpu_reference():
    _, kc, vc, out, exact = _fp8_and_exact(0.05, device="cuda")
    _, ref_kc, ref_vc, ref, _ = _fp8_and_exact(0.05, device="cpu")
    assert torch.equal(kc.cpu().view(torch.uint8), ref_kc.view(torch.uint8))
    assert rel_err(out.cpu(), ref) < 1e-4
    assert rel_err(out, exact) < 0.06
