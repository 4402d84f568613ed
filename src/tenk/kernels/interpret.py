"""Run tenk's Triton kernels on CPU tensors through Triton's interpreter (tests, --smoke runs).

Triton picks interpreter-or-compiler when a kernel is decorated (TRITON_INTERPRET at import time),
which depends on import order and leaks into everything else in the process. `triton_interpreter()`
instead swaps each `@triton.jit` function of tenk.kernels (and triton.language's own jit helpers
such as tl.zeros / tl.cdiv) for an interpreted twin while the context is open, and puts the
compiled ones back afterwards.

It also closes three gaps of Triton 3.6's interpreter so that it computes what the GPU computes:
- `tl.dot` on bfloat16 multiplies the raw uint16 bit patterns (numpy has no bfloat16);
- float casts truncate instead of rounding to nearest even, and fp8 e4m3 is decoded wrongly;
- scalars are 1-element arrays whose `__index__` numpy >= 2.3 rejects (`range(0, n)` fails).
The first two are replaced by torch's own conversions (exact, round-to-nearest-even).
The interpreter also leaves state behind that breaks compiling later in the same process: it copies
its module globals into every kernel module it runs, and device-function calls patch
triton.language without restoring it. Both are undone on exit (with its cache of rewritten
kernels, which relies on those globals).
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import sys

import numpy as np
import torch

_TORCH_FLOAT = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "fp64": torch.float64,
    "fp8e4nv": torch.float8_e4m3fn,
    "fp8e5": torch.float8_e5m2,
}
_INT_OF_WIDTH = {8: torch.uint8, 16: torch.int16, 32: torch.int32, 64: torch.int64}


def _to_torch(bits: np.ndarray, tl_dtype) -> torch.Tensor:
    width = tl_dtype.primitive_bitwidth
    raw = np.ascontiguousarray(bits).view(getattr(np, f"uint{width}"))
    as_int = raw.view(getattr(np, f"int{width}")) if width > 8 else raw
    return torch.from_numpy(as_int.copy()).view(_INT_OF_WIDTH[width]).view(_TORCH_FLOAT[tl_dtype.name])


def _convert_float(input, input_dtype, output_dtype, rounding_mode):
    out = _to_torch(np.asarray(input), input_dtype).to(_TORCH_FLOAT[output_dtype.name])
    width = output_dtype.primitive_bitwidth
    return out.view(_INT_OF_WIDTH[width]).numpy().view(getattr(np, f"uint{width}")).reshape(np.shape(input))


def _create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
    from triton.runtime.interpreter import TensorHandle

    def as_float(h):
        if h.dtype.name in ("bf16", "fp8e4nv", "fp8e5"):
            return _to_torch(h.data, h.dtype).float().numpy()
        return h.data

    out = np.matmul(as_float(a), as_float(b), dtype=d.data.dtype) + d.data
    return TensorHandle(out, d.dtype.scalar)


def _jit_modules() -> list:
    import tenk.kernels

    for info in pkgutil.iter_modules(tenk.kernels.__path__):
        importlib.import_module(f"tenk.kernels.{info.name}")
    prefixes = ("tenk.kernels.", "triton.language")
    return [m for name, m in list(sys.modules.items()) if name.startswith(prefixes) and m is not None]


@contextlib.contextmanager
def triton_interpreter():
    """While open, tenk's Triton kernels run interpreted (on CPU tensors, slowly, exactly)."""
    import triton
    import triton.experimental.gluon  # noqa: F401  (imported lazily by the interpreter; build it unpatched)
    from triton.runtime import interpreter
    from triton.runtime.jit import JITFunction

    undo: list[tuple[object, str, object]] = []

    def patch(obj, name, value):
        undo.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    original_patch_lang_tensor = interpreter._patch_lang_tensor
    original_set_attr = interpreter._LangPatchScope.set_attr
    first_seen: dict[tuple[int, str], tuple[object, str, object]] = {}

    def set_attr(scope, obj, name, value):
        # Helper calls inside a kernel patch triton.language without ever restoring it; remember the
        # true original of everything patched so the exit below can put it back.
        own = name in vars(obj)  # an inherited attribute (tensor.__repr__) is deleted again, not copied in
        first_seen.setdefault((id(obj), name), (obj, name, getattr(obj, name) if own else interpreter._MISSING))
        original_set_attr(scope, obj, name, value)

    def patch_lang_tensor(tensor, scope):
        original_patch_lang_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    modules = _jit_modules()
    own_names = {id(m): set(vars(m)) for m in modules}
    cached_rewrites = set(interpreter.InterpretedFunction.rewritten_fn)
    try:
        patch(triton.knobs.runtime, "interpret", True)
        patch(interpreter, "_convert_float", _convert_float)
        patch(interpreter.InterpreterBuilder, "create_dot", _create_dot)
        patch(interpreter, "_patch_lang_tensor", patch_lang_tensor)
        patch(interpreter._LangPatchScope, "set_attr", set_attr)
        twins: dict[int, object] = {}  # one twin per function, however many modules re-export it
        for module in modules:
            for name, value in list(vars(module).items()):
                if isinstance(value, JITFunction):
                    patch(module, name, twins.setdefault(id(value), interpreter.InterpretedFunction(value.fn)))
        yield
    finally:
        for obj, name, value in reversed(undo):
            setattr(obj, name, value)
        for obj, name, value in first_seen.values():
            if value is interpreter._MISSING:
                if name in vars(obj):
                    delattr(obj, name)
            else:
                setattr(obj, name, value)
        for module in modules:
            for name in set(vars(module)) - own_names[id(module)]:
                delattr(module, name)
        for fn in set(interpreter.InterpretedFunction.rewritten_fn) - cached_rewrites:
            del interpreter.InterpretedFunction.rewritten_fn[fn]  # they were bound to those globals
