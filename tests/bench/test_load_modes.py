"""Poisson request-rate mode, several URLs, JSONL workloads, chat, no streaming, level timeout."""

import json

from tenk.bench import BenchConfig, run_sweep


def test_poisson_issues_the_requested_number(fake_server):
    url, server = fake_server()
    cfg = BenchConfig(urls=[url], request_rate=150.0, num_prompts=60, input_len=8, output_len=16, warmup=0, workers=1)
    result = run_sweep(cfg)
    (lv,) = result.levels
    assert lv.request_rate == 150.0 and lv.completed == 60 and lv.failed == 0
    assert server.stats()["requests"] == 60
    # 60 Poisson arrivals at 150/s take ~0.4 s; they must not all have been fired at once
    assert lv.duration_s > 0.15


def test_poisson_over_two_workers(fake_server):
    url, server = fake_server()
    cfg = BenchConfig(urls=[url], request_rate=200.0, num_prompts=40, max_concurrency=4, input_len=8,
                      output_len=16, warmup=0, workers=2)
    (lv,) = run_sweep(cfg).levels
    assert lv.completed == 40 and server.stats()["requests"] == 40


def test_two_urls_share_the_load(fake_server):
    (u1, s1), (u2, s2) = fake_server(), fake_server()
    for balance in ("least", "rr"):
        before = s1.stats()["requests"], s2.stats()["requests"]
        cfg = BenchConfig(urls=[u1, u2], concurrency=(8,), num_prompts=64, input_len=8, output_len=16,
                          warmup=0, workers=1, balance=balance)
        (lv,) = run_sweep(cfg).levels
        n1, n2 = s1.stats()["requests"] - before[0], s2.stats()["requests"] - before[1]
        assert lv.completed == 64 and n1 + n2 == 64
        assert min(n1, n2) >= 16, (balance, n1, n2)


def test_jsonl_chat_without_streaming(fake_server, tmp_path):
    url, server = fake_server()
    path = tmp_path / "p.jsonl"
    lines = [{"messages": [{"role": "user", "content": "hello t1 t2"}], "max_tokens": 5}, {"prompt": "t3 t4 t5"}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    for stream in (True, False):
        cfg = BenchConfig(urls=[url], endpoint="chat", dataset="jsonl", dataset_path=str(path), concurrency=(2,),
                          num_prompts=10, output_len=7, stream=stream, warmup=0, workers=1)
        (lv,) = run_sweep(cfg).levels
        assert lv.completed == 10 and lv.output_tokens == 5 * 5 + 5 * 7
        assert (lv.ttft_ms.n == 10) == stream


def test_level_timeout_cuts_off_and_counts_unfinished(fake_server):
    url, _ = fake_server(chunk_delay=0.05)  # 100 tokens take 5 s per request
    cfg = BenchConfig(urls=[url], concurrency=(4,), num_prompts=8, input_len=8, output_len=100, warmup=0,
                      workers=1, level_timeout=0.5)
    result = run_sweep(cfg)
    (lv,) = result.levels
    assert lv.timed_out and not lv.interrupted and not result.interrupted
    assert lv.unfinished == 4 and lv.completed == 0 and lv.failed == 0
