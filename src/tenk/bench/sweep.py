"""run_sweep(BenchConfig) -> BenchResult: warm-up, then one level per concurrency (or one
request-rate level), each with fresh prompts, a /metrics scrape and its statistics. Results are
written after every level, so an interrupt or a crash keeps what was measured.

Stopping early: pass `stop` (anything with is_set(), e.g. threading.Event) and set it; the level
in progress is cut off, its finished requests are summarized, the files are written and the
result comes back with `interrupted=True`. Cancelling the coroutine does the same, then
re-raises CancelledError. The CLI sets `stop` on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import aiohttp
import numpy as np

from tenk.bench.config import BenchConfig
from tenk.bench.dataset import DatasetStats, clean_id_pool, jsonl_prompts, random_prompts
from tenk.bench.environment import client_environment, server_info
from tenk.bench.metrics import LevelResult, summarize
from tenk.bench.output import SCHEMA, summary_lines, write_results
from tenk.bench.pool import ClientPool
from tenk.bench.records import Prompt
from tenk.bench.scrape import MetricsScraper
from tenk.bench.token_count import LocalTokenizer, ServerTokenizer
from tenk.errors import TenkError

WARMUP_MAX_TOKENS = 16


@dataclass(slots=True)
class BenchResult:
    config: dict
    environment: dict
    servers: list[dict]
    levels: list[LevelResult] = field(default_factory=list)
    warmup: dict | None = None
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)
    json_path: str | None = None
    csv_path: str | None = None

    def as_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "config": self.config,
            "environment": self.environment,
            "servers": self.servers,
            "warmup": self.warmup,
            "interrupted": self.interrupted,
            "warnings": self.warnings,
            "levels": [lv.as_dict() for lv in self.levels],
        }

    def peak(self) -> LevelResult | None:
        return max(self.levels, key=lambda lv: lv.output_throughput, default=None)

    def summary(self) -> str:
        return "\n".join(summary_lines([lv.as_dict() for lv in self.levels]))


def _poisson_offsets(n: int, rate: float, seed: int) -> list[float]:
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, n)
    gaps[0] = 0.0  # the first request goes at the start
    return np.cumsum(gaps).tolist()


class _Sweep:
    def __init__(self, config: BenchConfig, stop, on_progress: Callable[[dict], None] | None) -> None:
        self.cfg = config
        self.stop = stop
        self.on_progress = on_progress
        self.counter = None
        self.pool_ids: list[int] | None = None
        self.dataset_source = config.dataset
        self.cancelled = False

    async def setup(self, session: aiohttp.ClientSession) -> tuple[str, list[dict]]:
        cfg = self.cfg
        servers = list(await asyncio.gather(*(server_info(session, u) for u in cfg.urls)))
        model = cfg.model
        if model is None:
            ids = servers[0]["models"]
            if not ids:
                raise TenkError(f"{cfg.urls[0]}/v1/models lists no model (or is unreachable); give --model NAME")
            model = ids[0]
        if cfg.dataset == "random":
            if cfg.tokenizer:
                self.counter = LocalTokenizer(cfg.tokenizer)
                self.dataset_source = "random/tokenizer"
            else:
                st = ServerTokenizer(session, cfg.urls[0], model)
                if await st.probe():
                    self.counter = st
                    self.dataset_source = "random/server-tokenize"
                elif cfg.prompt_format != "ids":
                    raise TenkError(
                        f"{cfg.urls[0]} has no /tokenize, so prompt lengths cannot be made exact: give "
                        "--tokenizer PATH (the model's tokenizer directory) or --prompt-format ids"
                    )
            if cfg.prompt_format == "ids":
                self.dataset_source = "random/ids"
            if isinstance(self.counter, LocalTokenizer):
                self.pool_ids = clean_id_pool(self.counter, random.Random(cfg.seed))
            elif isinstance(self.counter, ServerTokenizer) and cfg.prompt_format == "text":
                self.pool_ids = await self.counter.id_pool()
        return model, servers

    async def prompts(self, n: int, seed: int, warmup: bool = False) -> tuple[list[Prompt], DatasetStats]:
        if self.cfg.dataset == "jsonl":
            prompts, stats = jsonl_prompts(self.cfg, n, seed)
        else:
            prompts, stats = await random_prompts(self.cfg, n, seed, self.counter, self.pool_ids)
        if warmup:
            for p in prompts:
                p.max_tokens = min(p.max_tokens, WARMUP_MAX_TOKENS)
        return prompts, stats

    def stop_requested(self) -> bool:
        return self.cancelled or (self.stop is not None and self.stop.is_set())

    async def run_level(self, pool: ClientPool, prompts, concurrency, arrivals, label: str, idx: int):
        """Runs one level while reporting progress and watching for a stop request."""
        task = asyncio.ensure_future(
            pool.run_level(prompts, concurrency=concurrency, arrivals=arrivals, timeout=self.cfg.level_timeout)
        )
        t0 = time.perf_counter()
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.25)
                if self.stop_requested() and not pool.stopping:
                    pool.request_stop()
                if self.on_progress is not None:
                    self.on_progress({"level": idx, "label": label, "num_prompts": len(prompts), "elapsed": time.perf_counter() - t0, **pool.progress()})
        except asyncio.CancelledError:
            # keep what was measured: the workers cancel their in-flight requests and return
            # their records; the caller writes them and then re-raises the cancellation
            pool.request_stop()
            self.cancelled = True
            while not task.done():
                try:
                    await asyncio.shield(task)
                except asyncio.CancelledError:
                    continue
        return task.result()


async def run_sweep_async(
    config: BenchConfig,
    *,
    stop=None,
    on_progress: Callable[[dict], None] | None = None,
    on_level: Callable[[LevelResult], None] | None = None,
) -> BenchResult:
    cfg = config
    sweep = _Sweep(cfg, stop, on_progress)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        model, servers = await sweep.setup(session)
        local = isinstance(sweep.counter, LocalTokenizer)
        wcfg = {
            "urls": cfg.urls, "model": model, "endpoint": cfg.endpoint, "stream": cfg.stream,
            "ignore_eos": cfg.ignore_eos, "temperature": cfg.temperature, "extra_body": cfg.extra_body,
            "api_key": cfg.api_key, "request_timeout": cfg.request_timeout, "balance": cfg.balance,
            "keep_text": local,  # the generated text comes back only when a local tokenizer recounts it
        }
        conf = cfg.as_dict()
        conf["model"] = model
        result = BenchResult(config=conf, environment=client_environment(cfg.workers), servers=servers)
        pool = ClientPool(wcfg, cfg.workers)
        scraper = MetricsScraper(session, cfg.scrape_interval)
        await pool.start()
        try:
            if cfg.warmup and not sweep.stop_requested():
                prompts, _ = await sweep.prompts(cfg.warmup, seed=cfg.seed * 7919 + 99991, warmup=True)
                recs, _ = await sweep.run_level(pool, prompts, min(cfg.warmup, 8), None, "warm-up", -1)
                ok = sum(r.ok for r in recs)
                result.warmup = {"requests": len(recs), "ok": ok}
                if ok == 0 and recs and not sweep.stop_requested():
                    raise TenkError(f"every warm-up request failed, e.g. {recs[0].error}")
            for idx, lv in enumerate(cfg.levels()):
                if sweep.stop_requested():
                    result.interrupted = True
                    break
                n = lv["num_prompts"]
                prompts, dstats = await sweep.prompts(n, seed=cfg.seed * 1_000_003 + idx)
                arrivals = _poisson_offsets(n, lv["request_rate"], cfg.seed + idx) if lv["request_rate"] else None
                label = f"rate={lv['request_rate']:g}/s" if arrivals else f"c={lv['concurrency']}"
                if cfg.scrape_metrics:
                    scraper.start(cfg.urls)
                started = time.time()
                records, cut = await sweep.run_level(pool, prompts, lv["concurrency"], arrivals, label, idx)
                server_metrics = await scraper.stop() if cfg.scrape_metrics else {}
                if local:
                    for r in records:
                        if r.ok:
                            r.client_tokens = await sweep.counter.count_output(r.text)
                        r.text = ""
                res = summarize(
                    records, concurrency=lv["concurrency"], request_rate=lv["request_rate"], num_prompts=n,
                    slo=cfg.slo, client_count_source="tokenizer" if local else "chunks", save_requests=cfg.save_requests,
                )
                res.started_at = started
                res.server_metrics = server_metrics
                res.dataset = {"source": sweep.dataset_source, "prompts": dstats.prompts, "inexact": dstats.inexact, "fixup_rounds": dstats.fixup_rounds}
                if dstats.inexact:
                    res.warnings.append(f"{dstats.inexact} prompts could not be made exactly the requested length")
                if cut:
                    res.interrupted = sweep.stop_requested()
                    res.timed_out = not res.interrupted
                result.levels.append(res)
                result.warnings.extend(f"{label}: {w}" for w in res.warnings)
                if cfg.out:
                    _write(result, cfg.out)
                if on_level is not None:
                    on_level(res)
                if res.interrupted:
                    result.interrupted = True
                    break
        finally:
            await scraper.stop()
            await pool.close()
            if cfg.out:
                _write(result, cfg.out)
    if sweep.cancelled:
        raise asyncio.CancelledError()
    return result


def _write(result: BenchResult, out: str) -> None:
    jp, cp = write_results(result.as_dict(), out)
    result.json_path, result.csv_path = str(jp), str(cp)


def run_sweep(config: BenchConfig, **kwargs) -> BenchResult:
    """Blocking form of run_sweep_async, on uvloop when installed. Not for use inside a running
    event loop (await run_sweep_async there)."""
    from tenk.bench.worker import run_async

    return run_async(run_sweep_async(config, **kwargs))


def default_out_path() -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return str(Path("bench-results") / f"bench-{stamp}.json")
