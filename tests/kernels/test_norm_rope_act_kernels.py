"""RMSNorm, rotary, the fused per-head QK-norm + rotary and SiLU-and-mul: references equal transformers' code bit for bit, and the Triton
kernels match the references (Triton interpreter on CPU)."""

import pytest
import torch

from tenk.kernels.activation import silu_and_mul_ref, silu_and_mul_triton
from tenk.kernels.rmsnorm import fused_add_rms_norm_ref, fused_add_rms_norm_triton, rms_norm_ref, rms_norm_triton
from tenk.kernels.qk_norm_rope import fusable, qk_norm_rope_ref, qk_norm_rope_triton
from tenk.kernels.rotary import apply_rotary_ref, apply_rotary_triton, rope_cos_sin_cache
from tenk.kernels.testing import rel_err

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _close(a, b, dtype):
    """fp32: a few ulp (sum order, exp/rsqrt approximations). bf16/fp16: the kernels round where the
    reference rounds, so almost every element is bit-identical (a skipped rounding step breaks that)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    assert rel_err(a, b) < (1e-6 if dtype == torch.float32 else 4e-3)
    if dtype != torch.float32:
        assert (a != b).float().mean().item() < 0.01


# ---------------------------------------------------------------- references vs transformers


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", ["llama", "qwen3", "minimax_m2"])
def test_rms_norm_ref_is_transformers(family, dtype):
    import importlib

    mod = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    cls = {"llama": "LlamaRMSNorm", "qwen3": "Qwen3RMSNorm", "minimax_m2": "MiniMaxM2RMSNorm"}[family]
    g = torch.Generator().manual_seed(0)
    norm = getattr(mod, cls)(48, eps=1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48, generator=g))
    x = (torch.randn(5, 48, generator=g) * 3).to(dtype)
    with torch.no_grad():
        assert torch.equal(rms_norm_ref(x, norm.weight, 1e-6), norm(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_ref_is_transformers_partial(dtype):
    from transformers.models.minimax_m2 import modeling_minimax_m2 as mm

    T, hq, hkv, d, rot = 6, 4, 2, 32, 16
    g = torch.Generator().manual_seed(1)
    q = torch.randn(T, hq, d, generator=g).to(dtype)
    k = torch.randn(T, hkv, d, generator=g).to(dtype)
    pos = torch.tensor([0, 1, 2, 7, 100, 511])
    # transformers' default RoPE cos/sin for these positions, then its partial-rotary apply.
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, rot, 2, dtype=torch.float) / rot))
    freqs = pos[:, None].float() * inv_freq
    emb = torch.cat((freqs, freqs), -1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    q_hf, k_hf = mm.apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos[None], sin[None])
    cache = rope_cos_sin_cache(rot, 512, 10000.0)
    q2, k2 = apply_rotary_ref(q.clone(), k.clone(), pos, cache, rot)
    assert torch.equal(q2, q_hf[0].transpose(0, 1)) and torch.equal(k2, k_hf[0].transpose(0, 1))


def test_silu_and_mul_ref_is_transformers():
    from transformers.activations import ACT2FN

    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(2)).bfloat16()
    gate, up = x.chunk(2, dim=-1)
    assert torch.equal(silu_and_mul_ref(x), ACT2FN["silu"](gate) * up)


# ---------------------------------------------------------------- Triton vs references


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_kernels(interpret, dtype):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(7, 48, generator=g) * 2).to(dtype)
    res = torch.randn(7, 48, generator=g).to(dtype)
    w = torch.randn(48, generator=g).to(dtype)
    _close(rms_norm_triton(x, w, 1e-6), rms_norm_ref(x, w, 1e-6), dtype)
    out, new_res = fused_add_rms_norm_triton(x, res, w, 1e-6)
    out_ref, new_res_ref = fused_add_rms_norm_ref(x, res, w, 1e-6)
    assert torch.equal(new_res, new_res_ref)
    _close(out, out_ref, dtype)


def test_rms_norm_fp32_weight_and_strided_heads(interpret):
    """Per-head QK-norm on a strided [T, H, D] view of a qkv buffer; fp32 weight promotes the output."""
    g = torch.Generator().manual_seed(4)
    qkv = torch.randn(5, 6 * 16, generator=g).bfloat16()
    q = qkv[:, : 4 * 16].view(5, 4, 16)
    w = torch.randn(16, generator=g)
    out = rms_norm_triton(q, w, 1e-6)
    assert out.dtype == torch.float32
    _close(out, rms_norm_ref(q, w, 1e-6), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rot", [32, 16])  # full and partial (half of head_dim, as MiniMax-M2)
def test_rotary_kernel(interpret, dtype, rot):
    T, hq, hkv, d = 5, 6, 2, 32
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(T, (hq + 2 * hkv) * d, generator=g).to(dtype)
    q = qkv[:, : hq * d].view(T, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(T, hkv, d)
    pos = torch.tensor([0, 3, 4, 100, 63])
    cache = rope_cos_sin_cache(rot, 128, 1e6)
    q_ref, k_ref = apply_rotary_ref(q.clone(), k.clone(), pos, cache, rot)
    before = qkv.clone()
    apply_rotary_triton(q, k, pos, cache, rot)  # in place on the views
    _close(q, q_ref, dtype)
    _close(k, k_ref, dtype)
    assert torch.equal(q[..., rot:], before[:, : hq * d].view(T, hq, d)[..., rot:])  # pass-through dims
    assert torch.equal(qkv[:, (hq + hkv) * d :], before[:, (hq + hkv) * d :])  # v untouched
    assert not torch.equal(q[..., :rot], before[:, : hq * d].view(T, hq, d)[..., :rot])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("w_dtype", ["same", torch.float32])
def test_qk_norm_rope_kernel(interpret, dtype, w_dtype):
    """The fused kernel against the two references it replaces (norm each head, then rotate it),
    on strided q / k views of one qkv buffer; an fp32 weight promotes the outputs as the norm's did."""
    T, hq, hkv, d = 5, 6, 2, 32
    g = torch.Generator().manual_seed(7)
    qkv = (torch.randn(T, (hq + 2 * hkv) * d, generator=g) * 3).to(dtype)
    q = qkv[:, : hq * d].view(T, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(T, hkv, d)
    wq, wk = (torch.randn(d, generator=g).to(dtype if w_dtype == "same" else w_dtype) for _ in range(2))
    pos = torch.tensor([0, 3, 4, 100, 63])
    cache = rope_cos_sin_cache(d, 128, 1e6)
    before = qkv.clone()
    qo, ko = qk_norm_rope_triton(q, k, wq, wk, 1e-6, pos, cache)
    q_ref, k_ref = apply_rotary_ref(rms_norm_ref(q, wq, 1e-6), rms_norm_ref(k, wk, 1e-6), pos, cache, d)
    out_dtype = torch.promote_types(dtype, wq.dtype)
    _close(qo, q_ref, out_dtype)
    _close(ko, k_ref, out_dtype)
    assert all(torch.equal(a, b) for a, b in zip(qk_norm_rope_ref(q, k, wq, wk, 1e-6, pos, cache), (q_ref, k_ref)))
    assert torch.equal(qkv, before)  # the inputs are read, not written
    assert qo.is_contiguous() and qo.shape == q.shape and ko.shape == k.shape


def test_qk_norm_rope_takes_whole_head_rotation_only():
    assert fusable(128, 128) and not fusable(128, 64) and not fusable(96, 96)
    q, k = torch.randn(2, 4, 128), torch.randn(2, 1, 128)
    with pytest.raises(ValueError, match="rotary_dim == head_dim"):
        qk_norm_rope_ref(q, k, torch.ones(128), torch.ones(128), 1e-6, torch.arange(2), rope_cos_sin_cache(64, 16, 1e4))


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul_kernel(interpret, dtype):
    x = (torch.randn(6, 2 * 40, generator=torch.Generator().manual_seed(6)) * 3).to(dtype)
    out = torch.full((6, 40), float("nan"), dtype=dtype)
    silu_and_mul_triton(x, out=out)
    _close(out, silu_and_mul_ref(x), dtype)
