"""Block manager: ref counts, prefix-cache hits, LRU eviction, invariants under random use."""

from __future__ import annotations

import random

import pytest

from tenk.engine.block_manager import BlockManager
from tenk.engine.sampling_params import SamplingParams
from tenk.engine.sequence import Request


def make_seq(tokens, rid="r"):
    return Request(rid, tokens, SamplingParams(), 0.0, max_tokens=16).seqs[0]


def admit(bm, seq):
    """Admit a sequence the way the scheduler does and pretend its prompt got computed."""
    cached = bm.lookup_prefix(seq)
    new = seq.num_tokens - len(cached) * bm.block_size
    assert bm.allocate_prefill(seq, cached, new)
    seq.num_computed_tokens += new
    bm.cache_full_blocks(seq)
    return len(cached)


def test_allocate_and_free_accounting():
    bm = BlockManager(num_blocks=10, block_size=4)
    s = make_seq(list(range(10)))  # 10 tokens -> 3 blocks
    assert admit(bm, s) == 0
    assert len(s.block_table) == 3 and bm.num_free_blocks == 7
    assert bm.usage == pytest.approx(0.3)
    s.token_ids += [1, 2]  # two decode tokens: the third block has room for both
    assert bm.allocate_slots(s, 2) and len(s.block_table) == 3
    s.num_computed_tokens += 2
    s.token_ids.append(3)
    assert bm.allocate_slots(s, 1) and len(s.block_table) == 4
    bm.free(s)
    assert bm.num_free_blocks == 10 and s.block_table == []
    bm.check_invariants()


def test_allocation_fails_cleanly_when_short():
    bm = BlockManager(num_blocks=3, block_size=4)
    s = make_seq(list(range(20)))
    assert not bm.allocate_prefill(s, [], 20)  # needs 5 blocks
    assert s.block_table == [] and bm.num_free_blocks == 3
    assert bm.allocate_prefill(s, [], 12)  # a 12-token chunk fits
    s.num_computed_tokens = 12
    assert not bm.allocate_slots(s, 8)
    assert len(s.block_table) == 3
    bm.check_invariants()


def test_prefix_hit_shares_blocks_and_keeps_one_token_to_compute():
    bm = BlockManager(num_blocks=16, block_size=4)
    a = make_seq(list(range(10)), "a")
    admit(bm, a)  # blocks [0..3], [4..7] cached; [8, 9] partial
    b = make_seq(list(range(8)) + [99, 98, 97], "b")
    assert admit(bm, b) == 2
    assert b.block_table[:2] == a.block_table[:2]
    assert bm.blocks[a.block_table[0]].ref_count == 2
    assert b.num_computed_tokens == 11 and bm.prefix_cache_hits == 8
    # An identical 8-token prompt could be served whole, but its last token must be computed.
    c = make_seq(list(range(8)), "c")
    assert admit(bm, c) == 1
    # A different first block breaks the chain even if the second block matches.
    d = make_seq([7, 7, 7, 7] + list(range(4, 8)) + [1], "d")
    assert admit(bm, d) == 0
    for s in (a, b, c, d):
        bm.free(s)
    assert bm.num_free_blocks == 16
    bm.check_invariants()


def test_block_key_includes_its_prefix():
    """A block's K/V depend on every token before it: the same 4 tokens after another prefix
    are another block."""
    bm = BlockManager(num_blocks=16, block_size=4)
    A, B, C, D = [1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3], [4, 4, 4, 4]
    admit(bm, make_seq(A + B + [0], "ab"))
    admit(bm, make_seq(C + D + [0], "cd"))
    assert admit(bm, make_seq(A + D + [0], "ad")) == 1
    assert admit(bm, make_seq(C + D + [9], "cd2")) == 2


def test_freed_cached_blocks_are_reused_until_evicted_lru():
    bm = BlockManager(num_blocks=6, block_size=2)
    a = make_seq([1, 2, 3, 4, 5], "a")  # 3 blocks, 2 full ones cached
    admit(bm, a)
    a0, a1 = a.block_table[:2]
    bm.free(a)
    # Still findable after free.
    b = make_seq([1, 2, 3, 4, 9], "b")
    assert admit(bm, b) == 2
    bm.free(b)
    # Uncached blocks are handed out before cached ones: 4 blocks here evict nothing...
    c = make_seq([50, 51, 52, 53, 54, 55, 56, 57], "c")
    assert bm.allocate_prefill(c, [], 8)
    assert len(bm.cached) == 2
    # ...and taking the last two evicts the cached prefix, tail block first.
    d = make_seq([60, 61, 62], "d")
    assert bm.allocate_prefill(d, [], 2)
    assert d.block_table == [a1]
    assert bm.lookup_prefix(make_seq([1, 2, 3, 4, 5])) == [a0]
    bm.check_invariants()


def test_lru_evicts_tail_blocks_first():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = make_seq([1, 2, 3, 4, 5, 6, 7], "a")  # 4 blocks, 3 full cached
    admit(bm, a)
    first = a.block_table[0]
    bm.free(a)
    x = make_seq([9, 9, 9], "x")
    assert bm.allocate_prefill(x, [], 3)  # 2 blocks: the uncached tail block, then the last cached
    probe = make_seq([1, 2, 3, 4, 5, 6, 8])
    assert bm.lookup_prefix(probe) == [first, bm.cached[probe.block_hashes[1]]]
    bm.check_invariants()


def test_prefix_caching_off():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    a = make_seq(list(range(9)), "a")
    admit(bm, a)
    b = make_seq(list(range(9)), "b")
    assert admit(bm, b) == 0
    assert bm.cached == {} and bm.prefix_cache_queries == 0


def test_random_use_keeps_invariants():
    rng = random.Random(0)
    bm = BlockManager(num_blocks=40, block_size=4)
    live = []
    prefixes = [[rng.randrange(100) for _ in range(12)] for _ in range(3)]
    for step in range(400):
        op = rng.random()
        if op < 0.4 and len(live) < 12:
            toks = rng.choice(prefixes)[: rng.randint(0, 12)] + [rng.randrange(100) for _ in range(rng.randint(1, 10))]
            s = make_seq(toks, f"s{step}")
            cached = bm.lookup_prefix(s)
            if bm.allocate_prefill(s, cached, s.num_tokens - len(cached) * 4):
                s.num_computed_tokens = s.num_tokens
                bm.cache_full_blocks(s)
                live.append(s)
        elif op < 0.8 and live:
            s = rng.choice(live)
            s.token_ids.append(rng.randrange(100))
            if bm.allocate_slots(s, 1):
                s.num_computed_tokens += 1
                bm.cache_full_blocks(s)
            else:
                s.token_ids.pop()
        elif live:
            bm.free(live.pop(rng.randrange(len(live))))
        bm.check_invariants()
        held = sum(len({*s.block_table}) for s in live)
        assert bm.num_blocks - bm.num_free_blocks <= held
    for s in live:
        bm.free(s)
    assert bm.num_free_blocks == 40
    bm.check_invariants()
