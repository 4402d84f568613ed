"""--api-server-count 2 (CPU): two API processes share the port in front of two replicas. Both
answer, with the single-process server's greedy outputs; /metrics adds up what both counted; a
replica that dies fails only its requests (503 from whichever API process had them) and comes
back in both; an API process that dies is restarted while the other keeps serving, and the
engines drop the requests it had."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import signal
import socket
import time

import httpx
import openai
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from tenk.errors import ConfigError
from tests.server.conftest import API_KEY, ENGINE, MODEL_NAME, start_server, wait_for
from tests.server.test_dp import GREEDY, PROMPTS, _completions, _Load, metric_by_engine


def _successes_by_api_process(pool) -> list[float]:
    """Requests each API process finished, from its own counter file in the multiprocess dir
    (/metrics only shows the sum)."""
    out = []
    for pid in pool.api_pids:
        metrics = MultiProcessCollector.merge(glob.glob(f"{pool.pool.metrics_dir}/counter_{pid}.db"))
        out.append(sum(s.value for m in metrics if m.name == "vllm:request_success" for s in m.samples
                       if s.name.endswith("_total")))  # fmt: skip
    return out


async def _fresh_connections(url: str, n: int) -> list[int]:
    """n concurrent requests, each on its own connection (the kernel hands each to one process)."""

    async def one(i: int) -> int:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            r = await c.post("/v1/completions", json={"model": MODEL_NAME, "prompt": f"conn {i}", "max_tokens": 24,
                                                      "ignore_eos": True, "stream": i % 2 == 0})  # fmt: skip
            return r.status_code

    return await asyncio.gather(*[one(i) for i in range(n)])


@pytest.fixture(scope="module")
def pool(tiny_model_dir):
    handle = start_server(tiny_model_dir, data_parallel_size=2, api_server_count=2, served_model_name=[MODEL_NAME])
    yield handle
    handle.stop()


def test_two_api_processes_answer_like_one(pool, server):
    assert len(set(pool.api_pids)) == 2 and len(set(pool.engine_pids)) == 2
    want = asyncio.run(_completions(server.url, PROMPTS, {"Authorization": f"Bearer {API_KEY}"}, **GREEDY))
    got = asyncio.run(_completions(pool.url, PROMPTS, model=MODEL_NAME, **GREEDY))
    assert [r["choices"][0]["text"] for r in got] == [r["choices"][0]["text"] for r in want]

    # The official client, streaming, through whichever process takes the connection.
    client = openai.OpenAI(base_url=pool.base_url, api_key="unused", max_retries=0)
    stream = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], stream=True, **{
        k: v for k, v in GREEDY.items() if k != "ignore_eos"}, extra_body={"ignore_eos": True})  # fmt: skip
    assert "".join(c.choices[0].text for c in stream) == want[0]["choices"][0]["text"]


def test_both_processes_serve_and_metrics_add_up(pool):
    http = httpx.Client(base_url=pool.url, timeout=30)
    before_ok = sum(metric_by_engine(http, "vllm:request_success_total").values())
    before_routed = metric_by_engine(http, "tenk:engine_requests_routed_total")
    served0 = _successes_by_api_process(pool)
    n = 64
    assert set(asyncio.run(_fresh_connections(pool.url, n))) == {200}
    served = [s - s0 for s, s0 in zip(_successes_by_api_process(pool), served0)]
    assert sum(served) == n
    assert min(served) >= 0.15 * n, f"one API process did (almost) nothing: requests served {served}"
    with pytest.raises(OSError):  # the port stays the server's: no other program listens beside it
        socket.create_server(("127.0.0.1", pool.port))
    # The counters of both processes are summed in /metrics, whichever one answers the scrape.
    for _ in range(4):
        http2 = httpx.Client(base_url=pool.url, timeout=30)  # a new connection each time
        ok = sum(metric_by_engine(http2, "vllm:request_success_total").values())
        assert ok - before_ok == n
    routed = metric_by_engine(http, "tenk:engine_requests_routed_total")
    shares = [routed[e] - before_routed[e] for e in ("0", "1")]
    assert sum(shares) == n and min(shares) >= 0.3 * n, shares
    assert wait_for(lambda: sum(metric_by_engine(http, "vllm:num_requests_running").values()) == 0, timeout=5)


def test_a_second_server_on_the_port_is_refused(pool, tiny_model_dir):
    """Each API process listens with SO_REUSEPORT, which would let another server of the same user
    join the port and take half its connections: a second pool (or a single-process server) on it
    fails at once with the port in its message, while the first one serves on; so does one that
    tries while the first is still starting (only its port holder bound)."""
    from tenk.server import ServerArgs, launch
    from tenk.server.launcher import bind, hold_port

    for count in (2, 1):
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{pool.port}"):
            launch(ServerArgs(model=tiny_model_dir, port=pool.port, api_server_count=count, engine=dict(ENGINE)))
    assert httpx.get(pool.url + "/health", timeout=10).status_code == 200
    holder = hold_port("127.0.0.1", 0)  # a pool that is loading its model
    try:
        port = holder.getsockname()[1]
        with pytest.raises(ConfigError):
            hold_port("127.0.0.1", port)
        bind("127.0.0.1", port, reuse_port=True).close()  # its own API processes join it
    finally:
        holder.close()


def test_replica_death_is_seen_by_every_api_process(pool):
    # The module's pool, started exactly as this test used to start its own: the tests above
    # leave it idle, with no failed requests and no restarts (its counters start at zero for
    # what is asserted here). This test kills a replica, so it is the pool's last user.
    handle = pool
    http = httpx.Client(base_url=handle.url, timeout=30)
    old_pid = handle.engine_pids[1]
    with _Load(handle.url) as load:
        assert wait_for(lambda: sum(metric_by_engine(http, "vllm:num_requests_running").values()) >= 4, 20)
        os.kill(old_pid, signal.SIGKILL)
        t_kill = time.monotonic()

        def degraded_everywhere() -> bool:  # new connections reach either process
            for _ in range(6):
                r = httpx.get(handle.url + "/health", timeout=5)
                if r.status_code != 200 or not r.content or r.json()["replicas_up"] != 1:
                    return False
            return True

        assert wait_for(degraded_everywhere, 3)
        time.sleep(1.0)
    failed = [r for r in load.results if r[2] != 200]
    assert failed and all(r[2] == 503 and r[3] == "engine_unavailable" for r in failed), failed
    assert all(r[1] - t_kill < 2.0 for r in failed), "a failed request was not answered at once"
    assert metric_by_engine(http, "tenk:engine_requests_failed_total") == {"0": 0.0, "1": float(len(failed))}

    # Back in both API processes, counted once.
    def healthy_everywhere() -> bool:
        return all(httpx.get(handle.url + "/health", timeout=5).status_code == 200
                   and not httpx.get(handle.url + "/health", timeout=5).content for _ in range(6))  # fmt: skip

    assert wait_for(healthy_everywhere, 30)
    assert handle.engine_pids[1] not in (None, old_pid)
    assert metric_by_engine(http, "tenk:engine_restarts_total") == {"0": 0.0, "1": 1.0}
    before = metric_by_engine(http, "tenk:engine_requests_routed_total")
    assert set(asyncio.run(_fresh_connections(handle.url, 16))) == {200}
    after = metric_by_engine(http, "tenk:engine_requests_routed_total")
    assert after["1"] - before["1"] >= 4, "the restarted replica takes no requests"


def _open_streams(port: int, n: int, max_tokens: int) -> list[socket.socket]:
    socks = []
    for i in range(n):  # each on its own connection
        data = json.dumps({"model": MODEL_NAME, "prompt": f"long {i}", "max_tokens": max_tokens, "stream": True,
                           "ignore_eos": True}).encode()  # fmt: skip
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)  # fmt: skip
        socks.append(sock)
    return socks


def _connection_lost(sock: socket.socket, seconds: float) -> bool:
    """Whether the server side closed this streaming connection within `seconds` (a live
    stream keeps sending events)."""
    deadline = time.monotonic() + seconds
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            pass
    return False


def test_api_process_death_is_survived(tiny_model_dir):
    handle = start_server(tiny_model_dir, data_parallel_size=1, api_server_count=2, served_model_name=[MODEL_NAME],
                          engine={**ENGINE, "max_model_len": 4096})  # fmt: skip
    socks = []
    try:
        http = httpx.Client(base_url=handle.url, timeout=30)
        running = lambda: sum(metric_by_engine(http, "vllm:num_requests_running").values())
        n = 16
        socks = _open_streams(handle.port, n, max_tokens=4000)
        assert wait_for(lambda: running() == n, 20)
        victim = handle.api_pids[0]
        os.kill(victim, signal.SIGKILL)
        lost = [s for s in socks if _connection_lost(s, 0.5)]
        # Its connections are gone, the others stream on, and the engine dropped exactly the
        # dead process's requests instead of running them for 4,000 tokens.
        assert 1 <= len(lost) < n, f"{len(lost)} of {n} streams were on the killed API process"
        assert wait_for(lambda: running() == n - len(lost), 5), (running(), n - len(lost))
        for s in socks:
            s.close()
        assert wait_for(lambda: running() == 0, 10)
        # The other process served meanwhile; the dead one is replaced and serves too.
        assert wait_for(lambda: None not in handle.api_pids and victim not in handle.api_pids, 30)
        assert set(asyncio.run(_fresh_connections(handle.url, 16))) == {200}
    finally:
        for s in socks:
            s.close()
        handle.stop()


@pytest.mark.parametrize(("flags", "want"), [([], 1), (["--dp", "2"], 4), (["--dp", "2", "--api-server-count", "1"], 1),
                                             (["--api-server-count", "3"], 3)])  # fmt: skip
def test_serve_default_api_server_count(monkeypatch, flags, want):
    """`tenk serve` starts two API processes per replica once --dp > 1, unless told otherwise."""
    from typer.testing import CliRunner

    import tenk.server.launcher
    from tenk.cli.main import app

    seen = []
    monkeypatch.setattr(tenk.server.launcher, "serve_forever", lambda args: seen.append(args))
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # the command's SIGTERM handler stays out of pytest
    res = CliRunner().invoke(app, ["serve", "tiny-moe", "--load-format", "dummy", "--device", "cpu", *flags])
    assert res.exit_code == 0, res.output
    assert [a.api_server_count for a in seen] == [want]


def test_bad_api_server_count_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from tenk.cli.main import app

    res = CliRunner().invoke(app, ["serve", str(tmp_path), "--device", "cpu", "--api-server-count", "0"])
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines == ["error: --api-server-count must be a positive integer, got 0"], res.output
