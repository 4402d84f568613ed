"""1,024 concurrent streaming requests all complete, and the KV cache is empty afterwards.

The client runs in a process of its own (`python -m tests.server.test_load URL`): sharing the
server's GIL it would admit requests slowly and measure itself, not the server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.server.conftest import API_KEY, MODEL_NAME, metric, wait_for

N_REQUESTS = 1024
MAX_TOKENS = 8


async def _one(session: aiohttp.ClientSession, url: str, i: int) -> dict:
    body = {"model": MODEL_NAME, "prompt": f"req {i}", "max_tokens": MAX_TOKENS, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}  # fmt: skip
    text, usage, finish, done = "", None, None, False
    async with session.post(url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line:
                continue
            assert line.startswith("data: "), line
            data = line[6:]
            if data == "[DONE]":
                done = True
                continue
            event = json.loads(data)
            assert "error" not in event, event
            if event.get("usage"):
                usage = event["usage"]
            for c in event["choices"]:
                text += c["text"]
                finish = c["finish_reason"] or finish
    return {"done": done, "usage": usage, "finish": finish, "text": text}


async def _run_all(base: str) -> tuple[list, float]:
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=300)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(connector=conn, timeout=timeout, headers=headers) as s:
        t0 = time.perf_counter()
        results = await asyncio.gather(*[_one(s, base + "/v1/completions", i) for i in range(N_REQUESTS)],
                                       return_exceptions=True)  # fmt: skip
        return results, time.perf_counter() - t0


def _summary(base: str) -> dict:
    results, wall = asyncio.run(_run_all(base))
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    ok = [r for r in results if not isinstance(r, BaseException)]
    return {
        "wall": wall, "errors": errors,
        "complete": sum(1 for r in ok if r["done"] and r["finish"] == "length"),
        "tokens": sum(r["usage"]["completion_tokens"] for r in ok if r["usage"]),
    }  # fmt: skip


def test_1024_concurrent_streams(server, http):
    gen_before = metric(http, "vllm:generation_tokens_total")
    proc = subprocess.run([sys.executable, "-m", "tests.server.test_load", server.url], capture_output=True,
                          text=True, timeout=240, cwd=Path(__file__).parents[2])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not s["errors"], f"{len(s['errors'])} of {N_REQUESTS} failed, e.g. {s['errors'][0]}"
    assert s["complete"] == N_REQUESTS and s["tokens"] == N_REQUESTS * MAX_TOKENS
    print(f"\n{N_REQUESTS} streams x {MAX_TOKENS} tokens in {s['wall']:.1f} s "
          f"({N_REQUESTS * MAX_TOKENS / s['wall']:.0f} output tok/s)")  # fmt: skip
    # The engine's stats settle once it is idle: nothing running or waiting, no KV blocks held.
    assert wait_for(lambda: metric(http, "vllm:num_requests_running") == 0
                    and metric(http, "vllm:num_requests_waiting") == 0
                    and metric(http, "vllm:kv_cache_usage_perc") == 0.0, timeout=10)  # fmt: skip
    assert metric(http, "vllm:generation_tokens_total") - gen_before == N_REQUESTS * MAX_TOKENS
    assert metric(http, "vllm:request_success_total") >= N_REQUESTS


if __name__ == "__main__":
    print(json.dumps(_summary(sys.argv[1])))
