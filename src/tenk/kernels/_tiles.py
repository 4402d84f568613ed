"""Tile order shared by tenk's GEMM kernels (dense and grouped, bf16, NVFP4 and FP8)."""

from __future__ import annotations

from tenk.kernels._triton import tl, triton


@triton.jit
def grouped_tile(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """Program id -> (pid_m, pid_n): GROUP_M row tiles are walked down one column of tiles before
    moving to the next column, so programs running together share their weight tiles in L2
    (the order of Triton's matmul tutorial)."""
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % group) % size_m, (pid % group) // size_m
