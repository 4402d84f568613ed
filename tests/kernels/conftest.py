"""Fixtures for the kernel tests.

`interpret`: tenk's Triton kernels run on CPU tensors through Triton's interpreter during the test
(see tenk.kernels.interpret: swapped per test, so nothing leaks into other test folders).
`sm90_compile`: compiles the launches a call makes for an H100, on this CPU-only machine.
"""

from __future__ import annotations

import re

import pytest
import torch


@pytest.fixture
def interpret():
    from tenk.kernels.interpret import triton_interpreter

    with triton_interpreter():
        yield


# ---------------------------------------------------------------- compiling for an H100 without one

_PTR_TYPE = {
    torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.int32: "*i32",
    torch.int64: "*i64", torch.float8_e4m3fn: "*fp8e4nv", torch.uint8: "*u8", torch.int8: "*i8", torch.int16: "*i16",
}


class _Recorder:
    """Stands in for a JITFunction: `kernel[grid](*args, **kwargs)` records the launch."""

    def __init__(self, fn):
        self.fn = fn
        self.launches = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((args, dict(kwargs)))


def _compile_sm90(fn, args, kwargs) -> dict:
    """Compile one recorded launch for sm_90 the way the JIT would (pointers and ints divisible by 16
    get the divisibility hint, except do_not_specialize ints), and read registers, spills and
    shared memory from the cubin."""
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages", "maxnreg") if k in kwargs}
    bound = dict(zip(fn.arg_names, args))
    bound.update(kwargs)
    if "num_warps" in fn.arg_names:  # a Gluon kernel reads its warps as a constexpr too
        bound["num_warps"] = options["num_warps"]
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        v = bound[name]
        if fn.params[i].is_constexpr:
            signature[name], constexprs[name] = "constexpr", v
            continue
        aligned = (isinstance(v, torch.Tensor) and v.data_ptr() % 16 == 0) or (type(v) is int and v % 16 == 0)
        if aligned and not fn.params[i].do_not_specialize:  # sizes that change per step get no hint
            attrs[(i,)] = [["tt.divisibility", 16]]
        if isinstance(v, torch.Tensor):
            signature[name] = _PTR_TYPE[v.dtype]
        elif isinstance(v, bool):
            signature[name] = "i1"
        elif isinstance(v, int):
            signature[name] = "i32" if -(2**31) <= v < 2**31 else "i64"
        else:
            signature[name] = "fp32"
    if getattr(fn, "is_gluon", lambda: False)():
        from triton.experimental.gluon._runtime import GluonASTSource

        src = GluonASTSource(fn, signature=signature, constexprs=constexprs, attrs=attrs)
    else:
        src = ASTSource(fn, signature=signature, constexprs=constexprs, attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    cuobjdump = _nvidia_tool("cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    field = lambda key: int(re.search(rf"{key}:(\d+)", usage).group(1))
    return {"name": fn.__name__, "regs": field("REG"), "spill_bytes": field("STACK") + field("LOCAL"),
            "shared_bytes": kernel.metadata.shared, "options": options, "ptx": kernel.asm.get("ptx", "")}


def _nvidia_tool(name: str) -> str:
    """A CUDA binary Triton ships (ptxas, cuobjdump): usable without a GPU or a CUDA install."""
    import os

    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def ptxas_notes(ptx: str) -> str:
    """What ptxas -v says about a kernel's PTX for sm_90a (e.g. C7515: its wgmmas serialized)."""
    import os
    import subprocess
    import tempfile

    ptxas = _nvidia_tool("ptxas")
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        return subprocess.run([ptxas, "-arch=sm_90a", "-v", src, "-o", os.path.join(d, "k.cubin")],
                              capture_output=True, text=True).stderr


@pytest.fixture
def sm90_compile():
    """sm90_compile(modules, call) runs call() with every @triton.jit kernel of the modules replaced by a
    recorder (nothing executes), then compiles each recorded launch for an H100 and returns its
    resource usage."""
    from triton.runtime.jit import JITFunction

    def run(modules, call):
        recorders = {}
        for module in modules if isinstance(modules, (list, tuple)) else [modules]:
            for name, value in list(vars(module).items()):
                if isinstance(value, JITFunction) and name.endswith("_kernel"):
                    recorders[(module, name)] = _Recorder(value)
        try:
            for (module, name), rec in recorders.items():
                setattr(module, name, rec)
            call()
        finally:
            for (module, name), rec in recorders.items():
                setattr(module, name, rec.fn)
        return [_compile_sm90(r.fn, a, k) for r in recorders.values() for a, k in r.launches]

    return run


H100_MAX_SHARED = 227 * 1024  # per-block shared memory on an H100


def assert_fits_sm90(results: list[dict], expected: list[str]) -> None:
    """The sm90_compile results are exactly the `expected` kernels, each without register spills
    and within an H100's shared memory (printed, so -s shows the resource use)."""
    assert sorted({r["name"] for r in results}) == sorted(expected)
    for r in results:
        print(f"{r['name']}: {r['regs']} registers, {r['spill_bytes']} spill bytes, "
              f"{r['shared_bytes'] / 1024:.0f} KiB shared, {r['options']}")
        assert r["spill_bytes"] == 0, r
        assert r["shared_bytes"] <= H100_MAX_SHARED, r


def assert_shipped_tables_load(fmt: str, moe_cls, dense_cls) -> None:
    """Every entry of the shipped launch tables of one format (H100 and H200) is a valid config."""
    from tenk.kernels.configs import nvfp4 as tables

    for tag in ("h100", "h200"):
        table = tables.load_table(tag, fmt)
        assert table["moe"] and table["dense"], tag
        for section, cls in (("moe", moe_cls), ("dense", dense_cls)):
            for entries in table[section].values():
                for entry in entries.values():
                    cls.from_dict(entry)


_GLOBAL_ACCESS = re.compile(r"\b(ld\.global|st\.global|atom\.global|red\.global|cp\.async)")


def assert_waits_first(results: list[dict]) -> None:
    """Each sm90_compile result was built for programmatic dependent launch: griddepcontrol.wait
    comes before the first global load, store, atomic or copy (else the kernel reads a buffer its
    predecessor is still writing, or overwrites one still being read), and the next launch is
    released only after the wait."""
    assert results
    for r in results:
        ptx = r["ptx"]
        wait, release = ptx.find("griddepcontrol.wait"), ptx.find("griddepcontrol.launch_dependents")
        first = _GLOBAL_ACCESS.search(ptx)
        assert 0 <= wait < release, r["name"]
        assert first is not None and wait < first.start(), (r["name"], first.group(0))


def align_kernels(pairs: int) -> list[str]:
    """The launches of nvfp4_moe.moe_align_block_size_triton for this many (token, expert) pairs."""
    from tenk.kernels import nvfp4_moe

    if pairs <= nvfp4_moe.ALIGN_ONE_CTA_MAX_PAIRS:
        return ["_moe_align_kernel"]
    return ["_align_count_kernel", "_align_runs_kernel", "_align_scatter_kernel"]
