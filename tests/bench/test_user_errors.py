"""Mistakes a user can make end in one clear sentence (TenkError), not a traceback."""

import socket

import pytest

from tenk.bench import BenchConfig, LengthRange, SLO, run_sweep
from tenk.errors import ConfigError, TenkError


def test_bad_flags_are_config_errors():
    with pytest.raises(ConfigError, match="http://"):
        BenchConfig(urls=["localhost:8000"])
    with pytest.raises(ConfigError, match="without /v1"):
        BenchConfig(urls=["http://h:8000/v1"])
    with pytest.raises(ConfigError, match="ids works only"):
        BenchConfig(urls=["http://h"], endpoint="chat", prompt_format="ids")
    with pytest.raises(ConfigError, match="--slo"):
        SLO.parse("latency=3")
    assert SLO.parse("ttft=500ms,tpot=0.05") == SLO(ttft=0.5, tpot=0.05)
    assert LengthRange.parse("200:300") == LengthRange(200, 300)
    assert LengthRange.parse("100", range_ratio=0.1) == LengthRange(90, 110)
    assert BenchConfig(urls=["http://h"], concurrency=(1, 8)).levels()[1]["num_prompts"] == 64
    short = BenchConfig(urls=["http://h"], concurrency=(1, 8, 100), prompts_per_concurrency=1.5, min_prompts=10)
    assert [lv["num_prompts"] for lv in short.levels()] == [10, 12, 150]
    with pytest.raises(ConfigError, match="--min-prompts"):
        BenchConfig(urls=["http://h"], min_prompts=0)
    with pytest.raises(ConfigError, match="--prompts-per-concurrency must be > 0"):
        BenchConfig(urls=["http://h"], prompts_per_concurrency=0)


def test_unreachable_server_is_one_sentence():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens on this port now
    with pytest.raises(TenkError, match="cannot reach"):
        run_sweep(BenchConfig(urls=[f"http://127.0.0.1:{port}"], model="m", concurrency=(1,), workers=1))


def test_every_warmup_failing_stops_early(fake_server):
    url, _ = fake_server(drop_fraction=1.0, drop_mode="500")
    with pytest.raises(TenkError, match="warm-up"):
        run_sweep(BenchConfig(urls=[url], concurrency=(1,), input_len=4, output_len=4, workers=1, warmup=2))
