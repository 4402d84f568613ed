"""The fused MoE router (softmax or sigmoid + correction bias, top-k, renormalize) against its torch
reference, under Triton's interpreter; and its H100 compile at the real models' expert counts."""

from __future__ import annotations

import pytest
import torch

from tenk.kernels import routing
from tenk.kernels.interpret import triton_interpreter

MAX_SHARED = 227 * 1024  # H100 per-block limit


def _check(results, expected_kernels):
    assert sorted({r["name"] for r in results}) == sorted(expected_kernels)
    for r in results:
        assert r["spill_bytes"] == 0 and r["shared_bytes"] <= MAX_SHARED, r


def _case(T, E, seed, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    # distinct values in every row, also after bf16 rounding: ties may break either way
    ranks = torch.stack([torch.randperm(E, generator=g) for _ in range(T)]).float()
    logits = ((ranks - E / 2) * (7.0 / E)).to(dtype)
    bias = 0.5 * torch.randn(E, generator=g)
    return logits, bias


@pytest.mark.parametrize("T,E,k", [(1, 8, 2), (5, 60, 4), (33, 128, 8), (7, 256, 8)])
@pytest.mark.parametrize("kind,renorm,use_bias", [("softmax", False, False), ("softmax", True, False),
                                                  ("sigmoid", True, True), ("sigmoid", False, False)])
def test_triton_matches_reference(T, E, k, kind, renorm, use_bias):
    logits, bias = _case(T, E, seed=T * E + k)
    b = bias if use_bias else None
    w_ref, i_ref = routing.topk_route_ref(logits, k, kind, renorm, b)
    with triton_interpreter():
        w, i = routing.topk_route_triton(logits, k, kind, renorm, b)
    assert i.dtype == torch.int64 and w.dtype == torch.float32 and w.shape == (T, k)
    # the same experts with the same weights; the kernel lists them best first
    order_ref = torch.sort(i_ref, dim=1)
    order = torch.sort(i, dim=1)
    assert torch.equal(order.values, order_ref.values)
    torch.testing.assert_close(w.gather(1, order.indices), w_ref.gather(1, order_ref.indices), rtol=2e-6, atol=1e-7)
    choice = (torch.sigmoid(logits.float()) + (b if b is not None else 0)) if kind == "sigmoid" else logits.float()
    assert bool((choice.gather(1, i).diff(dim=1) <= 0).all())  # best first


def test_bias_changes_the_choice_not_the_weights():
    """MiniMax-M2: the correction bias picks the experts; weights stay the unbiased scores."""
    logits = torch.zeros(1, 8)
    bias = torch.tensor([0.0, 0, 0, 1.0, 0, 0, 2.0, 0])
    with triton_interpreter():
        w, i = routing.topk_route_triton(logits, 2, "sigmoid", False, bias)
    assert i.tolist() == [[6, 3]]
    torch.testing.assert_close(w, torch.full((1, 2), 0.5))


def test_dispatch_uses_the_kernel_only_where_asked(monkeypatch):
    logits, _ = _case(4, 16, seed=0)
    calls = []
    monkeypatch.setattr(routing, "topk_route_triton", lambda *a: calls.append(a) or routing.topk_route_ref(*a))
    routing.topk_route(logits, 2)
    assert not calls  # CPU tensors: torch
    monkeypatch.setattr(routing, "FORCE_TRITON", True)
    routing.topk_route(logits, 2)
    assert len(calls) == 1


@pytest.mark.parametrize("E,kind", [(128, "softmax"), (256, "sigmoid"), (8, "softmax")])
def test_routing_compiles(sm90_compile, E, kind):
    logits = torch.randn(256, E).bfloat16()
    bias = torch.zeros(E) if kind == "sigmoid" else None
    _check(sm90_compile(routing, lambda: routing.topk_route_triton(logits, min(8, E), kind, True, bias)),
           ["_topk_route_kernel"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("E,k,kind", [(128, 8, "softmax"), (256, 8, "sigmoid"), (8, 2, "softmax")])
def test_gpu_matches_reference(E, k, kind):
    logits, bias = _case(512, E, seed=E)
    logits, bias = logits.cuda(), bias.cuda()
    b = bias if kind == "sigmoid" else None
    w_ref, i_ref = routing.topk_route_ref(logits, k, kind, True, b)
    w, i = routing.topk_route(logits, k, kind, True, b)  # dispatches to Triton on CUDA
    o, o_ref = torch.sort(i, dim=1), torch.sort(i_ref, dim=1)
    assert torch.equal(o.values, o_ref.values)
    torch.testing.assert_close(w.gather(1, o.indices), w_ref.gather(1, o_ref.indices), rtol=1e-5, atol=1e-6)
