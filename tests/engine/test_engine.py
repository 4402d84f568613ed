"""Acceptance tests of the engine on a tiny model (CPU, fp32): batching, chunked prefill,
preemption and the prefix cache must never change greedy tokens; seeds reproduce; aborts and
finished requests give every block back."""

from __future__ import annotations

import random

import pytest
import torch

from tenk.engine.sampling_params import SamplingParams
from tenk.kernels.attention import AttentionMetadata

from .conftest import engine_factory


@pytest.fixture(params=[True, False], ids=["overlap", "sync"])
def make_engine(request, tiny_moe):
    """Every engine test runs with overlap scheduling on and off."""
    return engine_factory(tiny_moe, async_scheduling=request.param)


def run_all(engine, prompts, params, max_steps=20_000):
    params = params if isinstance(params, list) else [params] * len(prompts)
    for i, (p, sp) in enumerate(zip(prompts, params)):
        engine.add_request(str(i), p, sp)
    done = {}
    for _ in range(max_steps):
        if not engine.has_unfinished_requests():
            break
        for out in engine.step():
            assert out.request_id not in done, "a finished request was reported twice"
            if out.finished:
                done[out.request_id] = out
    assert not engine.has_unfinished_requests()
    return [done[str(i)] for i in range(len(prompts))]


@torch.inference_mode()
def reference_greedy(model, prompts, max_tokens):
    """Uncached full-forward greedy decoding: every step recomputes every sequence from scratch."""
    seqs = [list(p) for p in prompts]
    outs = [[] for _ in prompts]
    for step in range(max(max_tokens)):
        live = [i for i in range(len(seqs)) if len(outs[i]) < max_tokens[i]]
        if not live:
            break
        lens = [len(seqs[i]) for i in live]
        ids = torch.tensor([t for i in live for t in seqs[i]])
        pos = torch.cat([torch.arange(n) for n in lens])
        hidden = model(ids, pos, AttentionMetadata.for_prefill_without_cache(lens, "cpu"))
        last = torch.tensor(lens).cumsum(0) - 1
        nxt = model.compute_logits(hidden[last]).argmax(-1).tolist()
        for i, t in zip(live, nxt):
            seqs[i].append(t)
            outs[i].append(t)
    return outs


def random_prompts(n, vocab, rng, lo=1, hi=60):
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


@pytest.fixture(scope="module")
def greedy_case(tiny_moe):
    rng = random.Random(0)
    from tenk.models.config import ModelConfig

    vocab = ModelConfig.from_dir(tiny_moe).vocab_size
    prompts = random_prompts(200, vocab, rng)
    max_tokens = [rng.randint(1, 10) for _ in prompts]
    return prompts, max_tokens


@pytest.fixture(scope="module")
def greedy_reference(tiny_moe, greedy_case):
    from tenk.models.config import ModelConfig
    from tenk.models.loader import load_model

    model = load_model(ModelConfig.from_dir(tiny_moe), tiny_moe, "cpu", torch.float32)
    prompts, max_tokens = greedy_case
    return reference_greedy(model, prompts, max_tokens)


def greedy_params(max_tokens):
    return [SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True) for m in max_tokens]


def test_200_prompts_batched_match_alone(make_engine, greedy_case, greedy_reference):
    prompts, max_tokens = greedy_case
    # A small token budget forces chunked prefills mixed with decodes.
    engine = make_engine(max_num_seqs=64, max_num_batched_tokens=96, num_kv_blocks=512)
    outs = run_all(engine, prompts, greedy_params(max_tokens))
    got = [o.outputs[0].token_ids for o in outs]
    mismatches = [i for i in range(len(prompts)) if got[i] != greedy_reference[i]]
    assert not mismatches, f"{len(mismatches)} prompts differ, first {mismatches[0]}"
    assert all(o.outputs[0].finish_reason == "length" for o in outs)
    stats = engine.get_stats()
    assert stats.generation_tokens_total == sum(max_tokens)
    assert stats.prompt_tokens_total == sum(len(p) for p in prompts)
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    engine.block_manager.check_invariants()


def test_small_kv_pool_preempts_and_still_matches(make_engine, greedy_case, greedy_reference):
    prompts, max_tokens = greedy_case
    prompts, max_tokens, ref = prompts[:60], max_tokens[:60], greedy_reference[:60]
    # 24 blocks x 16 = 384 tokens for up to 32 sequences of up to 70 tokens: must preempt.
    engine = make_engine(max_num_seqs=32, max_num_batched_tokens=256, num_kv_blocks=24, max_model_len=384)
    outs = run_all(engine, prompts, greedy_params(max_tokens))
    assert engine.get_stats().num_preemptions > 0
    assert [o.outputs[0].token_ids for o in outs] == ref
    assert engine.block_manager.num_free_blocks == 24


def test_prefix_cache_hits_and_same_outputs(make_engine, tiny_moe):
    rng = random.Random(1)
    shared = [rng.randrange(3, 500) for _ in range(40)]
    prompts = [shared + [rng.randrange(3, 500) for _ in range(rng.randint(1, 20))] for _ in range(8)]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    cold = make_engine(enable_prefix_caching=False)
    want = [o.outputs[0].token_ids for o in run_all(cold, prompts, params)]
    assert cold.get_stats().prefix_cache_hits == 0

    warm = make_engine()
    first = run_all(warm, prompts[:1], params)  # fills the cache with the shared prefix
    assert first[0].num_cached_tokens == 0
    rest = run_all(warm, prompts[1:], params)
    stats = warm.get_stats()
    assert stats.prefix_cache_hits >= 7 * 32  # the shared 40 tokens hold two full 16-token blocks
    assert all(o.num_cached_tokens >= 32 for o in rest)
    assert [o.outputs[0].token_ids for o in first + rest] == want
    # Same prompt again: everything but the last token is served from cache.
    again = run_all(warm, [prompts[3]], params)
    assert again[0].num_cached_tokens == (len(prompts[3]) - 1) // 16 * 16
    assert again[0].outputs[0].token_ids == want[3]


def test_aborts_free_every_block(make_engine):
    engine = make_engine(max_num_seqs=8, num_kv_blocks=64)
    rng = random.Random(2)
    for i, p in enumerate(random_prompts(20, 500, rng, 5, 40)):
        engine.add_request(f"r{i}", p, SamplingParams(max_tokens=30, ignore_eos=True, n=1 + i % 3))
    seen_finished = set()
    for step in range(6):
        for out in engine.step():
            if out.finished:
                seen_finished.add(out.request_id)
        if step == 2:
            engine.abort_request(["r0", "r5", "nope"])  # running, waiting and unknown ids
    engine.abort_request(f"r{i}" for i in range(20))
    assert not engine.has_unfinished_requests()
    assert engine.step() == []
    bm = engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks
    bm.check_invariants()
    stats = engine.get_stats()
    assert stats.num_running == stats.num_waiting == 0 and stats.kv_cache_usage == 0.0


def test_seeded_sampling_reproducible_with_other_batch_mates(make_engine):
    rng = random.Random(3)
    target = [rng.randrange(3, 500) for _ in range(12)]
    seeded = SamplingParams(temperature=1.0, top_p=0.95, top_k=50, seed=1234, max_tokens=16, ignore_eos=True)
    noisy = SamplingParams(temperature=1.3, max_tokens=16, ignore_eos=True)
    e1 = make_engine()
    a = run_all(e1, [target], seeded)[0].outputs[0].token_ids
    e2 = make_engine()
    mates = random_prompts(5, 500, rng, 3, 30)
    b = run_all(e2, mates[:2] + [target] + mates[2:], [noisy, noisy, seeded, noisy, noisy, noisy])[2]
    assert b.outputs[0].token_ids == a
    c = run_all(e2, [target], SamplingParams(temperature=1.0, top_p=0.95, top_k=50, seed=99, max_tokens=16,
                                              ignore_eos=True))[0]
    assert c.outputs[0].token_ids != a  # another seed, another sample


def test_n_samples_share_the_prompt(make_engine):
    engine = make_engine()
    prompt = list(range(10, 60))
    out = run_all(engine, [prompt], SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=12, ignore_eos=True))[0]
    assert [c.index for c in out.outputs] == [0, 1, 2, 3]
    assert all(len(c.token_ids) == 12 for c in out.outputs)
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1  # seeds 7, 8, 9, 10 differ
    # Siblings wait for the first one's prompt blocks instead of recomputing them.
    assert engine.get_stats().prefix_cache_hits >= 3 * 48
    greedy = run_all(engine, [prompt], SamplingParams(n=3, temperature=0.0, max_tokens=6, ignore_eos=True))[0]
    assert len({tuple(c.token_ids) for c in greedy.outputs}) == 1


def test_logprobs_and_cumulative(make_engine):
    engine = make_engine()
    out = run_all(engine, [[5, 6, 7, 8]], SamplingParams(temperature=0.0, max_tokens=5, logprobs=3, ignore_eos=True))
    c = out[0].outputs[0]
    assert len(c.logprobs) == 5
    total = 0.0
    for tok, lp in zip(c.token_ids, c.logprobs):
        assert tok in lp and len(lp) == 3  # greedy: the sampled token is the top-1
        assert max(lp, key=lp.get) == tok and all(v <= 0 for v in lp.values())
        total += lp[tok]
    assert c.cumulative_logprob == pytest.approx(total)
    plain = run_all(engine, [[5, 6, 7, 8]], SamplingParams(temperature=0.0, max_tokens=2))[0].outputs[0]
    assert plain.logprobs is None and plain.cumulative_logprob is None


def test_stop_strings_cut_exactly_where_they_begin(make_engine):
    engine = make_engine()
    tok = engine.tokenizer
    prompt = [30, 31, 32, 33]
    free = run_all(engine, [prompt], SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True))[0].outputs[0]
    text = free.text
    assert text == tok.decode(free.token_ids, skip_special_tokens=True) and len(text) > 12
    start = next(i for i in range(5, len(text) - 3) if "\ufffd" not in text[i : i + 3])
    stop = text[start : start + 3]
    cut = text.index(stop)
    out = run_all(engine, [prompt], SamplingParams(temperature=0.0, max_tokens=24, stop=[stop, "\x00never"]))[0]
    c = out.outputs[0]
    assert (c.text, c.finish_reason, c.stop_reason) == (text[:cut], "stop", stop)
    # The token that completed the stop string is the last one kept.
    assert c.token_ids == free.token_ids[: len(c.token_ids)]
    assert stop in tok.decode(c.token_ids, skip_special_tokens=True)
    assert stop not in tok.decode(c.token_ids[:-1], skip_special_tokens=True)
    inc = run_all(engine, [prompt], SamplingParams(temperature=0.0, max_tokens=24, stop=stop,
                                                   include_stop_str_in_output=True))[0].outputs[0]
    assert inc.text == text[: cut + len(stop)] and inc.token_ids == c.token_ids
    # Streaming: the text a client sees only ever grows and never shows a stop-string prefix
    # that is taken back later.
    engine.add_request("s", prompt, SamplingParams(temperature=0.0, max_tokens=24, stop=stop))
    seen = []
    while engine.has_unfinished_requests():
        seen += [o.outputs[0].text for o in engine.step()]
    assert all(b.startswith(a) for a, b in zip(seen, seen[1:])) and seen[-1] == text[:cut]


def test_min_tokens_and_stop_token_ids(make_engine):
    engine = make_engine()
    prompt = [9, 10, 11]
    free = run_all(engine, [prompt], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))[0]
    toks = free.outputs[0].token_ids
    # Stop on the greedy path's 3rd token: it ends there, with that id as the stop reason...
    stop_id = toks[2]
    first = toks.index(stop_id)
    out = run_all(engine, [prompt], SamplingParams(temperature=0.0, max_tokens=12, stop_token_ids=[stop_id]))[0]
    c = out.outputs[0]
    assert c.token_ids == toks[: first + 1] and c.finish_reason == "stop" and c.stop_reason == stop_id
    # ...but with min_tokens past it, the stop id is banned until then.
    out = run_all(engine, [prompt], SamplingParams(temperature=0.0, max_tokens=12, stop_token_ids=[stop_id],
                                                   min_tokens=first + 2))[0]
    c = out.outputs[0]
    assert len(c.token_ids) >= first + 2 and stop_id not in c.token_ids[: first + 2]


def test_penalties_push_away_from_repeats(make_engine):
    engine = make_engine()
    prompt = [20, 21, 22, 23]
    base = run_all(engine, [prompt], SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True))[0]
    pen = run_all(engine, [prompt], SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True,
                                                   frequency_penalty=2.0, presence_penalty=2.0))[0]
    rep = run_all(engine, [prompt], SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True,
                                                   repetition_penalty=2.0))[0]
    distinct = lambda o: len(set(o.outputs[0].token_ids))  # noqa: E731
    assert distinct(pen) > distinct(base)
    assert distinct(rep) > distinct(base)
    # A negative presence penalty rewards repeats.
    neg = run_all(engine, [prompt], SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True,
                                                   presence_penalty=-2.0))[0]
    assert distinct(neg) <= distinct(base)


def test_add_request_rejects_bad_input(make_engine):
    engine = make_engine(max_model_len=64)
    with pytest.raises(ValueError, match="empty"):
        engine.add_request("a", [], SamplingParams())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.add_request("b", [1, 10**6], SamplingParams())
    with pytest.raises(ValueError, match="exceeds the context length 64"):
        engine.add_request("c", list(range(60)), SamplingParams(max_tokens=5))
    engine.add_request("d", [1, 2], SamplingParams(max_tokens=None))
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("d", [1, 2], SamplingParams())
    final = None
    for _ in range(100):
        for out in engine.step():
            final = out if out.finished else None
        if not engine.has_unfinished_requests():
            break
    c = final.outputs[0]
    # max_tokens=None runs to the context length (or an EOS before it).
    assert (c.finish_reason, len(c.token_ids)) == ("length", 62) or c.finish_reason == "stop"


def test_moe_bucket_warm_up_covers_the_step_budget_and_leaves_outputs_alone(make_engine):
    """The start-up MoE warm-up (run on GPUs so Triton compiles before serving) launches every
    token bucket up to max_num_batched_tokens, and touches no state a request sees."""
    engine = make_engine(max_num_batched_tokens=300)
    prompt = list(range(20, 70))
    greedy = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    before = run_all(engine, [prompt], greedy)[0].outputs[0].token_ids
    sizes = engine.runner.warm_up_moe_buckets()
    assert sizes == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert run_all(engine, [prompt], greedy)[0].outputs[0].token_ids == before


def test_step_warm_up_serves_its_shapes_and_leaves_no_trace(make_engine, greedy_case, greedy_reference):
    """The start-up warm-up requests (run on GPUs, so no user's TTFT pays a Triton compile) go
    through the real step path and leave nothing behind: no requests, no token counts, free
    blocks, and later outputs unchanged. Shapes that do not fit a small cache are skipped."""
    from tenk.engine.llm_engine import WARM_UP_SHAPES

    prompts, max_tokens = greedy_case
    engine = make_engine(max_num_seqs=16, num_kv_blocks=512)
    free = engine.block_manager.num_free_blocks
    assert engine._warm_up_steps() == len(WARM_UP_SHAPES)
    assert not engine.requests and engine.block_manager.num_free_blocks == free
    stats = engine.get_stats()
    assert stats.prompt_tokens_total == 0 and stats.generation_tokens_total == 0
    outs = run_all(engine, prompts[:20], greedy_params(max_tokens[:20]))
    assert [o.outputs[0].token_ids for o in outs] == greedy_reference[:20]

    small = make_engine(num_kv_blocks=8)  # 128 tokens of cache: only the short shapes fit
    assert 0 < small._warm_up_steps() < len(WARM_UP_SHAPES) and not small.requests


def test_cudagraph_capture_sizes_follow_the_limit(tiny_moe):
    from tenk.engine.config import EngineConfig
    from tenk.engine.cuda_graphs import graph_batch_sizes
    from tenk.errors import ConfigError

    assert graph_batch_sizes(1024)[-1] == 512  # default limit
    sizes = graph_batch_sizes(1024, 1024)
    assert sizes[:5] == [1, 2, 4, 8, 16] and sizes[-1] == 1024 and all(b - a == 16 for a, b in zip(sizes[4:], sizes[5:]))
    assert graph_batch_sizes(100, 1024)[-1] == 100
    with pytest.raises(ConfigError, match="max_cudagraph_capture_size"):
        EngineConfig(model=tiny_moe, device="cpu", max_cudagraph_capture_size=0)


def test_mixed_graph_buckets_and_mode(tiny_moe):
    from tenk.engine.config import EngineConfig
    from tenk.engine.mixed_graphs import mixed_graph_sizes
    from tenk.errors import ConfigError

    sizes = mixed_graph_sizes(8192)
    assert sizes[:8] == list(range(16, 129, 16)) and sizes[-1] == 8192 and len(sizes) == 32
    assert all(b - a <= max(16, a // 4) for a, b in zip(sizes, sizes[1:]))  # a step pads under a quarter
    assert mixed_graph_sizes(100) == [16, 32, 48, 64, 80, 96, 100] and mixed_graph_sizes(5) == [5]
    with pytest.raises(ConfigError, match="cudagraph_mode"):
        EngineConfig(model=tiny_moe, device="cpu", cudagraph_mode="piecewise")


def _attach_padded_runner(engine):
    """The mixed-step graph runner's padding, replayed eagerly (no graphs on a CPU): every step
    that is not a decode-only one runs padded to its token bucket. Counts its runs."""
    from tenk.engine.mixed_graphs import MixedGraphRunner

    runner = engine.runner
    cfg = runner.config
    mixed = MixedGraphRunner(runner.model, cfg.max_num_seqs, cfg.max_num_batched_tokens, cfg.max_model_len,
                             runner.block_size, runner.model_config.hidden_size, runner.dtype, runner.device,
                             capture_graphs=False)
    calls = []
    run = mixed.run
    mixed.run = lambda batch: calls.append((batch.num_tokens, mixed.bucket(batch.num_tokens))) or run(batch)
    runner.mixed_runner = mixed
    return calls


def test_padded_mixed_steps_match_alone(make_engine, greedy_case, greedy_reference):
    # Chunked prefills mixed with decodes, every step padded to a bucket (16-token steps up to 128,
    # then quarter octaves): the padding sequence and rows never change a live sequence's tokens.
    prompts, max_tokens = greedy_case
    prompts, max_tokens, ref = prompts[:60], max_tokens[:60], greedy_reference[:60]
    engine = make_engine(max_num_seqs=24, max_num_batched_tokens=200, num_kv_blocks=512)
    calls = _attach_padded_runner(engine)
    outs = run_all(engine, prompts, greedy_params(max_tokens))
    assert [o.outputs[0].token_ids for o in outs] == ref
    assert len(calls) > 10 and any(bucket > n for n, bucket in calls) and any(n > 128 for n, _ in calls)
    assert engine.block_manager.num_free_blocks == 512
