"""`tenk bench --self-test`: benchmark the built-in fake server (fake_server.py), which streams
instantly, so the result is the client's own ceiling in output tok/s on this machine. On a
machine with few cores the fake server competes with the client for them, so the number is a
lower bound; `server_procs` spreads the server over several processes."""

from __future__ import annotations

from dataclasses import dataclass

from tenk.bench.config import BenchConfig, LengthRange, default_workers
from tenk.bench.fake_server import FakeServer, FakeServerConfig
from tenk.bench.sweep import BenchResult, run_sweep


@dataclass(slots=True)
class SelfTestConfig:
    workers: int = 0  # 0: default_workers()
    server_procs: int = 1
    tokens_per_chunk: int = 1
    concurrency: tuple[int, ...] = (16, 64, 256)
    input_len: int = 32
    output_len: int = 256
    num_prompts: int | None = None
    endpoint: str = "completions"
    out: str | None = None


def self_test_config(st: SelfTestConfig, url: str) -> BenchConfig:
    return BenchConfig(
        urls=[url],
        model="fake-model",
        endpoint=st.endpoint,
        input_len=LengthRange(st.input_len, st.input_len),
        output_len=LengthRange(st.output_len, st.output_len),
        concurrency=st.concurrency,
        num_prompts=st.num_prompts,
        workers=st.workers or default_workers(),
        warmup=4,
        out=st.out,
    )


def run_self_test(st: SelfTestConfig | None = None, **bench_kwargs) -> tuple[BenchResult, dict]:
    """Returns (result, fake server stats). The ceiling is result.peak().output_throughput."""
    st = st or SelfTestConfig()
    server = FakeServer(FakeServerConfig(tokens_per_chunk=st.tokens_per_chunk, procs=st.server_procs))
    with server as url:
        result = run_sweep(self_test_config(st, url), **bench_kwargs)
        stats = server.stats()
    return result, stats
