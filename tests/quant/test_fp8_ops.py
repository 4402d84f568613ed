"""tenk.quant.ops' FP8 MoE reference (the CPU path): the experts it dequantizes give exactly the
MoE of the dequantized checkpoint, and experts no token uses are never read."""

import pytest
import torch

from tenk.kernels.moe import fused_moe_ref
from tenk.quant import ops
from tenk.quant.fp8 import (
    dequantize_fp8_block,
    dequantize_fp8_per_tensor,
    quantize_fp8_block,
    quantize_fp8_per_tensor,
)

E, H, I, K = 6, 256, 128, 2


def _experts(scheme, g):
    w13 = torch.randn(E, 2 * I, H, generator=g) * 0.05
    w2 = torch.randn(E, H, I, generator=g) * 0.05
    if scheme == "block":
        q13, s13 = zip(*[quantize_fp8_block(w) for w in w13])
        q2, s2 = zip(*[quantize_fp8_block(w) for w in w2])
        deq = lambda q, s: torch.stack([dequantize_fp8_block(a, b) for a, b in zip(q, s)])
        return (torch.stack(q13), torch.stack(s13), torch.stack(q2), torch.stack(s2)), deq(q13, s13), deq(q2, s2)
    gate, up = zip(*[(quantize_fp8_per_tensor(w[:I]), quantize_fp8_per_tensor(w[I:] * 30)) for w in w13])
    q2, s2 = zip(*[quantize_fp8_per_tensor(w) for w in w2])
    w13q = torch.stack([torch.cat([a[0], b[0]]) for a, b in zip(gate, up)])
    s13 = torch.stack([torch.stack([a[1], b[1]]) for a, b in zip(gate, up)])
    plain13 = torch.stack([torch.cat([dequantize_fp8_per_tensor(*a), dequantize_fp8_per_tensor(*b)]) for a, b in zip(gate, up)])
    plain2 = torch.stack([dequantize_fp8_per_tensor(q, s) for q, s in zip(q2, s2)])
    return (w13q, s13, torch.stack(q2), torch.stack(s2)), plain13, plain2


@pytest.mark.parametrize("scheme", ["block", "tensor"])
def test_fp8_moe_reference_is_the_dequantized_moe(scheme):
    g = torch.Generator().manual_seed(0)
    w, plain13, plain2 = _experts(scheme, g)
    x = torch.randn(7, H, generator=g)
    ids = torch.tensor([[0, 2], [2, 4], [4, -1], [0, 4], [-1, -1], [2, 0], [4, 2]], dtype=torch.int32)  # 1, 3, 5 unused
    tw = torch.rand(7, K, generator=g)
    out = ops.fp8_moe(x, *w, tw, ids, scheme)
    assert torch.equal(out, fused_moe_ref(x, plain13, plain2, tw, ids))
    assert torch.equal(out[4], torch.zeros(H))  # both experts on another rank


@pytest.mark.parametrize("scheme", ["block", "tensor"])
def test_fp8_moe_reference_never_reads_unused_experts(scheme):
    """Poison the experts no token routes to: the output stays finite and unchanged."""
    g = torch.Generator().manual_seed(1)
    w, _, _ = _experts(scheme, g)
    x = torch.randn(5, H, generator=g)
    ids = torch.tensor([[1, 3]] * 5, dtype=torch.int32)
    tw = torch.rand(5, K, generator=g)
    clean = ops.fp8_moe(x, *w, tw, ids, scheme)
    poisoned = [t.clone() for t in w]
    for t in (poisoned[1], poisoned[3]):
        t[[0, 2, 4, 5]] = float("nan")
    assert torch.equal(ops.fp8_moe(x, *poisoned, tw, ids, scheme), clean)


@pytest.mark.parametrize("scheme", ["block", "tensor"])
def test_fp8_moe_reference_under_graph_capture_uses_every_expert(scheme, monkeypatch):
    """Inside a CUDA graph capture the reference cannot ask which experts are used (a host sync):
    it dequantizes all of them, and gives the same output."""
    g = torch.Generator().manual_seed(2)
    w, _, _ = _experts(scheme, g)
    x = torch.randn(7, H, generator=g)
    ids = torch.tensor([[0, 2], [2, 4], [4, -1], [0, 4], [-1, -1], [2, 0], [4, 2]], dtype=torch.int32)
    tw = torch.rand(7, K, generator=g)
    want = ops.fp8_moe(x, *w, tw, ids, scheme)
    monkeypatch.setattr(ops, "_capturing", lambda t: True)
    used, renumbered = ops._touched(ids, E)
    assert used.tolist() == list(range(E)) and torch.equal(renumbered, ids.long())
    assert torch.equal(ops.fp8_moe(x, *w, tw, ids, scheme), want)
