"""Data parallelism behind one endpoint (--dp 2, CPU): the same greedy answers as --dp 1, both
replicas take their share of concurrent requests, aborts reach the replica that owns the
request, replicas can be tensor-parallel themselves, and a replica that dies fails only its own
requests (503, at once), is restarted, and serves again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time

import httpx
import pytest

from tests.server.conftest import (
    API_KEY,
    ENGINE,
    MAX_MODEL_LEN,
    MODEL_NAME,
    start_server,
    wait_for,
)

PROMPTS = [f"prompt {i}: the quick brown fox" + " jumps" * (i % 5) for i in range(12)]
GREEDY = {"max_tokens": 16, "temperature": 0, "ignore_eos": True}


def metric_by_engine(client: httpx.Client, name: str) -> dict[str, float]:
    """One metric from /metrics, summed per `engine` label."""
    out: dict[str, float] = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1 :].rsplit("} ", 1)
            engine = dict(kv.split("=", 1) for kv in labels.split(","))["engine"].strip('"')
            out[engine] = out.get(engine, 0.0) + float(value)
    return out


async def _completions(url: str, prompts: list[str], headers: dict | None = None, **body) -> list[dict]:
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=headers or {}) as c:
        rs = await asyncio.gather(*[c.post("/v1/completions", json={"prompt": p, **body}) for p in prompts])
    for r in rs:
        assert r.status_code == 200, r.text
    return [r.json() for r in rs]


@pytest.fixture(scope="module")
def dp2(tiny_model_dir):
    handle = start_server(tiny_model_dir, data_parallel_size=2, served_model_name=[MODEL_NAME])
    yield handle
    handle.stop()


def test_dp2_greedy_equals_dp1_and_balances(dp2, server):
    http = httpx.Client(base_url=dp2.url, timeout=30)
    assert http.get("/health").status_code == 200
    assert len(set(dp2.engine_pids)) == 2
    routed0 = metric_by_engine(http, "tenk:engine_requests_routed_total")
    assert set(routed0) == {"0", "1"}

    want = asyncio.run(_completions(server.url, PROMPTS, {"Authorization": f"Bearer {API_KEY}"}, **GREEDY))
    got = asyncio.run(_completions(dp2.url, PROMPTS, model=MODEL_NAME, **GREEDY))
    assert [r["choices"][0]["text"] for r in got] == [r["choices"][0]["text"] for r in want]
    assert all(r["usage"]["completion_tokens"] == 16 for r in got)

    # Concurrent load: 96 requests, 32 at a time; each replica takes its share.
    async def load():
        sem = asyncio.Semaphore(32)
        async with httpx.AsyncClient(base_url=dp2.url, timeout=60) as c:
            async def one(i):
                async with sem:
                    r = await c.post("/v1/completions", json={"prompt": f"load {i}", "max_tokens": 8,
                                                              "ignore_eos": True})  # fmt: skip
                    return r.status_code

            return await asyncio.gather(*[one(i) for i in range(96)])

    assert set(asyncio.run(load())) == {200}
    routed = metric_by_engine(http, "tenk:engine_requests_routed_total")
    done = metric_by_engine(http, "vllm:request_success_total")
    total = sum(routed.values()) - sum(routed0.values())
    assert total == 96 + len(PROMPTS)
    for e in ("0", "1"):
        share = (routed[e] - routed0[e]) / total
        assert share > 0.4, f"replica {e} took {share:.0%} of the requests ({routed})"
        assert done[e] >= 0.4 * total
    # Per-replica gauges exist and settle at zero once idle.
    assert wait_for(lambda: sum(metric_by_engine(http, "vllm:num_requests_running").values()) == 0, timeout=5)
    assert metric_by_engine(http, "tenk:engine_up") == {"0": 1.0, "1": 1.0}


def test_client_disconnects_abort_on_the_owning_replica(dp2):
    http = httpx.Client(base_url=dp2.url, timeout=30)
    running = lambda: metric_by_engine(http, "vllm:num_requests_running")
    assert wait_for(lambda: sum(running().values()) == 0, timeout=10)
    gen0 = metric_by_engine(http, "vllm:generation_tokens_total")
    routed0 = metric_by_engine(http, "tenk:engine_requests_routed_total")
    long = MAX_MODEL_LEN - 16
    socks = []
    for i in range(4):  # round robin over idle replicas: two on each
        data = json.dumps({"model": MODEL_NAME, "prompt": f"abort {i}", "max_tokens": long, "stream": True,
                           "ignore_eos": True}).encode()  # fmt: skip
        sock = socket.create_connection(("127.0.0.1", dp2.port), timeout=30)
        sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)  # fmt: skip
        socks.append(sock)
    for sock in socks:  # each has its first token: running on its replica
        got = b""
        for _ in range(20):  # the headers and the first event may come in separate reads
            got += sock.recv(65536)
            if b"data: " in got:
                break
        assert b"data: " in got, got
    for sock in socks:
        sock.close()
    assert wait_for(lambda: sum(running().values()) == 0, timeout=10), "aborts did not reach both replicas"
    routed = metric_by_engine(http, "tenk:engine_requests_routed_total")
    assert {e: routed[e] - routed0[e] for e in routed} == {"0": 2.0, "1": 2.0}
    # Each replica stopped its two requests before their end (an abort sent to the wrong one
    # would leave them running to max_tokens).
    gen = metric_by_engine(http, "vllm:generation_tokens_total")
    print(f"\ntokens generated per replica before the aborts landed: {[gen[e] - gen0[e] for e in ('0', '1')]}"
          f" (of {2 * long})")  # fmt: skip
    assert all(gen[e] - gen0[e] < 2 * long for e in ("0", "1")), (gen0, gen)
    assert wait_for(lambda: sum(metric_by_engine(http, "vllm:kv_cache_usage_perc").values()) == 0.0, timeout=5)


def test_dp2_of_tp2_replicas(tiny_model_dir, server):
    """Each replica is its own tensor-parallel group (gloo on CPU): 2 x 2 ranks answer as one."""
    want = asyncio.run(_completions(server.url, PROMPTS[:4], {"Authorization": f"Bearer {API_KEY}"}, **GREEDY))
    handle = start_server(tiny_model_dir, data_parallel_size=2, served_model_name=[MODEL_NAME],
                          engine={**ENGINE, "tensor_parallel_size": 2, "num_kv_blocks": 256})  # fmt: skip
    try:
        got = asyncio.run(_completions(handle.url, PROMPTS[:4], model=MODEL_NAME, **GREEDY))
        assert [r["choices"][0]["text"] for r in got] == [r["choices"][0]["text"] for r in want]
        routed = metric_by_engine(httpx.Client(base_url=handle.url), "tenk:engine_requests_routed_total")
        assert routed["0"] >= 1 and routed["1"] >= 1 and sum(routed.values()) == 4
    finally:
        handle.stop()


class _Load:
    """Clients in threads sending long requests (streaming and not) until stopped; every answer
    is recorded: (start, end, status, error code or None, streamed?)."""

    def __init__(self, url: str, n_threads: int = 8):
        self.url, self.stop, self.results = url, threading.Event(), []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n_threads)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(30)
        assert not any(t.is_alive() for t in self.threads), "a client hung"

    def _run(self, i: int) -> None:
        body = {"model": MODEL_NAME, "prompt": f"client {i} says", "max_tokens": 48, "ignore_eos": True}
        with httpx.Client(base_url=self.url, timeout=30) as c:
            k = 0
            while not self.stop.is_set():
                stream, k = (k + i) % 2 == 0, k + 1
                t0 = time.monotonic()
                if stream:
                    code, lines = 200, []
                    with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                        status = r.status_code
                        lines = [ln for ln in r.iter_lines() if ln]
                    if status != 200:  # refused before the stream began: a JSON error body
                        code = json.loads("".join(lines))["error"]["code"]
                    else:  # failed mid-stream: an error event, then [DONE]
                        assert lines[-1] == "data: [DONE]", lines[-3:]
                        errors = [json.loads(ln[6:])["error"] for ln in lines if ln.startswith('data: {"error"')]
                        code = errors[0]["code"] if errors else None
                        status = 503 if errors else status
                else:
                    r = c.post("/v1/completions", json=body)
                    status = r.status_code
                    code = r.json()["error"]["code"] if status != 200 else None
                with self.lock:
                    self.results.append((t0, time.monotonic(), status, code, stream))


def test_replica_death_fails_its_requests_and_it_comes_back(dp2):
    # The module's dp2 server, started exactly as this test used to start its own: the tests
    # above leave it idle, with no failed requests and no restarts (its counters start at zero
    # for what is asserted here). This test kills its replicas, so it is the server's last user.
    handle = dp2
    http = httpx.Client(base_url=handle.url, timeout=30)
    links = handle.state.client.links
    old_pid = handle.engine_pids[1]
    with _Load(handle.url) as load:
        # Both replicas are busy before one is killed.
        assert wait_for(lambda: all(lk.stats is not None and lk.stats.num_running > 0 for lk in links), 20)
        in_flight_on_1 = len(links[1].routes)
        os.kill(old_pid, signal.SIGKILL)
        t_kill = time.monotonic()
        assert wait_for(lambda: http.get("/health").status_code == 200 and http.get("/health").content, 2)
        health = http.get("/health").json()
        assert health["status"] == "degraded" and health["replicas_up"] == 1
        assert health["replicas"][1]["state"] in ("down", "starting")
        assert "exited unexpectedly" in health["replicas"][1]["error"]
        t_seen = time.monotonic()
        time.sleep(1.5)  # replica 0 alone serves the load for a while
    ok_after = [r for r in load.results if r[0] > t_seen and r[2] == 200]
    failed = [r for r in load.results if r[2] != 200]
    # Only requests in flight on the dead replica failed, each with a clear 503, at once.
    assert failed and all(r[2] == 503 and r[3] == "engine_unavailable" for r in failed), failed
    assert all(r[1] - t_kill < 2.0 for r in failed), "a failed request was not answered at once"
    assert len(failed) <= in_flight_on_1 + 8  # plus at most one per client sent before the death was seen
    assert not [r for r in load.results if r[0] > t_seen and r[2] != 200], "requests after the death failed"
    assert len(ok_after) >= 4, "the surviving replica did not keep serving"
    # The failures are counted, against the replica that died.
    assert metric_by_engine(http, "tenk:engine_requests_failed_total") == {"0": 0.0, "1": float(len(failed))}

    # It comes back (restart with backoff) and takes requests again.
    assert wait_for(lambda: http.get("/health").status_code == 200 and not http.get("/health").content, 30)
    assert handle.engine_pids[1] not in (None, old_pid)
    assert metric_by_engine(http, "tenk:engine_restarts_total") == {"0": 0.0, "1": 1.0}
    before = metric_by_engine(http, "tenk:engine_requests_routed_total")
    got = asyncio.run(_completions(handle.url, PROMPTS[:8], model=MODEL_NAME, **GREEDY))
    assert all(r["usage"]["completion_tokens"] == 16 for r in got)
    after = metric_by_engine(http, "tenk:engine_requests_routed_total")
    assert after["1"] - before["1"] >= 3, "the restarted replica takes no requests"

    # All replicas down: requests get 503 at once (no waiting for a restart).
    for pid in handle.engine_pids:
        os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: http.get("/health").status_code == 503, 2)
    t0 = time.monotonic()
    r = http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "x", "max_tokens": 4})
    assert r.status_code == 503 and time.monotonic() - t0 < 1.0
    assert r.json()["error"]["code"] == "engine_unavailable"
    assert r.json()["error"]["message"].startswith("no engine replica is running")
    body = http.get("/health").json()
    assert body["health"]["replicas_up"] == 0 and len(body["health"]["replicas"]) == 2
