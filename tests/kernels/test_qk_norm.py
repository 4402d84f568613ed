"""MiniMax-M2's full-width QK-norm kernels (sum of squares of q and k, one all-reduce, normalise)
against the torch reference, under Triton's interpreter, on strided slices of a qkv buffer; the
reference against transformers' formula; and the H100 compile at MiniMax-M2's shapes."""

from __future__ import annotations

import pytest
import torch

from tenk.kernels import qk_norm
from tenk.kernels.interpret import triton_interpreter

MAX_SHARED = 227 * 1024  # H100 per-block limit


def _case(T, nq, nk, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(T, nq + 2 * nk, generator=g) * 3).to(dtype)  # q | k | v, as the fused projection writes
    wq = (1 + 0.2 * torch.randn(nq, generator=g)).to(dtype)
    wk = (1 + 0.2 * torch.randn(nk, generator=g)).to(dtype)
    return qkv[:, :nq], qkv[:, nq : nq + nk], wq, wk


def _other_rank(T, seed=5):
    """All-reduce over two ranks, the other one's sums fixed: what the kernels get from NCCL."""
    other = torch.rand(T, 2, generator=torch.Generator().manual_seed(seed)) * 50

    def all_reduce(sq):
        sq += other
        return sq

    return all_reduce


def test_reference_is_transformers_formula():
    q, k, wq, wk = _case(6, 96, 32, torch.float32)
    qo, ko = qk_norm.full_width_qk_norm_ref(q, k, wq, wk, 96, 32, 1e-6)
    for x, w, o in ((q, wq, qo), (k, wk, ko)):
        h = x.float()
        want = w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)
        torch.testing.assert_close(o, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,nq,nk,full_q,full_k,replicas,ranks", [
    (5, 96, 32, 96, 32, 1, 1),  # tiny, one rank
    (3, 3072, 512, 6144, 1024, 1, 2),  # MiniMax-M2 at TP=2
    (4, 64, 16, 256, 32, 2, 2),  # kv heads replicated over 2 ranks: k's reduced sum halves
])
def test_triton_matches_reference(dtype, T, nq, nk, full_q, full_k, replicas, ranks):
    q, k, wq, wk = _case(T, nq, nk, dtype, seed=T + nq)
    ar = _other_rank(T) if ranks > 1 else None
    want = qk_norm.full_width_qk_norm_ref(q, k, wq, wk, full_q, full_k, 1e-6, replicas, ar)
    ar = _other_rank(T) if ranks > 1 else None
    with triton_interpreter():
        got = qk_norm.full_width_qk_norm_triton(q, k, wq, wk, full_q, full_k, 1e-6, replicas, ar)
    for g_, w_ in zip(got, want):
        assert g_.dtype == w_.dtype and g_.shape == w_.shape and g_.is_contiguous()
        if dtype == torch.float32:
            torch.testing.assert_close(g_, w_, rtol=1e-5, atol=1e-5)
        else:  # rounded where torch rounds: equal but for a rare last-bit flip from the fp32 sum order
            assert (g_ != w_).float().mean().item() < 0.02
            torch.testing.assert_close(g_.float(), w_.float(), rtol=1e-2, atol=1e-2)


def test_zero_rows_and_bad_input():
    q, k, wq, wk = _case(0, 96, 32, torch.bfloat16)
    with triton_interpreter():
        qo, ko = qk_norm.full_width_qk_norm_triton(q, k, wq, wk, 96, 32, 1e-6)
    assert qo.shape == (0, 96) and ko.shape == (0, 32)
    q, k, wq, wk = _case(4, 96, 32, torch.bfloat16)
    for args, match in [((q.t(), k, wq, wk), "same T|contiguous"), ((q, k[:2], wq, wk), "same T"),
                        ((q, k, wk, wk), "do not match"), ((q[:, ::2], k, wq[:48], wk), "contiguous")]:
        for fn in (qk_norm.full_width_qk_norm_ref, qk_norm.full_width_qk_norm_triton):
            with pytest.raises(ValueError, match=match):
                fn(*args, 96, 32, 1e-6)


@pytest.mark.parametrize("nq,nk", [(6144, 1024), (3072, 512)], ids=["tp1", "tp2"])
def test_compiles_for_h100(sm90_compile, nq, nk):
    q, k, wq, wk = _case(8, nq, nk, torch.bfloat16)
    results = sm90_compile(qk_norm, lambda: qk_norm.full_width_qk_norm_triton(q, k, wq, wk, 6144, 1024, 1e-6))
    assert sorted({r["name"] for r in results}) == ["_qk_norm_kernel", "_qk_sumsq_kernel"]
    for r in results:
        assert r["spill_bytes"] == 0 and r["shared_bytes"] <= MAX_SHARED, r


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("T", [1, 37, 512])
def test_gpu_matches_reference(T):
    q, k, wq, wk = (t.cuda() for t in _case(T, 6144, 1024, torch.bfloat16, seed=T))
    want = qk_norm.full_width_qk_norm_ref(q, k, wq, wk, 6144, 1024, 1e-6)
    got = qk_norm.full_width_qk_norm(q, k, wq, wk, 6144, 1024, 1e-6)
    for g_, w_ in zip(got, want):
        assert (g_ != w_).float().mean().item() < 0.02
        torch.testing.assert_close(g_.float(), w_.float(), rtol=1e-2, atol=1e-2)
