"""tenk bench: a benchmark client for OpenAI-compatible servers (tenk, vLLM, SGLang).

    from tenk.bench import BenchConfig, run_sweep
    result = run_sweep(BenchConfig(urls=["http://127.0.0.1:8000"], concurrency=(1, 8, 64)))
    print(result.summary())          # the seed-style lines, `<- peak` on the best
    result.peak().output_throughput  # tok/s

Inside a running event loop, `await run_sweep_async(config)`. Metric definitions are in
metrics.py; the JSON/CSV schema is in SCHEMA.md. Files, one job each:
config (BenchConfig), records (wire types), client (one request), worker (load loop of one
process), pool (processes), dataset + token_count (prompts of exact lengths), metrics, scrape
(/metrics), environment, output (JSON, CSV, summary), live (rich table), sweep (orchestration),
selftest, fake_server.
"""

from tenk.bench.config import SEED_CONCURRENCY, SLO, BenchConfig, LengthRange
from tenk.bench.metrics import LevelResult, Stats
from tenk.bench.output import SCHEMA
from tenk.bench.sweep import BenchResult, run_sweep, run_sweep_async

__all__ = [
    "SCHEMA",
    "SEED_CONCURRENCY",
    "SLO",
    "BenchConfig",
    "BenchResult",
    "LengthRange",
    "LevelResult",
    "Stats",
    "run_sweep",
    "run_sweep_async",
]
