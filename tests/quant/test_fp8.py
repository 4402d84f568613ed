"""FP8 E4M3 weights: per-tensor and 128x128 block round trips."""

import math

import pytest
import torch

from tenk.quant.convert import adapt_hf_fp8
from tenk.quant.fp8 import (
    dequantize_fp8,
    dequantize_fp8_block,
    dequantize_fp8_per_tensor,
    fp8_error_bound,
    quantize_fp8_block,
    quantize_fp8_per_tensor,
)


def _w(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * torch.logspace(-3, 1, n).unsqueeze(1)


def test_per_tensor_round_trip_within_bound_and_idempotent():
    w = _w(96, 200)
    q, s = quantize_fp8_per_tensor(w)
    assert q.dtype == torch.float8_e4m3fn and s.shape == () and s.dtype == torch.float32
    assert s.item() == pytest.approx(w.abs().max().item() / 448, rel=1e-7)
    deq = dequantize_fp8_per_tensor(q, s)
    assert bool(((w - deq).abs() <= fp8_error_bound(w, s.expand_as(w))).all())
    # the largest element is exactly representable: it maps to 448
    assert q.float().abs().max().item() == 448.0
    q2, s2 = quantize_fp8_per_tensor(deq)
    assert torch.equal(q2.view(torch.uint8), q.view(torch.uint8)) and s2 == s


@pytest.mark.parametrize("shape", [(256, 384), (200, 300), (130, 129)])
def test_block_round_trip_within_bound_with_partial_blocks(shape):
    n, k = shape
    w = _w(n, k, seed=1)
    q, s = quantize_fp8_block(w)
    assert s.shape == (math.ceil(n / 128), math.ceil(k / 128))
    deq = dequantize_fp8_block(q, s)
    expanded = s.repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
    assert bool(((w - deq).abs() <= fp8_error_bound(w, expanded)).all())
    # each block's scale is its own amax / 448
    assert s[0, 0].item() == pytest.approx(w[:128, :128].abs().max().item() / 448, rel=1e-7)
    assert s[-1, -1].item() == pytest.approx(w[(s.shape[0] - 1) * 128 :, (s.shape[1] - 1) * 128 :].abs().max().item() / 448, rel=1e-7)
    assert torch.equal(dequantize_fp8(q, s), deq)


def test_block_beats_per_tensor_on_rows_of_different_scale():
    w = _w(256, 256, seed=2)
    e_tensor = (w - dequantize_fp8(*quantize_fp8_per_tensor(w))).abs().mean()
    e_block = (w - dequantize_fp8(*quantize_fp8_block(w))).abs().mean()
    assert e_block < e_tensor


def test_zero_weight_and_bad_inputs():
    q, s = quantize_fp8_block(torch.zeros(128, 128))
    assert torch.equal(dequantize_fp8_block(q, s), torch.zeros(128, 128))
    q, s = quantize_fp8_per_tensor(torch.zeros(4, 4))
    assert s.item() == 1.0
    with pytest.raises(ValueError, match="inf or NaN"):
        quantize_fp8_per_tensor(torch.tensor([[float("inf")]]))
    with pytest.raises(ValueError, match="does not fit"):
        dequantize_fp8_block(torch.zeros(256, 256, dtype=torch.float8_e4m3fn), torch.ones(1, 2))


def test_weight_scale_inv_is_read_as_the_multiplier():
    """The official MiniMax-M2 / DeepSeek-V3 layout: `weight_scale_inv` multiplies."""
    w = _w(256, 128, seed=3)
    q, s = quantize_fp8_block(w)
    name, scale = adapt_hf_fp8("model.layers.0.self_attn.q_proj.weight_scale_inv", s)
    assert name == "model.layers.0.self_attn.q_proj.weight_scale"
    assert torch.equal(scale, s)
    expanded = s.repeat_interleave(128, 0)
    assert bool(((dequantize_fp8(q, scale) - w).abs() <= fp8_error_bound(w, expanded)).all())
    # read as a divisor it would be off by the square of the scale
    assert not torch.allclose(q.float() / expanded, w, rtol=0.5)
