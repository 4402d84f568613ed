"""The synthetic engine (TENK_SYNTHETIC_ENGINE) behind benchmarks/api_ceiling.py: one token per
running request per step, max_tokens honoured, aborts and stats like the real engine's."""

from __future__ import annotations

import time

import pytest

from tenk.engine.sampling_params import SamplingParams
from tenk.server.engine_core import build_engine
from tenk.server.synthetic_engine import ENV, SyntheticEngine


def test_built_from_the_environment_only(monkeypatch):
    monkeypatch.setenv(ENV, "2")
    engine = build_engine({"model": "tiny-moe", "load_format": "dummy", "max_num_seqs": 2, "max_model_len": 64})
    assert isinstance(engine, SyntheticEngine) and engine.step_s == pytest.approx(0.002)


def test_steps_tokens_text_aborts_and_stats(monkeypatch):
    monkeypatch.setenv(ENV, "1")
    engine = build_engine({"model": "tiny-moe", "load_format": "dummy", "max_num_seqs": 2, "max_model_len": 64})
    for rid, n in (("a", 3), ("b", 5), ("c", 2)):
        engine.add_request(rid, [1, 2, 3], SamplingParams(max_tokens=n, ignore_eos=True))
    t0 = time.monotonic()
    first = engine.step()
    assert [o.request_id for o in first] == ["a", "b"]  # max_num_seqs 2: c waits
    assert engine.get_stats().num_running == 2 and engine.get_stats().num_waiting == 1
    engine.abort_request(["b"])
    finished, text_len = {}, {"a": len(first[0].outputs[0].text)}
    assert text_len["a"] > 0  # the first token already has text
    while engine.has_unfinished_requests():
        for out in engine.step():
            assert len(out.outputs[0].token_ids) >= 1
            # every token adds text, as a real model's tokens do
            assert len(out.outputs[0].text) > text_len.get(out.request_id, 0)
            text_len[out.request_id] = len(out.outputs[0].text)
            if out.finished:
                finished[out.request_id] = out.outputs[0]
    assert sorted(finished) == ["a", "c"] and "b" not in finished
    assert len(finished["a"].token_ids) == 3 and finished["a"].finish_reason == "length"
    assert len(finished["c"].token_ids) == 2
    assert time.monotonic() - t0 >= 3 * 0.001  # three steps, each taking its step time
    stats = engine.get_stats()
    assert stats.generation_tokens_total == 2 + 2 + 2 and stats.prompt_tokens_total == 9  # a+b, a+c, a+c
