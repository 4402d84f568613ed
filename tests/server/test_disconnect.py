"""A client that goes away mid-request gets its request aborted: the engine stops generating
for it and gives its KV blocks back."""

from __future__ import annotations

import json
import socket
import time

from tests.server.conftest import API_KEY, MAX_MODEL_LEN, MODEL_NAME, metric, wait_for

LONG = MAX_MODEL_LEN - 16  # tokens the request would generate if nobody aborted it


def _raw_post(url: str, path: str, body: dict) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data
    )
    return sock


def _idle(http) -> bool:
    return metric(http, "vllm:num_requests_running") == 0 and metric(http, "vllm:kv_cache_usage_perc") == 0.0


def _check_aborted(server, http, body: dict, read_first: bool) -> None:
    assert wait_for(lambda: _idle(http), timeout=10)
    gen0 = metric(http, "vllm:generation_tokens_total")
    aborted0 = _aborted(http)
    sock = _raw_post(server.url, "/v1/completions", body)
    # Wait until the engine is generating for it (and, streaming, until a chunk arrived).
    assert wait_for(lambda: metric(http, "vllm:num_requests_running") == 1, timeout=20)
    if read_first:
        assert b"data: " in sock.recv(65536)
    sock.close()
    t0 = time.monotonic()
    assert wait_for(lambda: _idle(http), timeout=10), "the request kept running after its client left"
    print(f"\naborted {time.monotonic() - t0:.2f} s after the client closed")
    assert metric(http, "vllm:generation_tokens_total") - gen0 < LONG, "it generated to the end instead"
    assert _aborted(http) == aborted0 + 1


def _aborted(http) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("vllm:request_success_total{") and 'finished_reason="abort"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_streaming_client_disconnect_aborts(server, http):
    body = {"model": MODEL_NAME, "prompt": "abort me", "max_tokens": LONG, "stream": True, "ignore_eos": True}
    _check_aborted(server, http, body, read_first=True)


def test_non_streaming_client_disconnect_aborts(server, http):
    body = {"model": MODEL_NAME, "prompt": "abort me too", "max_tokens": LONG, "ignore_eos": True}
    _check_aborted(server, http, body, read_first=False)
