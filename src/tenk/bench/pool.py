"""The coordinator's handle on the client: one in-process worker (--workers 1) or N spawned
worker processes, each with its own event loop and connection pool. It splits a level over the
workers, starts them on a common clock, and merges their records."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time

from tenk.bench import worker as W
from tenk.bench.records import Prompt, RequestRecord
from tenk.errors import TenkError

START_DELAY = 0.05  # seconds between handing out a level and its common start time


class ClientPool:
    def __init__(self, wcfg: dict, n_workers: int) -> None:
        """wcfg: the plain dict worker.make_sender and run_level read (urls, model, endpoint, ...)."""
        self.wcfg = wcfg
        self.n = n_workers
        ctx = mp.get_context("spawn")
        self._ctx = ctx
        n_urls = len(wcfg["urls"])
        self.shared = W.Shared(
            next_index=ctx.Value("q", 0),
            progress=ctx.Array("d", n_workers * W.PROGRESS_FIELDS, lock=False),
            outstanding=ctx.Array("q", n_workers * n_urls, lock=False),
            stop=ctx.Event(),
            n_workers=n_workers,
            n_urls=n_urls,
        )
        self._procs: list = []
        self._conns: list = []
        self._session = None
        self._sender = None

    async def start(self) -> None:
        if self.n == 1:
            self._session = W.make_session()
            self._sender = W.make_sender(self._session, self.wcfg)
            return
        loop = asyncio.get_running_loop()
        for wid in range(self.n):
            parent, child = self._ctx.Pipe()
            p = self._ctx.Process(target=W.worker_main, args=(wid, self.wcfg, child, self.shared), daemon=True)
            p.start()
            self._procs.append(p)
            self._conns.append(parent)
        for conn in self._conns:
            msg = await loop.run_in_executor(None, self._recv, conn, 60.0)
            if msg[0] != "ready":
                raise TenkError(f"a client worker process failed to start: {msg}")

    def _recv(self, conn, timeout: float | None):
        if timeout is not None and not conn.poll(timeout):
            raise TenkError("a client worker process did not answer in time")
        try:
            return conn.recv()
        except EOFError:
            raise TenkError("a client worker process died (out of memory or killed?)") from None

    def progress(self) -> dict:
        p = self.shared.progress
        f = W.PROGRESS_FIELDS
        tot = [sum(p[w * f + k] for w in range(self.n)) for k in range(f)]
        return {"ok": int(tot[0]), "failed": int(tot[1]), "chunks": int(tot[2]), "in_flight": int(tot[3])}

    def request_stop(self) -> None:
        self.shared.stop.set()

    @property
    def stopping(self) -> bool:
        return self.shared.stop.is_set()

    async def run_level(
        self,
        prompts: list[Prompt],
        *,
        concurrency: int | None,
        arrivals: list[float] | None = None,
        timeout: float | None = None,
    ) -> tuple[list[RequestRecord], bool]:
        """Closed loop with `concurrency` slots, or timed `arrivals` (offsets in s, one per prompt;
        `concurrency` then caps in-flight requests, None for no cap). Returns (records, cut_off)."""
        sh = self.shared
        sh.next_index.value = 0
        for i in range(len(sh.progress)):
            sh.progress[i] = 0.0
        start_at = time.perf_counter() + (START_DELAY if self.n > 1 else 0.0)
        deadline = start_at + timeout if timeout else None
        specs = []
        for wid in range(self.n):
            if arrivals is None:
                slots = W.split(concurrency or 1, self.n)[wid]
                mine = None
            else:
                slots = W.ceil_div(concurrency, self.n) if concurrency else 0
                mine = [(i, t) for i, t in enumerate(arrivals) if i % self.n == wid]
            specs.append(W.LevelSpec(prompts, slots, mine, start_at, deadline))
        if self.n == 1:
            return await W.run_level(self._sender, self.wcfg["urls"], self.wcfg["balance"], specs[0], sh, 0)
        loop = asyncio.get_running_loop()
        for conn, spec in zip(self._conns, specs):
            conn.send(("level", spec))
        replies = await asyncio.gather(*(loop.run_in_executor(None, self._recv, c, None) for c in self._conns))
        records = [r for rep in replies for r in rep[1]]
        return records, any(rep[2] for rep in replies)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        for conn in self._conns:
            try:
                conn.send(("exit",))
            except (BrokenPipeError, OSError):
                pass
        for p in self._procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=2)
        self._procs.clear()
        self._conns.clear()
