"""--distributed-executor ray: a local Ray cluster of two nodes (a head and a worker, each with
one CPU, started here on 127.0.0.1 and stopped at the end) serves --dp 2 with one replica actor
on each node, and answers exactly as --dp 1 does."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import API_KEY, MODEL_NAME, start_server, wait_for
from tests.server.test_dp import GREEDY, PROMPTS, _completions, metric_by_engine

ray = pytest.importorskip("ray")
from ray._private import services

# Ray turns 127.0.0.1 (in --node-ip-address, and in the address a driver joins) into the
# machine's outward address; its switch that keeps 127.0.0.1 also forbids a second node. So the
# nodes and this process skip that one rewrite, and every Ray port listens on 127.0.0.1 only.
_RAY_START = ("import sys; from ray._private import services; services.resolve_ip_for_localhost = lambda h: h; "
              "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()")  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# No usage reports; no token auth (a loopback-only cluster of this test; Ray turns auth on by
# itself when it finds ~/.ray/auth_token, and then this process could not join).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def _ray_start(*args: str, log) -> subprocess.Popen:
    # --block keeps `ray start` in the foreground; its own session holds every daemon it starts,
    # so killing that process group stops exactly this node (never another Ray on the machine).
    cmd = [sys.executable, "-c", _RAY_START, "start", "--block", "--node-ip-address=127.0.0.1",
           "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats", *args]  # fmt: skip
    env = {**os.environ, **RAY_ENV}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:  # the group may outlive its leader: finish it
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return


@pytest.fixture(scope="module")
def ray_cluster():
    # A short folder: Ray's unix socket paths must fit in 107 bytes.
    tmp = tempfile.mkdtemp(prefix="tenkray-", dir="/tmp")
    port = _free_port()
    log_path = os.path.join(tmp, "ray-start.log")
    log = open(log_path, "w")  # noqa: SIM115 - both nodes write to it until the end of the module
    procs = [_ray_start("--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={tmp}", log=log)]
    address = f"127.0.0.1:{port}"
    resolve = services.resolve_ip_for_localhost
    services.resolve_ip_for_localhost = lambda host: host
    saved_env = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    try:
        procs.append(_ray_start(f"--address={address}", log=log))
        ray.init(address=address, log_to_driver=True, configure_logging=False)
        ok = wait_for(lambda: sum(1 for n in ray.nodes() if n["Alive"]) == 2, timeout=40, interval=0.5)
        assert ok, Path(log_path).read_text()[-3000:]
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        services.resolve_ip_for_localhost = resolve
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for p in reversed(procs):
            _stop(p)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_ray_dp2_replicas_are_actors_on_both_nodes(ray_cluster, tiny_model_dir, server):
    want = asyncio.run(_completions(server.url, PROMPTS, {"Authorization": f"Bearer {API_KEY}"}, **GREEDY))
    t0 = time.monotonic()
    handle = start_server(tiny_model_dir, data_parallel_size=2, distributed_executor="ray", ray_address=ray_cluster,
                          served_model_name=[MODEL_NAME])  # fmt: skip
    print(f"\nDP=2 on Ray up in {time.monotonic() - t0:.1f} s")
    try:
        links = handle.state.client.links
        assert all("Ray actor on node 127.0.0.1" in lk.replica.where for lk in links)
        # One CPU per node and one per replica: Ray had to place them on different nodes.
        assert links[0].replica.actor.node_id != links[1].replica.actor.node_id
        assert all(lk.replica.input_addr.startswith("tcp://127.0.0.1:") for lk in links)

        got = asyncio.run(_completions(handle.url, PROMPTS, model=MODEL_NAME, **GREEDY))
        assert [r["choices"][0]["text"] for r in got] == [r["choices"][0]["text"] for r in want]
        http = httpx.Client(base_url=handle.url, timeout=30)
        routed = metric_by_engine(http, "tenk:engine_requests_routed_total")
        assert routed["0"] >= 3 and routed["1"] >= 3 and sum(routed.values()) == len(PROMPTS)

        # A replica actor that dies is seen, and Ray places its replacement.
        old = links[1].replica.pid
        os.kill(old, signal.SIGKILL)
        assert wait_for(lambda: http.get("/health").status_code == 200 and http.get("/health").content, 10)
        r = http.post("/v1/completions", json={"prompt": PROMPTS[0], "model": MODEL_NAME, **GREEDY})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == want[0]["choices"][0]["text"]
        assert wait_for(lambda: not http.get("/health").content, 40, interval=0.5), http.get("/health").text
        assert links[1].replica.pid != old
        got = asyncio.run(_completions(handle.url, PROMPTS[:4], model=MODEL_NAME, **GREEDY))
        assert [r["choices"][0]["text"] for r in got] == [r["choices"][0]["text"] for r in want[:4]]
    finally:
        handle.stop()


def test_ray_dp2_behind_two_api_processes(ray_cluster, tiny_model_dir, server):
    """--api-server-count 2 with Ray replicas: each actor binds one tcp output per API process."""
    want = asyncio.run(_completions(server.url, PROMPTS[:6], {"Authorization": f"Bearer {API_KEY}"}, **GREEDY))
    handle = start_server(tiny_model_dir, data_parallel_size=2, distributed_executor="ray", ray_address=ray_cluster,
                          api_server_count=2, served_model_name=[MODEL_NAME])  # fmt: skip
    try:
        links = handle.pool.links
        assert all("Ray actor on node 127.0.0.1" in lk.replica.where for lk in links)
        for lk in links:
            outs = lk.replica.output_addrs
            assert len(set(outs)) == 2 and all(a.startswith("tcp://127.0.0.1:") for a in outs), outs
        got = asyncio.run(_completions(handle.url, PROMPTS[:6], model=MODEL_NAME, **GREEDY))
        assert [r["choices"][0]["text"] for r in got] == [r["choices"][0]["text"] for r in want]
        routed = metric_by_engine(httpx.Client(base_url=handle.url, timeout=30), "tenk:engine_requests_routed_total")
        assert sum(routed.values()) == 6 and min(routed.values()) >= 1
    finally:
        handle.stop()
