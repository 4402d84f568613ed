"""When the engine process dies, the API says so at once: /health and new requests answer 503,
and requests in flight end instead of hanging."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from tests.server.conftest import MAX_MODEL_LEN, start_server, wait_for


@pytest.fixture(scope="module")
def doomed(tiny_model_dir):
    handle = start_server(tiny_model_dir, served_model_name=["doomed"])
    yield handle
    handle.stop()


def test_engine_death_gives_503_promptly(doomed):
    http = httpx.Client(base_url=doomed.url, timeout=30)
    assert http.get("/health").status_code == 200
    # long enough that both are still running when the stats show it, even on a fast, idle machine
    body = {"model": "doomed", "prompt": "long", "max_tokens": MAX_MODEL_LEN - 16, "ignore_eos": True}
    in_flight: dict = {}

    def non_streaming():
        in_flight["plain"] = httpx.post(doomed.url + "/v1/completions", json=body, timeout=30)

    def streaming():
        lines = []
        with httpx.stream("POST", doomed.url + "/v1/completions", json={**body, "stream": True}, timeout=30) as r:
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                    in_flight["stream_started"] = True
        in_flight["stream"] = lines

    threads = [threading.Thread(target=non_streaming), threading.Thread(target=streaming)]
    for t in threads:
        t.start()
    # Both are running, and the stream has sent its first piece (so it fails mid-stream).
    assert wait_for(lambda: "stream_started" in in_flight and doomed.state.client.stats is not None
                    and doomed.state.client.stats.num_running == 2, timeout=20)  # fmt: skip
    assert "plain" not in in_flight

    os.kill(doomed.engine_pid, signal.SIGKILL)
    t0 = time.monotonic()
    assert wait_for(lambda: http.get("/health").status_code == 503, timeout=2)
    for t in threads:
        t.join(5)
    waited = time.monotonic() - t0
    assert not any(t.is_alive() for t in threads), "a request in flight hung after the engine died"
    assert in_flight["plain"].status_code == 503
    assert "engine" in in_flight["plain"].json()["error"]["message"]
    assert in_flight["stream"][-1] == "data: [DONE]"
    assert any('"error"' in line for line in in_flight["stream"])

    t1 = time.monotonic()
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 503 and time.monotonic() - t1 < 1.0
    assert r.json()["error"]["code"] == "engine_unavailable"
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "stream": True})
    assert r.status_code == 503
    assert http.get("/health").json()["error"]["message"].startswith("the engine process exited")
    print(f"\nin-flight requests ended {waited:.2f} s after the engine was killed")
