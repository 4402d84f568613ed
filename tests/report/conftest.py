"""Fixtures for the report tests: real bench results, measured by `tenk.bench.run_sweep` against
the fake server (real HTTP on 127.0.0.1, separate processes), and the seed README's numbers
written in the same schema (seed_results.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tenk.bench import BenchConfig, run_sweep
from tenk.bench.fake_server import FakeServer, FakeServerConfig

# Two "configurations" that differ the way a slower and a faster engine do: the decode step
# (chunk_delay) of the second is half as long, so its throughput is about twice as high.
FAKE_CONFIGS = (
    ("slow-step", 0.004, {"name": "BF16 DP=1", "quantization": "BF16", "layout": "DP=1"}),
    ("fast-step", 0.002, {"name": "NVFP4 DP=1", "quantization": "NVFP4", "layout": "DP=1"}),
)
LAYOUT = {  # what `tenk demo` attaches: one device's split (bytes), FORMAT.md
    "gpus": 1, "tp": 1, "dp": 1, "gpu_name": "fake GPU", "device": "cuda", "gpu_memory_bytes": 80 << 30,
    "weights_bytes_per_gpu": 17 << 30, "kv_bytes_per_gpu": 50 << 30, "reserve_bytes_per_gpu": 5 << 30,
    "kv_tokens": 545_000,
}  # fmt: skip


@pytest.fixture(scope="session")
def bench_results(tmp_path_factory) -> list[Path]:
    """Two tenk.bench/1 files from real sweeps (c = 1, 4, 8); the second carries labels and a layout."""
    out = tmp_path_factory.mktemp("bench")
    paths = []
    for name, delay, labels in FAKE_CONFIGS:
        with FakeServer(FakeServerConfig(chunk_delay=delay, ttft_delay=0.01)) as url:
            path = out / f"{name}.json"
            run_sweep(BenchConfig(urls=[url], concurrency=(1, 4, 8), input_len=16, output_len=16, num_prompts=16,
                                  warmup=1, workers=1, scrape_metrics=False, out=str(path)))  # fmt: skip
        doc = json.loads(path.read_text())
        doc["config"]["labels"] = dict(labels)
        if name == "fast-step":
            doc["config"]["layout"] = dict(LAYOUT)
        path.write_text(json.dumps(doc))
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def report(bench_results, tmp_path_factory):
    """One drawn report of the two fake-server results (drawing takes a few seconds)."""
    from tenk.report import make_report

    return make_report(bench_results, tmp_path_factory.mktemp("rep"))


@pytest.fixture
def results_copy(bench_results, tmp_path) -> list[Path]:
    """The session's results, copied so a test may edit them."""
    return [Path(shutil.copy(p, tmp_path / p.name)) for p in bench_results]


@pytest.fixture(scope="session")
def seed_results(tmp_path_factory) -> list[Path]:
    from tests.report.seed_results import write_seed_results

    return write_seed_results(tmp_path_factory.mktemp("seed"))
