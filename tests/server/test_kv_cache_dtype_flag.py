"""`tenk serve --kv-cache-dtype`: fp8 reaches the engine (its start-up log names the cache dtype,
and it serves), and a value it does not know is one line on stderr before anything starts."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import httpx
from typer.testing import CliRunner

from tenk.cli.main import app
from tests.server.conftest import ENGINE_ENV, wait_for


def test_bogus_kv_cache_dtype_is_one_line(tmp_path):
    res = CliRunner().invoke(app, ["serve", str(tmp_path), "--device", "cpu", "--kv-cache-dtype", "bogus"])
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines == ["error: --kv-cache-dtype must be one of auto, fp8, fp8_e4m3, got 'bogus'"], res.output


def test_serve_with_fp8_kv_cache(tiny_model_dir):
    cmd = [sys.executable, "-m", "tenk.cli.main", "serve", tiny_model_dir, "--port", "0", "--device", "cpu",
           "--dtype", "float32", "--max-model-len", "256", "--num-kv-blocks", "64", "--kv-cache-dtype", "fp8"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, **ENGINE_ENV})
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()
    try:
        assert wait_for(lambda: any("tenk is serving" in line for line in log) or proc.poll() is not None, 120), log
        assert any("KV cache: 1024 tokens in float8_e4m3fn" in line for line in log), "".join(log)
        url = re.search(r"at (http://[\d.]+:\d+)", next(line for line in log if "tenk is serving" in line)).group(1)
        body = {"model": tiny_model_dir, "prompt": "hello", "max_tokens": 8, "ignore_eos": True}
        r = httpx.post(url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 8
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_bogus_cudagraph_mode_is_one_line(tmp_path):
    res = CliRunner().invoke(app, ["serve", str(tmp_path), "--device", "cpu", "--cudagraph-mode", "piecewise"])
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines == ["error: --cudagraph-mode must be one of full, full_decode_only, got 'piecewise'"], res.output
