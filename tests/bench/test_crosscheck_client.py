"""benchmarks/crosscheck_client.py: finding an already running server's process by its port, and
the guidellm client end to end against the fake server (only where guidellm is installed: it is
not a tenk dependency; benchmarks/crosscheck_client.py's docstring says how to install it)."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "crosscheck_client.py"


@pytest.fixture(scope="module")
def cc():
    spec = importlib.util.spec_from_file_location("crosscheck_client", _PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["crosscheck_client"] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("crosscheck_client", None)


def test_listening_pid_finds_the_listener(cc):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert cc.listening_pid(f"http://127.0.0.1:{port}") == os.getpid()
    assert cc.listening_pid(f"http://127.0.0.1:{port}/") is None  # closed: nobody listens


@pytest.mark.skipif(importlib.util.find_spec("guidellm") is None, reason="guidellm is not installed")
def test_guidellm_client_runs_the_same_workload(cc, fake_server, bpe_tokenizer_dir, tmp_path):
    url, _ = fake_server(tokenizer=bpe_tokenizer_dir, model="tiny")
    cfg = cc.CrossCheckConfig(clients=("tenk", "guidellm"), input_len=24, output_len=12, api_key="k")
    r = cc.run_guidellm(cfg, url, bpe_tokenizer_dir, c=3, n=9, seed=5, work=tmp_path)
    assert (r["completed"], r["failed"], r["output_tokens"]) == (9, 0, 9 * 12)
    assert r["prompt_tokens_each"] == [24]  # as the server counted them, with the same tokenizer
    assert r["request_body"]["max_tokens"] == 12 and r["request_body"]["ignore_eos"] is True
    assert r["request_body"]["temperature"] == 0.0
    assert r["output_tok_s"] > 0 and 0 < r["ttft_mean_ms"] < r["e2e_mean_ms"] and r["tpot_mean_ms"] > 0
    assert 0 < r["effective_concurrency"] <= 3
    assert list(tmp_path.iterdir()) == []  # its report is read, then removed
