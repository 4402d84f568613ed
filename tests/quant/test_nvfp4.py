"""NVFP4 format: packing, rounding, ModelOpt's scale convention and the error bound."""

import pytest
import torch

from tenk.quant.nvfp4 import (
    E2M1_VALUES,
    dequantize_nvfp4,
    e2m1_to_float,
    float_to_e2m1,
    global_scale_from_amax,
    nvfp4_error_bound,
    pack_nvfp4,
    quantize_nvfp4,
    unpack_nvfp4,
)

GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def test_pack_round_trip_is_exact_for_every_byte():
    packed = torch.arange(256, dtype=torch.uint8).reshape(4, 64)
    codes = unpack_nvfp4(packed)
    assert codes.shape == (4, 128)
    assert torch.equal(pack_nvfp4(codes), packed)
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (3, 5, 96), generator=g, dtype=torch.uint8)
    assert torch.equal(unpack_nvfp4(pack_nvfp4(codes)), codes)


def test_low_nibble_holds_the_even_element():
    codes = torch.tensor([[0x3, 0xA, 0x7, 0x1]], dtype=torch.uint8)
    assert pack_nvfp4(codes).tolist() == [[0xA3, 0x17]]


def test_table_matches_compressed_tensors_and_sign_bit():
    from compressed_tensors.compressors.nvfp4.helpers import kE2M1ToFloat

    table = torch.tensor(E2M1_VALUES)
    assert torch.equal(table[:8], kE2M1ToFloat)
    assert torch.equal(table[8:], -kE2M1ToFloat)


def _nearest_even(y: torch.Tensor) -> torch.Tensor:
    """Brute force: nearest grid magnitude (saturating), ties to the even code."""
    d = (y.abs().clamp(max=6.0).unsqueeze(-1) - GRID).abs()
    best = d.min(dim=-1, keepdim=True).values
    cand = (d == best).to(torch.int64) * torch.arange(8)
    # among tied candidates (at most two), keep the even index
    idx = torch.where(((d == best).sum(-1) > 1), (cand.max(-1).values // 2) * 2, d.argmin(-1))
    return GRID[idx] * torch.where(torch.signbit(y), -1.0, 1.0)


def test_rounding_is_nearest_with_ties_to_even_and_saturates():
    g = torch.Generator().manual_seed(1)
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    y = torch.cat([torch.randn(20000, generator=g) * 3, ties, -ties, GRID, -GRID, torch.tensor([6.5, -100.0, 1e30])])
    got = e2m1_to_float(float_to_e2m1(y))
    assert torch.equal(got, _nearest_even(y))
    # ties: 0.25->0, 0.75->1, 1.25->1, 1.75->2, 2.5->2, 3.5->4, 5->4
    assert e2m1_to_float(float_to_e2m1(ties)).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]


def test_rounding_agrees_with_compressed_tensors_cast():
    from compressed_tensors.quantization.utils.fp4_utils import cast_to_fp4

    g = torch.Generator().manual_seed(2)
    y = torch.cat([torch.randn(50000, generator=g) * 2.5, torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])])
    assert torch.equal(e2m1_to_float(float_to_e2m1(y)), cast_to_fp4(y.clone()))


def _weights():
    g = torch.Generator().manual_seed(3)
    yield torch.randn(64, 256, generator=g)
    yield torch.randn(64, 256, generator=g) ** 3  # heavy tails
    # rows spanning 12 decades: small blocks get subnormal (and zero) E4M3 scales
    yield torch.randn(96, 128, generator=g) * torch.logspace(-10, 2, 96).unsqueeze(1)
    w = torch.randn(32, 64, generator=g)
    w[:, :16] = 0  # zero blocks
    yield w
    yield torch.zeros(8, 32)


@pytest.mark.parametrize("w", list(_weights()), ids=["normal", "cubed", "wide_range", "zero_blocks", "all_zero"])
def test_quantize_dequantize_within_bound(w):
    packed, scale, gs = quantize_nvfp4(w)
    n, k = w.shape
    assert packed.dtype == torch.uint8 and packed.shape == (n, k // 2)
    assert scale.dtype == torch.float8_e4m3fn and scale.shape == (n, k // 16)
    assert gs.dtype == torch.float32 and gs.shape == ()
    deq = dequantize_nvfp4(packed, scale, gs)
    err = (w - deq).abs()
    assert bool((err <= nvfp4_error_bound(w, scale, gs)).all())
    # The a-priori form for blocks with a normal E4M3 scale: at most one effective scale,
    # i.e. (17/16) of block_amax / 6, and a quarter of it for |w| <= 2 S.
    s = scale.float()
    normal = (s >= 2.0**-6).repeat_interleave(16, dim=1)
    eff = (s * gs).repeat_interleave(16, dim=1)
    block_amax = w.abs().reshape(n, k // 16, 16).amax(-1).repeat_interleave(16, dim=1)
    assert bool((err[normal] <= eff[normal] * (1 + 2**-20)).all())
    assert bool((err[normal] <= (17 / 16) * block_amax[normal] / 6 * (1 + 2**-20)).all())
    small = normal & (w.abs() <= 2 * eff)
    assert bool((err[small] <= eff[small] / 4 * (1 + 2**-20)).all())


def test_modelopt_scale_convention():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(16, 64, generator=g)
    packed, scale, gs = quantize_nvfp4(w)
    amax = w.abs().max()
    assert gs.item() == pytest.approx(amax.item() / (6 * 448), rel=1e-7)
    block_amax = w.abs().reshape(16, 4, 16).amax(-1)
    assert torch.equal(scale, (block_amax / 6 / gs).to(torch.float8_e4m3fn))
    # the tensor's largest block maps to E4M3's max and its largest element to code 6
    assert scale.float().max().item() == 448.0
    deq = dequantize_nvfp4(packed, scale, gs)
    i = w.abs().argmax()
    assert deq.flatten()[i].item() == pytest.approx(w.flatten()[i].item(), rel=1e-6)
    assert global_scale_from_amax(0.0).item() == 1.0


def test_codes_are_exactly_representable_values_are_fixed_points():
    # a weight already on the grid (with power-of-two scales) quantizes back to itself
    g = torch.Generator().manual_seed(5)
    codes = torch.randint(0, 16, (8, 64), generator=g, dtype=torch.uint8)
    codes[:, ::16] = 7  # every block reaches 6 so its scale is exactly amax / 6
    gs = torch.tensor(2.0**-8)
    scale = torch.full((8, 4), 2.0).to(torch.float8_e4m3fn)
    w = dequantize_nvfp4(pack_nvfp4(codes), scale, gs)
    p2, s2, g2 = quantize_nvfp4(w, global_scale=gs)
    assert torch.equal(dequantize_nvfp4(p2, s2, g2), w)


def test_given_global_scale_is_used():
    w = torch.randn(4, 32)
    _, _, gs = quantize_nvfp4(w, global_scale=0.5)
    assert gs.item() == 0.5


def test_batched_dequantize_applies_one_global_scale_per_matrix():
    ws = [torch.randn(8, 32) * (i + 1) for i in range(3)]
    qs = [quantize_nvfp4(w) for w in ws]
    packed = torch.stack([q[0] for q in qs])
    scale = torch.stack([q[1] for q in qs])
    gs = torch.stack([q[2] for q in qs])
    out = dequantize_nvfp4(packed, scale, gs)
    for i, q in enumerate(qs):
        assert torch.equal(out[i], dequantize_nvfp4(*q))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="divisible by 16"):
        quantize_nvfp4(torch.randn(4, 24))
    with pytest.raises(ValueError, match="inf or NaN"):
        quantize_nvfp4(torch.tensor([[float("nan")] * 16]))
    with pytest.raises(ValueError, match="even"):
        pack_nvfp4(torch.zeros(2, 3, dtype=torch.uint8))
