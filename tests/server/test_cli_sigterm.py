"""`tenk serve` as users run it: it logs its URL when ready, and on SIGTERM stops accepting,
lets short requests finish, aborts the ones still running after the grace period (their
clients get an error event and [DONE]), stops the engine process and exits 0; the same with
two API processes (--api-server-count 2), where the parent passes SIGTERM on to both."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.server.conftest import ENGINE_ENV, wait_for

GRACE_S = 3


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(x) for x in f.read().split()]
    return out


def _stream(url: str, body: dict, sink: dict, key: str) -> None:
    lines = []
    try:
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                    sink[key + "_first"] = True
    finally:
        sink[key] = lines


@pytest.mark.parametrize("api_servers", [1, 2])
def test_sigterm_drains_and_exits_zero(tiny_model_dir, api_servers):
    cmd = [sys.executable, "-m", "tenk.cli.main", "serve", tiny_model_dir, "--port", "0", "--device", "cpu",
           "--dtype", "float32", "--max-model-len", "4096", "--num-kv-blocks", "512", "--served-model-name", "cli",
           "--graceful-shutdown-timeout", str(GRACE_S), "--api-server-count", str(api_servers)]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, **ENGINE_ENV})
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()
    try:
        assert wait_for(lambda: any("tenk is serving" in line for line in log) or proc.poll() is not None, 120)
        line = next(line for line in log if "tenk is serving" in line)
        url = re.search(r"at (http://[\d.]+:\d+)", line).group(1)
        engine_pids = _children(proc.pid)
        assert len(engine_pids) >= 1 + api_servers * (api_servers > 1), "no engine process"  # (plus multiprocessing's resource tracker)
        assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "cli"

        got: dict = {}
        short = {"model": "cli", "prompt": "short", "max_tokens": 8, "stream": True, "ignore_eos": True}
        long = {"model": "cli", "prompt": "long", "max_tokens": 4000, "stream": True, "ignore_eos": True}
        threads = [threading.Thread(target=_stream, args=(url, short, got, "short")),
                   threading.Thread(target=_stream, args=(url, long, got, "long"))]  # fmt: skip
        for t in threads:
            t.start()
        assert wait_for(lambda: "short_first" in got and "long_first" in got, timeout=30)

        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        host, port = url.removeprefix("http://").split(":")

        def refused() -> bool:
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return False
            except OSError:
                return True

        assert wait_for(refused, timeout=5), "still accepting connections after SIGTERM"
        rc = proc.wait(timeout=GRACE_S + 30)
        elapsed = time.monotonic() - t0
        for t in threads:
            t.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, "".join(log[-30:])
    # The short request finished normally; the long one was cut at the grace period, told why.
    assert got["short"][-1] == "data: [DONE]" and '"finish_reason":"length"' in got["short"][-2]
    assert got["long"][-1] == "data: [DONE]" and "shutting down" in got["long"][-2]
    assert elapsed < GRACE_S + 15
    gone = wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in engine_pids), timeout=5)
    assert gone, "the engine process outlived the server"
    print(f"\nexit 0 {elapsed:.1f} s after SIGTERM (grace {GRACE_S} s)")
