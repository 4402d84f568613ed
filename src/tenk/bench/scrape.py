"""Periodic scrape of each server's Prometheus /metrics during a level: KV-cache usage and
running / waiting requests. vLLM's names are canonical (tenk exports them too); SGLang's are
mapped onto them. A server without /metrics is simply skipped."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import numpy as np

# canonical name -> names servers use (summed over label sets, e.g. one per DP rank)
METRIC_NAMES = {
    "kv_cache_usage_perc": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage"),
    "num_requests_running": ("vllm:num_requests_running", "sglang:num_running_reqs"),
    "num_requests_waiting": ("vllm:num_requests_waiting", "sglang:num_queue_reqs"),
}
_LOOKUP = {alias: canon for canon, aliases in METRIC_NAMES.items() for alias in aliases}
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {canonical name: value}; KV usage averaged over label sets (replicas),
    request counts summed."""
    sums: dict[str, list[float]] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _LINE.match(line)
        if m and m.group(1) in _LOOKUP:
            try:
                sums.setdefault(_LOOKUP[m.group(1)], []).append(float(m.group(3)))
            except ValueError:
                continue
    out = {}
    for name, vals in sums.items():
        out[name] = float(np.mean(vals)) if name == "kv_cache_usage_perc" else float(np.sum(vals))
    return out


class MetricsScraper:
    """Start with `start(urls)`, stop with `await stop()` -> {url: {name: {"mean","max","samples"}}}."""

    def __init__(self, session: aiohttp.ClientSession, interval: float = 1.0) -> None:
        self.session = session
        self.interval = interval
        self.dead: set[str] = set()  # URLs whose /metrics failed once: no longer asked
        self._task: asyncio.Task | None = None
        self._samples: dict[str, dict[str, list[float]]] = {}

    async def scrape_once(self, url: str) -> dict[str, float] | None:
        if url in self.dead:
            return None
        try:
            async with self.session.get(url + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                if resp.status != 200:
                    self.dead.add(url)
                    return None
                values = parse_metrics(await resp.text())
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return None  # a busy server may miss one scrape; try again next tick
        if not values:
            self.dead.add(url)
        return values

    async def _loop(self, urls: list[str]) -> None:
        while True:
            got = await asyncio.gather(*(self.scrape_once(u) for u in urls))
            for u, values in zip(urls, got):
                for name, v in (values or {}).items():
                    self._samples.setdefault(u, {}).setdefault(name, []).append(v)
            await asyncio.sleep(self.interval)

    def start(self, urls: list[str]) -> None:
        self._samples = {}
        self._task = asyncio.ensure_future(self._loop(urls))

    async def stop(self) -> dict:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        return {
            url: {
                name: {"mean": float(np.mean(v)), "max": float(np.max(v)), "samples": len(v)}
                for name, v in metrics.items()
            }
            for url, metrics in self._samples.items()
        }
