"""benchmarks/moe_kernels.py's pieces that a GPU run relies on, on CPU (its --smoke run is in
tests/kernels/test_nvfp4_kernels.py)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import torch

from tests.benchmarks.test_serving_scripts import BENCH

sys.path.insert(0, str(BENCH))
from moe_kernels import kernel_times_us  # noqa: E402


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
