"""The load generator of one client process: closed-loop slots (a concurrency level) or timed
arrivals (request-rate mode), sending through one RequestSender. The coordinator runs this
in-process for --workers 1 and in spawned processes otherwise (worker_main).

Shared between processes (multiprocessing shared memory, set up by pool.py):
  next_index   Value('q')  the next prompt to send in closed-loop mode; all slots of all
               processes draw from it, so every slot stays busy until the prompts run out
  progress     Array('d')  per worker [ok, failed, output chunks, in flight], for the live table
  outstanding  Array('q')  per worker and URL, requests in flight (least-outstanding balancing)
  stop         Event       interrupt: send nothing new, cancel what is in flight
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from dataclasses import dataclass

import aiohttp

from tenk.bench.client import RequestSender
from tenk.bench.records import Prompt, RequestRecord

PROGRESS_FIELDS = 4  # ok, failed, output chunks, in flight


@dataclass(slots=True)
class LevelSpec:
    prompts: list[Prompt]
    slots: int  # closed loop: this worker's share of the concurrency; rate mode: its in-flight cap (0 = none)
    arrivals: list[tuple[int, float]] | None  # rate mode: (prompt index, offset in s from start)
    start_at: float  # perf_counter time when the level begins (same clock in every process)
    deadline: float | None  # perf_counter time at which the level is cut off


@dataclass(slots=True)
class Shared:
    next_index: object
    progress: object
    outstanding: object
    stop: object
    n_workers: int
    n_urls: int


def make_session() -> aiohttp.ClientSession:
    # limit=0: no cap on pooled connections, so the pool never throttles the concurrency level
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=None, keepalive_timeout=300)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))


def make_sender(session: aiohttp.ClientSession, cfg: dict) -> RequestSender:
    return RequestSender(
        session,
        model=cfg["model"],
        endpoint=cfg["endpoint"],
        stream=cfg["stream"],
        ignore_eos=cfg["ignore_eos"],
        temperature=cfg["temperature"],
        extra_body=cfg["extra_body"],
        api_key=cfg["api_key"],
        request_timeout=cfg["request_timeout"],
    )


class UrlPicker:
    """Round-robin, or least outstanding requests summed over all worker processes."""

    def __init__(self, urls: list[str], balance: str, shared: Shared, wid: int) -> None:
        self.urls = urls
        self.least = balance == "least" and len(urls) > 1
        self.shared = shared
        self.wid = wid
        self.rr = wid  # workers start at different URLs

    def pick(self) -> int:
        n = len(self.urls)
        self.rr += 1
        if not self.least:
            return self.rr % n
        out = self.shared.outstanding
        loads = [sum(out[w * n + u] for w in range(self.shared.n_workers)) for u in range(n)]
        best = min(loads)
        for k in range(n):  # ties: rotate so equal servers share the load
            u = (self.rr + k) % n
            if loads[u] == best:
                return u
        return 0


async def _sleep_until(t: float) -> None:
    delay = t - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


async def run_level(sender: RequestSender, urls: list[str], balance: str, spec: LevelSpec, shared: Shared, wid: int) -> tuple[list[RequestRecord], bool]:
    """Runs this worker's part of one level. Returns (records, cut_off); cut_off means the
    level ended by interrupt or deadline and in-flight requests were cancelled."""
    records: list[RequestRecord] = []
    picker = UrlPicker(urls, balance, shared, wid)
    prog = shared.progress
    pbase = wid * PROGRESS_FIELDS
    n_urls = len(urls)
    obase = wid * n_urls
    out = shared.outstanding
    prompts = spec.prompts

    async def one(idx: int) -> None:
        u = picker.pick()
        p = prompts[idx]
        rec = RequestRecord(index=idx, url=urls[u], input_len=p.input_len)
        records.append(rec)  # kept even if cancelled, so an interrupt still accounts for it
        out[obase + u] += 1
        prog[pbase + 3] += 1
        try:
            await sender.send(urls[u], p, idx, rec)
        finally:
            out[obase + u] -= 1
            prog[pbase + 3] -= 1
        if rec.ok:
            prog[pbase + 0] += 1
            prog[pbase + 2] += len(rec.chunk_times)
        else:
            prog[pbase + 1] += 1

    nv = shared.next_index

    def take() -> int:
        with nv.get_lock():
            i = nv.value
            nv.value = i + 1
        return i

    async def slot() -> None:
        while not shared.stop.is_set():
            idx = take()
            if idx >= len(prompts):
                return
            await one(idx)

    sem = asyncio.Semaphore(spec.slots) if spec.arrivals is not None and spec.slots > 0 else None

    async def arrival(idx: int, offset: float) -> None:
        await _sleep_until(spec.start_at + offset)
        if shared.stop.is_set():
            return
        if sem is None:
            await one(idx)
        else:
            async with sem:
                await one(idx)

    await _sleep_until(spec.start_at)
    if spec.arrivals is None:
        coros = [slot() for _ in range(spec.slots)]
    else:
        coros = [arrival(i, t) for i, t in spec.arrivals]
    tasks = [asyncio.ensure_future(c) for c in coros]
    remaining = len(tasks)
    all_done = asyncio.Event()

    def _done(_):
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            all_done.set()

    for t in tasks:
        t.add_done_callback(_done)
    cut_off = False
    if tasks:
        while True:
            try:
                await asyncio.wait_for(all_done.wait(), 0.1)
                break
            except asyncio.TimeoutError:
                pass
            if shared.stop.is_set() or (spec.deadline is not None and time.perf_counter() > spec.deadline):
                cut_off = True
                break
    if cut_off:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for rec in records:  # requests cut off mid-flight: not a server failure, counted apart
        if not rec.ok and rec.end == 0.0:
            rec.end = time.perf_counter()
            rec.error = rec.error or "cancelled"
    return records, cut_off


def worker_main(wid: int, cfg: dict, conn, shared: Shared) -> None:
    """Entry of a spawned client process: serve level commands from the coordinator's pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator handles Ctrl-C and tells us

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with make_session() as session:
            sender = make_sender(session, cfg)
            conn.send(("ready", wid))
            while True:
                msg = await loop.run_in_executor(None, conn.recv)
                if msg[0] == "level":
                    recs, cut = await run_level(sender, cfg["urls"], cfg["balance"], msg[1], shared, wid)
                    for r in recs:
                        r.text = r.text if cfg["keep_text"] else ""
                    conn.send(("records", recs, cut))
                elif msg[0] == "exit":
                    return

    run_async(main())


def run_async(coro):
    """asyncio.run on uvloop when it is installed (it parses HTTP and schedules faster)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional
        return asyncio.run(coro)
    if hasattr(asyncio, "Runner"):  # Python 3.11+
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    uvloop.install()  # pragma: no cover - Python 3.10
    return asyncio.run(coro)


def split(total: int, parts: int) -> list[int]:
    """Shares of `total` over `parts`, differing by at most one."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def ceil_div(a: int, b: int) -> int:
    return int(math.ceil(a / b))
