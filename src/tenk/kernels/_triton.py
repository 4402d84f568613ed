"""`triton` and `triton.language as tl` for the kernel modules, or stand-ins where Triton is absent.

CPU-only installs (torch's CPU wheels do not bring Triton) still import every kernel module for its
torch reference and dispatcher; `@triton.jit` then returns the function unchanged and nothing ever
launches it. Annotations such as `tl.constexpr` stay strings (`from __future__ import annotations`).
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False

    class _TritonStandIn:
        @staticmethod
        def jit(fn=None, **_kwargs):
            return fn if fn is not None else (lambda f: f)

        @staticmethod
        def cdiv(a: int, b: int) -> int:
            return -(-a // b)

    triton = _TritonStandIn()
    tl = None

__all__ = ["HAS_TRITON", "tl", "triton"]
