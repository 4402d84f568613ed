"""Scheduler invariants, driven without a model: each step's tokens are 'computed' and a
random token is appended to every sequence that samples."""

from __future__ import annotations

import random

from tenk.engine.block_manager import BlockManager
from tenk.engine.sampling_params import SamplingParams
from tenk.engine.scheduler import Scheduler
from tenk.engine.sequence import Request, SequenceStatus


def make_request(rid, prompt_len, max_tokens, rng, n=1):
    prompt = [rng.randrange(1000) for _ in range(prompt_len)]
    return Request(rid, prompt, SamplingParams(n=n, max_tokens=max_tokens), 0.0, max_tokens)


def fake_step(sched, rng):
    """Run one scheduled step; return the scheduler output and sequences finished."""
    was_running = {s.seq_id for s in sched.running}
    out = sched.schedule()
    bm = sched.block_manager
    for seq, n in zip(out.seqs, out.num_new_tokens):
        assert seq.status is SequenceStatus.RUNNING
        assert len(seq.block_table) * bm.block_size >= seq.num_computed_tokens + n
    # Running sequences come first, their decodes before their prefill chunks.
    new = [s.seq_id not in was_running for s in out.seqs]
    kinds = [(nw, not nw and (n > 1 or s.in_prompt)) for nw, s, n in zip(new, out.seqs, out.num_new_tokens)]
    assert kinds == sorted(kinds)
    sched.update_computed(out)
    sched.cache_blocks(out)
    finished = []
    for seq in out.seqs:
        if seq.num_computed_tokens == seq.num_tokens:
            seq.token_ids.append(rng.randrange(1000))
            if seq.num_output_tokens >= seq.max_tokens:
                sched.finish(seq)
                finished.append(seq)
    return out, finished


def run_random(num_blocks, block_size, max_num_seqs, budget, num_requests, seed, prefix_caching=True):
    rng = random.Random(seed)
    bm = BlockManager(num_blocks, block_size, prefix_caching)
    sched = Scheduler(bm, max_num_seqs, budget)
    reqs = [make_request(f"r{i}", rng.randint(1, 50), rng.randint(1, 20), rng, n=rng.choice([1, 1, 2])) for i in range(num_requests)]
    pending = list(reqs)
    done = set()
    for step in range(5000):
        if pending and rng.random() < 0.5:
            for seq in pending.pop(0).seqs:
                sched.add(seq)
        if not sched.has_unfinished() and not pending:
            break
        out, finished = fake_step(sched, rng)
        assert out.num_batched_tokens <= budget
        assert len(sched.running) <= max_num_seqs
        assert len({s.seq_id for s in out.seqs}) == len(out.seqs)
        done.update(s.seq_id for s in finished)
        bm.check_invariants()
    all_seqs = [s for r in reqs for s in r.seqs]
    assert {s.seq_id for s in all_seqs} == done, "every sequence finishes"
    assert all(s.num_output_tokens == s.max_tokens for s in all_seqs)
    assert bm.num_free_blocks == num_blocks
    return sched


def test_random_workload_finishes_everything():
    sched = run_random(num_blocks=200, block_size=4, max_num_seqs=16, budget=64, num_requests=60, seed=0)
    assert sched.num_preemptions == 0


def test_tight_pool_preempts_but_finishes_everything():
    # 20 blocks of 4 = 80 tokens; sequences grow to 70 tokens.
    sched = run_random(num_blocks=20, block_size=4, max_num_seqs=8, budget=32, num_requests=40, seed=1)
    assert sched.num_preemptions > 0


def test_tight_pool_without_prefix_cache():
    sched = run_random(num_blocks=20, block_size=4, max_num_seqs=8, budget=32, num_requests=40, seed=2,
                       prefix_caching=False)
    assert sched.num_preemptions > 0


def test_budget_chunks_a_long_prompt():
    rng = random.Random(3)
    bm = BlockManager(100, 4)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=10)
    req = make_request("long", 25, 3, rng)
    sched.add(req.seqs[0])
    chunks = []
    for _ in range(3):
        out, _ = fake_step(sched, rng)
        chunks.append(out.num_new_tokens[0])
    assert chunks == [10, 10, 5]
    assert req.seqs[0].num_output_tokens == 1  # sampled once the last chunk ran


def test_decodes_first_then_new_prefills_fill_the_budget():
    rng = random.Random(4)
    bm = BlockManager(100, 4)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=12)
    a, b = make_request("a", 5, 10, rng), make_request("b", 5, 10, rng)
    sched.add(a.seqs[0])
    sched.add(b.seqs[0])
    fake_step(sched, rng)  # both prefill (10 tokens) and sample
    c = make_request("c", 30, 5, rng)
    sched.add(c.seqs[0])
    out, _ = fake_step(sched, rng)
    assert out.seqs[:2] == [a.seqs[0], b.seqs[0]] and out.num_new_tokens == [1, 1, 10]


def test_preemption_picks_the_newest_and_requeues_it_first():
    rng = random.Random(5)
    bm = BlockManager(6, 4)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=100)
    reqs = [make_request(f"r{i}", 8, 20, rng) for i in range(3)]  # 2 blocks each: the pool is full
    for r in reqs:
        sched.add(r.seqs[0])
    fake_step(sched, rng)
    assert bm.num_free_blocks == 0
    out, _ = fake_step(sched, rng)  # every decode needs a third block
    newest = reqs[2].seqs[0]
    assert out.num_preempted >= 1 and newest.status is SequenceStatus.WAITING
    assert sched.waiting[0] is newest and newest.num_computed_tokens == 0 and newest.block_table == []
    assert reqs[0].seqs[0] in out.seqs
    bm.check_invariants()


def test_finish_from_waiting_and_running_frees_blocks():
    rng = random.Random(6)
    bm = BlockManager(50, 4)
    sched = Scheduler(bm, max_num_seqs=1, max_num_batched_tokens=100)
    a, b = make_request("a", 9, 5, rng), make_request("b", 9, 5, rng)
    sched.add(a.seqs[0])
    sched.add(b.seqs[0])
    fake_step(sched, rng)
    assert a.seqs[0].status is SequenceStatus.RUNNING and b.seqs[0].status is SequenceStatus.WAITING
    sched.finish(b.seqs[0])
    sched.finish(a.seqs[0])
    assert not sched.has_unfinished() and bm.num_free_blocks == 50
