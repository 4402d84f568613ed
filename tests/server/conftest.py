"""A real tenk server on 127.0.0.1 over a tiny random Qwen3-MoE checkpoint (CPU, fp32).

The checkpoint comes from `tenk random-checkpoint tiny-moe` (random weights, tenk's byte-level
tokenizer with a chat template). One server is shared by the whole tests/server session;
tests that kill or stop a server start their own."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

API_KEY = "test-key"
MODEL_NAME = "tiny"
MAX_MODEL_LEN = 256
ENGINE = dict(device="cpu", dtype="float32", max_model_len=MAX_MODEL_LEN, num_kv_blocks=2048, max_num_seqs=256)
# One torch thread: on a small shared CPU, the tiny model's matmuls are too small to split, and
# spinning OpenMP threads that compete with the API process and the test client made steps 3-10x
# slower (measured: 1,024 x 8 tokens took 4.6-17.5 s of engine CPU with 2 threads, 1.2 s with 1).
ENGINE_ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tiny-moe")
    subprocess.run(
        [sys.executable, "-m", "tenk.cli.main", "random-checkpoint", "tiny-moe", str(path), "--dtype", "fp32",
         "--force"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return str(path)


def start_server(model_dir: str, **kw):
    from tenk.server import ServerArgs, launch

    kw.setdefault("engine", dict(ENGINE))
    kw.setdefault("engine_env", dict(ENGINE_ENV))
    return launch(ServerArgs(model=model_dir, port=0, **kw))


@pytest.fixture(scope="session")
def server(tiny_model_dir):
    handle = start_server(tiny_model_dir, api_key=API_KEY, served_model_name=[MODEL_NAME, "tiny-alias"])
    yield handle
    handle.stop()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        yield c


def metric(client: httpx.Client, name: str) -> float:
    """The value of one vLLM metric (summed over its label sets) from /metrics."""
    total, found = 0.0, False
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, f"{name} is not in /metrics"
    return total


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
