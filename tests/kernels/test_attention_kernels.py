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


@pytest.mark.parametrize("mixed_decodes", [True, False], ids=["decode_kernel_too", "prefill_kernel_only"])
def test_mixed_batch_group_of_six_default_tiles(interpret, mixed_decodes):
    """A group of 6 query heads per kv head (MiniMax-M2's 48/8): tile rows straddle positions.
    The one-query sequences go to the decode kernel too (the default) or not."""
    _run(MIXED, hq=12, hkv=2, d=16, dtype=torch.float32, seed=2, mixed_decodes=mixed_decodes)


def test_mixed_batch_decodes_split_over_the_context(interpret):
    """A mixed batch whose one-query sequences take the decode kernel in 3 context splits."""
    _run(MIXED + [(90, 1)], hq=4, hkv=2, d=16, dtype=torch.float32, seed=4, num_kv_splits=3, block_m=16)


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


def test_padding_of_a_mixed_step_graph(interpret):
    """The layout engine.mixed_graphs replays: after the live sequences, one sequence holds the
    padding tokens with an empty context and slot -1 (its rows come out zero, nothing is stored),
    then sequences without tokens. The live rows are bit for bit the unpadded kernel's."""
    import dataclasses

    from tenk.kernels.attention import AttentionMetadata

    case = make_attention_case(MIXED, 4, 2, 16, dtype=torch.float32, seed=5)
    base = check_attention(case, block_m=16, block_n=16)
    assert base["cache_equal"] and base["rel_err"] < 1e-5
    t, pad, m = case.q.shape[0], 11, case.meta
    tokens = t + pad
    q = torch.cat([case.q, torch.randn(pad, *case.q.shape[1:])])
    k = torch.cat([case.k, torch.randn(pad, *case.k.shape[1:])])
    v = torch.cat([case.v, torch.randn(pad, *case.v.shape[1:])])
    b = m.seq_lens.shape[0]
    extra = 3  # the padding sequence and two without tokens
    padded = AttentionMetadata(
        cu_seqlens_q=torch.cat([m.cu_seqlens_q, torch.full((extra,), tokens, dtype=torch.int32)]),
        seq_lens=torch.cat([m.seq_lens, torch.zeros(extra, dtype=torch.int32)]),
        slot_mapping=torch.cat([m.slot_mapping, torch.full((pad,), -1, dtype=m.slot_mapping.dtype)]),
        block_tables=torch.cat([m.block_tables, m.block_tables[:1].expand(extra, -1)]),
        max_seqlen_q=tokens, max_seqlen_k=m.max_seqlen_k,
        cu_seqlens_q_cpu=m.cu_seqlens_q_cpu + [tokens] * extra, seq_lens_cpu=m.seq_lens_cpu + [0] * extra,
    )
    assert padded.seq_lens.shape[0] == b + extra
    outs = {}
    for name, c in {"live": case, "padded": dataclasses.replace(case, q=q, k=k, v=v, meta=padded)}.items():
        kc, vc = case.k_cache.clone(), case.v_cache.clone()
        at.store_kvcache_triton(c.k, c.v, kc, vc, c.meta.slot_mapping)
        out = torch.full_like(c.q, float("nan"))
        at.paged_attention_triton(c.q, c.k, c.v, kc, vc, c.meta, c.scale, out=out, block_m=16, block_n=16)
        outs[name] = (out, kc, vc)
    (live, kc0, vc0), (out, kc1, vc1) = outs["live"], outs["padded"]
    assert torch.equal(out[:t], live) and torch.equal(out[t:], torch.zeros_like(out[t:]))
    same = lambda a, b: torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    assert same(kc0, kc1) and same(vc0, vc1)  # the padding stored nothing
    ref = at.paged_attention_ref(q, k, v, kc1, vc1, padded, case.scale)
    assert torch.equal(ref[t:], torch.zeros_like(ref[t:]))  # the reference agrees on the padding rows
