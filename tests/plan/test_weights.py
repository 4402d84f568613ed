"""Weights per GPU: the plan's bf16 figure equals the parameters of tenk's own model built on
the meta device (every family, TP 1-8), and its quantized figures equal the bytes that
`tenk quantize` writes."""

from __future__ import annotations

import pytest
import torch

from tenk.models.checkpoint_specs import checkpoint_tensor_specs
from tenk.models.config import ModelConfig
from tenk.models.presets import PRESETS, get_preset
from tenk.plan.quant_schemes import make_scheme
from tenk.plan.weights import kinds_for, rope_table_bytes, weights_per_gpu


_SPECS: dict = {}


def _plan_weights(hf, scheme, tp, dtype="bfloat16", checkpoint=None):
    mc = ModelConfig.from_hf(hf)
    s = make_scheme(scheme, checkpoint)
    key = (hf["model_type"], hf["num_hidden_layers"], hf["hidden_size"])
    if key not in _SPECS:  # MiniMax-M2 has 48K tensors: build their list once
        _SPECS[key] = checkpoint_tensor_specs(hf)
    return weights_per_gpu(kinds_for(_SPECS[key], mc, s), mc, tp, dtype, s.name)


@pytest.fixture
def fake_tp():
    """Build layers as rank 0 of a TP group without a process group: construction only asks for
    the rank and size (no collective runs on the meta device)."""
    from tenk.parallel.state import set_tp_group

    def use(tp):
        set_tp_group(None, 0, tp)

    yield use
    set_tp_group(None, 0, 1)


@pytest.mark.parametrize("preset", PRESETS)
def test_bf16_weights_equal_engine_parameters(preset, fake_tp):
    from tenk.models.loader import build_model

    hf = get_preset(preset, num_layers=2)  # full width, two layers: every tensor kind, fast
    mc = ModelConfig.from_hf(hf)
    checked = 0
    for tp in (1, 2, 4, 8):
        w = _plan_weights(hf, "bf16", tp)
        if w.problems:
            assert mc.num_heads % tp or mc.num_kv_heads % tp and tp % mc.num_kv_heads
            continue
        fake_tp(tp)
        model = build_model(mc, torch.device("meta"), torch.bfloat16)
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        buffers = sum(b.numel() * b.element_size() for b in model.buffers())
        assert w.total == params, (preset, tp)
        assert rope_table_bytes(mc) == buffers
        checked += 1
    assert checked >= 3


def test_minimax_m2_checkpoint_sizes():
    """The public numbers: FP8 ~230 GB (seed: 229 GB), NVFP4 experts-only ~125 GiB (seed: 126 GB);
    per GPU NVFP4 TP=4 31.4 GiB (seed: 31.5 GB), TP=2 62.6 GiB (seed: 62.75 GB)."""
    hf = get_preset("minimax-m2")
    fp8 = _plan_weights(hf, "fp8", 1).total
    nvfp4 = _plan_weights(hf, "nvfp4", 1).total
    assert 229e9 <= fp8 <= 231e9
    assert 125.0 <= nvfp4 / 2**30 <= 125.5
    assert abs(_plan_weights(hf, "nvfp4", 4).total / 2**30 - 31.4) < 0.1
    assert abs(_plan_weights(hf, "nvfp4", 2).total / 2**30 - 62.6) < 0.1
    # block-FP8 experts cannot split 8 ways (1536 / 8 = 192 is not a multiple of 128), as in vLLM
    assert any("multiple of 128" in p for p in _plan_weights(hf, "fp8", 8).problems)
    assert not _plan_weights(hf, "nvfp4", 8).problems


@pytest.mark.parametrize("fmt,targets,scheme,fp8_scheme", [
    ("nvfp4", "experts", "nvfp4", "tensor"),
    ("nvfp4", "all-linear", "nvfp4-all", "tensor"),
    ("fp8", "all-linear", "fp8", "block"),
    ("fp8", "all-linear", "fp8-tensor", "tensor"),
])
def test_quantized_bytes_equal_tenk_quantize_output(tmp_path, fmt, targets, scheme, fp8_scheme):
    from safetensors import safe_open

    from tenk.models.checkpoint_writer import write_random_checkpoint
    from tenk.quant.formats import detect_quant_config
    from tenk.quant.quantize import QuantizeOptions, quantize_checkpoint

    hf = get_preset("tiny-minimax")
    write_random_checkpoint(hf, tmp_path / "src")
    quantize_checkpoint(tmp_path / "src", tmp_path / "q", QuantizeOptions(format=fmt, targets=targets, fp8_scheme=fp8_scheme))
    on_disk = 0
    for f in (tmp_path / "q").glob("*.safetensors"):
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                t = h.get_tensor(k)
                on_disk += t.numel() * t.element_size()
    assert _plan_weights(hf, scheme, 1).total == on_disk
    # and reading the checkpoint's own declaration ("auto") gives the same
    assert _plan_weights(hf, "auto", 1, checkpoint=detect_quant_config(tmp_path / "q")).total == on_disk
