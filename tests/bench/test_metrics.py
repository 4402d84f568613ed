"""The metric definitions of metrics.py on hand-made timelines, where the answer is known."""

from array import array

import pytest

from tenk.bench.config import SLO
from tenk.bench.metrics import summarize
from tenk.bench.records import RequestRecord


def rec(i, sent, first, end, n_tokens, ok=True, prompt=10):
    # n_tokens chunks, one token each, evenly from `first` to `end`
    step = (end - first) / (n_tokens - 1)
    r = RequestRecord(index=i, url="u", input_len=prompt, sent=sent, end=end, ok=ok)
    r.chunk_times = array("d", [first + k * step for k in range(n_tokens)])
    r.prompt_tokens, r.completion_tokens, r.client_tokens = prompt, n_tokens, n_tokens
    if not ok:
        r.error = "HTTP 500"
    return r


def test_closed_loop_window_and_latencies():
    # 2 slots, 4 requests of 11 tokens; each request: 1 s to first token, then 0.1 s per token
    recs = [
        rec(0, 100.0, 101.0, 102.0, 11),
        rec(1, 100.0, 101.5, 102.5, 11),  # the first wave is fully decoding at t=101.5
        rec(2, 102.0, 103.0, 104.0, 11),  # last send at 102.5, first completion after it: 104.0
        rec(3, 102.5, 103.5, 104.5, 11),
    ]
    lv = summarize(recs, concurrency=2, request_rate=None, num_prompts=4, slo=SLO(ttft=1.2, tpot=0.2))
    assert lv.completed == 4 and lv.duration_s == pytest.approx(4.5)
    assert lv.output_tokens == 44 and lv.output_throughput == pytest.approx(44 / 4.5)
    assert lv.total_throughput == pytest.approx((44 + 40) / 4.5)
    s = lv.steady
    assert s["start_s"] == pytest.approx(1.5) and s["end_s"] == pytest.approx(4.0)
    # chunks inside [101.5, 104.0]: r0 6 (101.5..102.0), r1 11, r2 11, r3 6 (103.5..104.0)
    assert s["output_throughput"] == pytest.approx(34 / 2.5)
    assert lv.ttft_ms.p50 == pytest.approx(1000.0) and lv.ttft_ms.max == pytest.approx(1500.0)
    assert lv.tpot_ms.mean == pytest.approx(100.0)
    assert lv.itl_ms.mean == pytest.approx(100.0) and lv.itl_ms.n == 40
    assert lv.goodput["good_requests"] == 3  # r1's ttft of 1.5 s misses the 1.2 s bound
    assert lv.goodput["request_goodput"] == pytest.approx(3 / 4.5)


def test_failures_stay_out_of_latency_and_tokens():
    good = [rec(i, 1.0, 1.1, 2.0, 10) for i in range(3)]
    bad = rec(3, 1.0, 6.0, 10.0, 10, ok=False)
    lv = summarize(good + [bad], concurrency=4, request_rate=None, num_prompts=4)
    assert lv.failed == 1 and lv.completed == 3
    assert lv.errors == [{"error": "HTTP 500", "count": 1}]
    assert lv.ttft_ms.max == pytest.approx(100.0) and lv.e2e_ms.n == 3
    assert lv.output_tokens == 30
    assert lv.duration_s == pytest.approx(9.0)  # the failed request still occupied the server
    assert lv.steady is None  # one wave: no window where finished slots were refilled


def test_single_wave_has_no_steady_window_but_rate_mode_has():
    recs = [rec(i, 1 + i * 0.5, 1 + i * 0.5 + 0.2, 1 + i * 0.5 + 1.0, 5) for i in range(6)]
    lv = summarize(recs, concurrency=None, request_rate=2.0, num_prompts=6)
    assert lv.steady["start_s"] == pytest.approx(0.2) and lv.steady["end_s"] == pytest.approx(2.5)
