"""Triton paged attention and KV store vs the torch references (Triton interpreter on CPU).

Every case runs the store, then attention, on shuffled cache blocks whose unused slots and
block-table entries are NaN (a read past a context shows up as NaN), with q/k/v as strided views
of one qkv buffer and a NaN-poisoned output buffer.
"""

import pytest
import torch

from tenk.kernels import attention_triton as at
from tenk.kernels.testing import check_attention, make_attention_case

# (context length after this step, query length): a whole prompt, a chunk after a cached prefix
# that ends mid-block, decodes, a sequence with no query this step, a chunk starting on a boundary.
MIXED = [(37, 37), (50, 13), (17, 1), (33, 1), (20, 0), (64, 16)]
DECODES = [(1, 1), (17, 1), (40, 1), (100, 1)]

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _run(seqs, hq, hkv, d, dtype, tol=None, seed=0, **kw):
    case_kw = {k: kw.pop(k) for k in ("block_size", "cache_dtype", "kv_scale", "max_blocks") if k in kw}
    case = make_attention_case(seqs, hq, hkv, d, dtype=dtype, seed=seed, **case_kw)
    r = check_attention(case, **kw)
    assert r["cache_equal"], "stored cache differs from the reference store"
    assert r["rel_err"] < (tol or TOL[dtype]), r


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_mixed_batch_gqa(interpret, dtype):
    _run(MIXED, hq=4, hkv=2, d=16, dtype=dtype, seed=1, block_m=16, block_n=16)


def test_mixed_batch_group_of_six_default_tiles(interpret):
    """A group of 6 query heads per kv head (MiniMax-M2's 48/8): tile rows straddle positions."""
    _run(MIXED, hq=12, hkv=2, d=16, dtype=torch.float32, seed=2)


def test_prefill_no_gqa_block_32(interpret):
    _run([(45, 45), (70, 30)], hq=2, hkv=2, d=16, dtype=torch.float32, seed=3, block_size=32, block_m=32)


@pytest.mark.parametrize("splits", [1, 3])
def test_decode_batch(interpret, splits):
    """The decode kernel, whole-context and split-KV (with splits that get no tiles), with a block
    table wider than any context, as CUDA-graph buffers have."""
    _run(DECODES, hq=8, hkv=2, d=16, dtype=torch.float32, seed=4, num_kv_splits=splits, block_n=16, max_blocks=12)


def test_decode_head_dim_64_block_64(interpret):
    _run([(70, 1), (130, 1)], hq=4, hkv=1, d=64, dtype=torch.bfloat16, seed=5, block_size=64, num_kv_splits=2)


@pytest.mark.parametrize("decode", [False, True])
def test_fp8_kv_cache(interpret, decode):
    seqs = DECODES if decode else MIXED
    _run(seqs, hq=4, hkv=2, d=16, dtype=torch.bfloat16, seed=6, cache_dtype=torch.float8_e4m3fn, kv_scale=0.05,
         num_kv_splits=2 if decode else None)


@pytest.mark.parametrize("store", [at.store_kvcache_scaled_ref, at.store_kvcache_triton], ids=["ref", "triton"])
def test_fp8_store_saturates(interpret, store):
    """Values beyond 448 * scale saturate instead of turning into NaN; slot -1 writes nothing."""
    k = torch.tensor([[[1e4, -1e4, 1.0, 0.0]], [[5.0, 5.0, 5.0, 5.0]]])
    kc = torch.zeros(1, 16, 1, 4, dtype=torch.float8_e4m3fn)
    vc = torch.zeros_like(kc)
    store(k, k, kc, vc, torch.tensor([3, -1]), 2.0, 2.0)
    assert kc[0, 3, 0].float().tolist() == [448.0, -448.0, 0.5, 0.0]
    assert vc[0, 3, 0].float().tolist() == [448.0, -448.0, 0.5, 0.0]
    assert kc.float().abs().sum().item() == 448.0 * 2 + 0.5


def test_decode_splits_depend_on_shapes_only():
    """The decode grid (CUDA-graph safety) is a function of batch size, heads and table width."""
    cpu = torch.device("cpu")
    assert at.choose_num_splits(1024, 4, 256, 16, cpu) == 1
    few = at.choose_num_splits(1, 1, 256, 16, cpu)
    assert few > 1 and few == at.choose_num_splits(1, 1, 256, 16, cpu)
    assert at.choose_num_splits(1, 1, 1, 16, cpu) == 1  # a context of one block is never split
