"""A server that drops 10% of connections: the bench reports exactly those failures and keeps
them out of the latency statistics."""

import pytest

from tenk.bench import BenchConfig, run_sweep


@pytest.mark.parametrize("mode", ["close", "mixed"])
def test_dropped_connections_are_counted_exactly(mode, fake_server, tmp_path):
    url, server = fake_server(drop_fraction=0.1, drop_mode=mode, seed=3)
    cfg = BenchConfig(urls=[url], concurrency=(4, 32), input_len=16, output_len=40, warmup=0, workers=1,
                      out=str(tmp_path / "r.json"), save_requests=True)
    result = run_sweep(cfg)
    stats = server.stats()
    failed = sum(lv.failed for lv in result.levels)
    assert stats["dropped"] > 0
    assert failed == stats["dropped"]
    assert sum(lv.completed for lv in result.levels) == stats["completed"]
    for lv in result.levels:
        assert lv.completed + lv.failed == lv.num_prompts and lv.unfinished == 0
        # latency statistics and token totals come from the successful requests only
        for s in (lv.ttft_ms, lv.tpot_ms, lv.e2e_ms):
            assert s.n == lv.completed
        assert lv.output_tokens == lv.completed * 40
        assert lv.errors and sum(e["count"] for e in lv.errors) == lv.failed
        rows = lv.requests
        assert sum(not r["ok"] for r in rows) == lv.failed
        assert all(r["ttft_ms"] is None for r in rows if not r["ok"])
    if mode == "mixed":
        texts = " ".join(e["error"] for lv in result.levels for e in lv.errors)
        assert "HTTP 500" in texts and "Payload" in texts
