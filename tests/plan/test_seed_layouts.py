"""Acceptance on the seed's hardware (RTX PRO 6000 Blackwell: 96 GB, PCIe), `minimax-m2`:
FP8 fits only TP=4 (no room for DP); NVFP4 allows TP=2 x DP=2 on 4 GPUs and TP=2 x DP=3 on 6."""

from __future__ import annotations

import pytest

from tenk.plan.hardware import GpuSpec, gpu_from_preset
from tenk.plan.planner import PlanConfig, make_plan
from tenk.plan.source import load_model_source

# RTX PRO 6000: nvidia-smi shows 97,887 MiB; "96 GB" read either way must give the same answer.
MEMORIES = {"rtx-pro-6000": gpu_from_preset("rtx-pro-6000").memory_bytes, "96GB": 96 * 10**9, "96GiB": 96 << 30}


@pytest.fixture(scope="module")
def minimax():
    return load_model_source("minimax-m2")


@pytest.fixture(scope="module")
def plans(minimax):
    out = {}
    for label, mem in MEMORIES.items():
        gpu = GpuSpec(memory_bytes=mem, hbm_bandwidth=1.79e12, peak_flops=440e12, interconnect="pcie")
        for n in (4, 6):
            out[label, n] = make_plan(minimax, PlanConfig(gpus=n, gpu=gpu))
    return out


def _fitting(plan, quant):
    return {lp.name: lp for lp in plan.fitting() if lp.quantization == quant}


@pytest.mark.parametrize("memory", list(MEMORIES))
def test_fp8_fits_only_tp4(plans, memory):
    for n in (4, 6):
        fp8 = _fitting(plans[memory, n], "fp8")
        assert set(fp8) == {"tp4dp1"}, (n, set(fp8))
        (tp2,) = plans[memory, n].find("tp2dp1", "fp8")
        assert tp2.reason.startswith("does not fit: needs 107.16 GiB of weights per GPU")


@pytest.mark.parametrize("memory", list(MEMORIES))
def test_nvfp4_allows_tp2_with_dp(plans, memory):
    four, six = _fitting(plans[memory, 4], "nvfp4"), _fitting(plans[memory, 6], "nvfp4")
    assert {"tp2dp2", "tp4dp1"} <= set(four)
    assert {"tp2dp3", "tp2dp2", "tp4dp1"} <= set(six)
    assert "tp1dp1" not in four  # 125 GiB of weights on one 96 GB card
    for lp in (four["tp2dp2"], six["tp2dp3"]):
        assert lp.kv_tokens_per_replica > 50_000
        assert lp.kv_tokens_total == lp.dp * lp.kv_tokens_per_replica
    # half the weights per GPU at TP=4 leave NVFP4 far more KV than FP8 (the seed: 810K vs 142K)
    assert four["tp4dp1"].kv_tokens_total > 1.5 * _fitting(plans[memory, 4], "fp8")["tp4dp1"].kv_tokens_total
    # bf16 (457 GB) fits nowhere
    assert not _fitting(plans[memory, 6], "bf16")


def test_seed_kv_tokens_reported(plans):
    """The figures the report compares with the seed's 142K / 810K (RTX PRO 6000, utilization 0.9)."""
    p4, p6 = plans["rtx-pro-6000", 4], plans["rtx-pro-6000", 6]
    kv = {
        "fp8 tp4": _fitting(p4, "fp8")["tp4dp1"].kv_tokens_total,
        "nvfp4 tp4": _fitting(p4, "nvfp4")["tp4dp1"].kv_tokens_total,
        "nvfp4 tp2 replica": _fitting(p4, "nvfp4")["tp2dp2"].kv_tokens_per_replica,
        "nvfp4 tp2dp2": _fitting(p4, "nvfp4")["tp2dp2"].kv_tokens_total,
        "nvfp4 tp2dp3": _fitting(p6, "nvfp4")["tp2dp3"].kv_tokens_total,
    }
    print(kv)
    # bf16 KV is 248 KiB per token over the replica; ~48.9 GiB per GPU free at NVFP4 TP=4
    assert 780_000 < kv["nvfp4 tp4"] < 880_000
    assert 400_000 < kv["fp8 tp4"] < 520_000
    assert 120_000 < kv["nvfp4 tp2 replica"] < 180_000
