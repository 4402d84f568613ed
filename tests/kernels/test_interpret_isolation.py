"""The `interpret` fixture's interpreter (tenk.kernels.interpret) leaves nothing behind: kernel
modules, triton.language and its tensor class are exactly as before, so compiled kernels (other
tests, other folders, a GPU run in the same process) are unaffected."""

import torch
import triton.language as tl

from tenk.kernels import attention_triton, moe
from tenk.kernels.interpret import triton_interpreter
from tenk.kernels.testing import check_attention, make_attention_case, make_moe_case


def _snapshot():
    """Every attribute of the objects the interpreter touches (lazily imported submodules and the
    class __annotations__ Python creates on first access are not state the interpreter set)."""
    objs = [tl, tl.core, tl.math, tl.standard, tl.tensor, tl.dtype, attention_triton, moe]
    keep = lambda k, v: k != "__annotations__" and not isinstance(v, type(tl))
    return [{k: id(v) for k, v in vars(o).items() if keep(k, v)} for o in objs]


def test_interpreter_restores_everything():
    before = _snapshot()
    with triton_interpreter():
        case = make_attention_case([(20, 5), (9, 1)], 4, 2, 16, dtype=torch.float32)
        assert check_attention(case)["rel_err"] < 1e-5  # kernels that call jit helpers (tl.cdiv, ...)
        c = make_moe_case(4, 16, 16, 3, 2, dtype=torch.float32)
        moe.fused_moe_triton(c.x, c.w13, c.w2, c.topk_weights, c.topk_ids)
    assert _snapshot() == before
