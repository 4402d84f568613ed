"""benchmarks/attn_decode.py on CPU (Triton's interpreter): `sweep` launches the production decode
with its own warps / stages / register cap, and `compare` loads another source tree's attention
kernels as a module of their own, beside this tree's, so one process can alternate the two (this
tree's own source stands in for the other one)."""

from __future__ import annotations

import sys

import torch

from tests.benchmarks.test_serving_scripts import BENCH

sys.path.insert(0, str(BENCH))
import attn_decode  # noqa: E402
from tenk.kernels import attention_triton as at  # noqa: E402
from tenk.kernels.interpret import triton_interpreter  # noqa: E402
from tenk.kernels.testing import make_attention_case  # noqa: E402


def test_the_other_tree_loads_as_its_own_module_and_attends_alike():
    other = attn_decode._load_other(str(BENCH.parent / "src"))
    assert other is not at and other._decode_kernel is not at._decode_kernel
    with triton_interpreter():
        outs = _attend_with(at, other)
    assert torch.isfinite(outs[0]).all() and torch.equal(outs[0], outs[1])


def test_the_sweeps_launch_is_the_production_decode_with_its_knobs():
    case = make_attention_case([(40, 1), (23, 1)], 4, 2, 16, dtype=torch.bfloat16, cache_dtype=torch.float8_e4m3fn,
                               kv_scale=0.05, seed=3)
    with triton_interpreter():
        at.store_kvcache_triton(case.k, case.v, case.k_cache, case.v_cache, case.meta.slot_mapping, case.k_scale,
                                case.v_scale)
        want = at.paged_attention_triton(case.q, None, None, case.k_cache, case.v_cache, case.meta, case.scale,
                                         k_scale=case.k_scale, v_scale=case.v_scale, num_kv_splits=1, block_n=16)
        out = torch.full_like(case.q, float("nan"))
        attn_decode._launch(case, out, 16, 2, 2, 0)
    assert torch.equal(out, want)


def _attend_with(*mods):
    case = make_attention_case([(40, 1), (23, 1)], 4, 2, 16, dtype=torch.bfloat16, cache_dtype=torch.float8_e4m3fn,
                               kv_scale=0.05, seed=2)
    kc, vc = case.k_cache.clone(), case.v_cache.clone()
    at.store_kvcache_triton(case.k, case.v, kc, vc, case.meta.slot_mapping, case.k_scale, case.v_scale)
    return [mod.paged_attention_triton(case.q, None, None, kc, vc, case.meta, case.scale, k_scale=case.k_scale,
                                       v_scale=case.v_scale) for mod in mods]


def test_prefill_flops_count_the_keys_each_query_sees():
    """--prefill's TFLOP/s: 2 matmuls x 2 flops x head_dim 128 per (head, query, visible key)."""
    seqs = [(7, 7), (10, 3), (5, 1)]
    pairs = sum(prefix + i + 1 for ctx, q in seqs for prefix in [ctx - q] for i in range(q))
    assert attn_decode._flops(4, seqs) == 4 * 4 * 128 * pairs
