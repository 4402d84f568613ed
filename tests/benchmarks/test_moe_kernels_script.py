"""benchmarks/moe_kernels.py's pieces that a GPU run relies on, on CPU (its --smoke run is in
tests/kernels/test_nvfp4_kernels.py)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import torch

from tests.benchmarks.test_serving_scripts import BENCH

sys.path.insert(0, str(BENCH))
from moe_kernels import Timer, kernel_times_us  # noqa: E402


def test_kernel_breakdown_sums_device_time_per_kernel():
    """moe_kernels.py --breakdown: device events summed by kernel name per call, longest first;
    host-side events left out."""
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    events = [SimpleNamespace(name="_nvfp4_moe_gemm_kernel", device_type=cuda, device_time=30.0),
              SimpleNamespace(name="_moe_align_kernel", device_type=cuda, device_time=8.0),
              SimpleNamespace(name="_nvfp4_moe_gemm_kernel", device_type=cuda, device_time=50.0),
              SimpleNamespace(name="aten::empty", device_type=cpu, device_time=0.0)]  # fmt: skip
    got = kernel_times_us(events, calls=2)
    assert list(got) == ["_nvfp4_moe_gemm_kernel", "_moe_align_kernel"] and got["_nvfp4_moe_gemm_kernel"] == 40.0


def test_eager_rounds_alternate_the_paths():
    """An eager row's rounds time each path once per round, in turn, and keep every round."""
    calls = []
    timer = Timer(smoke=True)
    timer.eager = lambda fn: fn()
    clock = iter(range(100))
    fns = {"nvfp4": lambda: calls.append("nvfp4") or next(clock), "bf16": lambda: calls.append("bf16") or next(clock)}
    got = timer.rounds(fns, 3)
    assert calls == ["nvfp4", "bf16"] * 3
    assert got == {"nvfp4": [0, 2, 4], "bf16": [1, 3, 5]}
