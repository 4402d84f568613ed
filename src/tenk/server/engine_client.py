"""The API process's side of the engine replicas: sends each request to one replica, routes
the outputs that come back to the HTTP request waiting for them, and keeps the replicas alive.

With `--dp M` there are M replicas (engine cores, each with its own tensor-parallel group and
GPUs). A new engine request goes to the replica with the lowest `waiting * 4 + running`
(load_balancer.py); an abort goes to the replica that owns the request. One asyncio task per
replica reads its output socket.

A replica that dies is seen at once (its process sentinel, or its Ray actor call ending): its
requests in flight fail with 503, new requests go to the others, and it is restarted with
backoff (replica_supervisor.py). When no replica is up, requests get 503 at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, fields

import zmq
import zmq.asyncio

from tenk.server import wire
from tenk.server.load_balancer import LeastLoaded
from tenk.server.metrics import ServerMetrics
from tenk.server.replica import (
    Replica,
    ReplicaLauncher,
)
from tenk.server.replica_supervisor import restart_replica

log = logging.getLogger("tenk.server")

LOG_STATS_S = 10.0


class EngineDeadError(Exception):
    """No engine can run the request (its replica died, or none is up); the API answers 503."""


class RequestFailedError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class _Route:
    """Where the outputs of one engine request go, and its timing for the metrics."""

    queue: OutputQueue
    prompt_index: int
    remaining: int  # samples not finished yet
    last_time: list[float | None]  # per sample: when its last token arrived (None: none yet)


class OutputQueue:
    """All outputs of one HTTP request (it may hold several prompts, each with n samples).
    Items are `(prompt_index, RequestDelta)` or an exception to raise in the reader."""

    def __init__(self, arrival_time: float):
        self.arrival_time = arrival_time  # time.monotonic() when the HTTP request arrived
        self.queue: asyncio.Queue = asyncio.Queue()
        self.open_ids: dict[str, ReplicaLink] = {}  # engine requests not finished yet -> their replica

    async def get(self):
        item = await self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item


def _log_send_error(fut) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("could not send to an engine replica: %s", fut.exception())


class ReplicaLink:
    """One replica as the API process sees it: its sockets, its last stats, the requests it
    owns, and whether it is up."""

    def __init__(self, index: int, replica: Replica):
        self.index = index
        self.label = str(index)  # the `engine` label of its metrics
        self.replica: Replica | None = replica
        self.starting: Replica | None = None  # a restart in progress (killed if the server stops)
        self.state = "up"  # up | down (dead, a restart is pending) | starting (restarting)
        self.reason: str | None = None  # why it is not up
        self.stats: wire.Stats | None = None
        self.routes: dict[str, _Route] = {}
        self.restarts = 0
        self.failures_in_row = 0  # restarts since it last stayed up a while (backoff)
        self.up_since = time.monotonic()
        self.sock_in: zmq.asyncio.Socket | None = None
        self.sock_out: zmq.asyncio.Socket | None = None
        self.reader: asyncio.Task | None = None

    @property
    def up(self) -> bool:
        return self.state == "up"

    def load(self) -> tuple[int, int]:
        """(waiting, running) for the load balancer. The engine's stats are up to a few hundred
        ms old; the number of requests this process has sent and not seen finish is exact. So:
        running as the stats say (never more than it owns), and every other owned request
        counts as waiting, including those sent since the stats."""
        owned = len(self.routes)
        running = min(self.stats.num_running if self.stats is not None else 0, owned)
        return owned - running, running

    def describe(self) -> dict:
        """This replica in /health."""
        d = {"engine": self.label, "state": self.state, "restarts": self.restarts, "requests": len(self.routes)}
        if self.replica is not None and self.up:
            d["where"] = self.replica.where
        if self.reason is not None and not self.up:
            d["error"] = self.reason
        return d


class EngineClient:
    """With `--api-server-count K`, each of the K API processes holds one of these with its own
    `client_index` (the engines send its outputs to its own socket) and `owns_replicas=False`:
    the parent process starts, watches and restarts the replicas and tells every API process
    (api_servers.py)."""

    def __init__(self, replicas: list[Replica], metrics: ServerMetrics | None = None,
                 launcher: ReplicaLauncher | None = None, restart: bool = True, client_index: int = 0,
                 owns_replicas: bool = True):  # fmt: skip
        assert replicas and all(r.ready is not None for r in replicas), "wait_ready() first"
        self.links = [ReplicaLink(i, r) for i, r in enumerate(replicas)]
        self.ready = replicas[0].ready
        self.metrics = metrics
        self.launcher = launcher
        self.client_index = client_index
        self.owns_replicas = owns_replicas
        self.restart = restart and (launcher is not None or not owns_replicas)  # by this process or the parent
        self.balancer = LeastLoaded()
        self.draining = False  # the server is stopping: replicas that exit now are not restarted
        self._closing = False
        self._tasks: list[asyncio.Task] = []

    # ------------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        """Open the sockets and start the output routers (inside the server's event loop)."""
        self._loop = asyncio.get_running_loop()
        self._ctx = zmq.asyncio.Context()
        for link in self.links:
            self.attach(link, link.replica)
        self._tasks.append(asyncio.create_task(self._log_stats(), name="tenk-stats-log"))

    def attach(self, link: ReplicaLink, replica: Replica) -> None:
        """Connect to a replica that is ready, and start routing its outputs."""
        link.replica = replica
        link.sock_in = self._ctx.socket(zmq.PUSH)
        link.sock_in.setsockopt(zmq.SNDHWM, 0)  # unbounded: a send never waits
        link.sock_in.setsockopt(zmq.LINGER, 0)
        link.sock_in.connect(replica.input_addr)  # connecting side: queues even before the link is up
        link.sock_out = self._ctx.socket(zmq.PULL)
        link.sock_out.setsockopt(zmq.RCVHWM, 0)
        link.sock_out.setsockopt(zmq.LINGER, 0)
        link.sock_out.connect(replica.output_addrs[self.client_index])
        link.reader = asyncio.create_task(self._output_loop(link, link.sock_out), name=f"tenk-output-router-{link.index}")
        link.stats, link.reason = None, None
        link.state, link.up_since = "up", time.monotonic()
        replica.watch(self._loop, lambda reason, r=replica: self._on_replica_exit(link, r, reason))

    def replica_back(self, index: int, replica: Replica, restarts: int) -> None:
        """The parent process restarted replica `index` (API processes that do not own their
        replicas): route to the new one."""
        link = self.links[index]
        if link.up and link.replica is not None:  # its death was never reported here
            self._on_replica_exit(link, link.replica, "it was replaced")
        link.restarts = restarts
        self.attach(link, replica)

    def _detach(self, link: ReplicaLink) -> None:
        if link.reader is not None:
            link.reader.cancel()
            link.reader = None
        for sock in (link.sock_in, link.sock_out):
            if sock is not None:
                sock.close(linger=0)
        link.sock_in = link.sock_out = None
        link.stats = None

    async def close(self, timeout: float = 10.0) -> None:
        """Abort what is left, stop every replica and wait for them."""
        self._closing = True
        for t in self._tasks:
            t.cancel()
        for link in self.links:
            if link.starting is not None:
                link.starting.kill()
            if link.replica is not None:
                link.replica.unwatch()
        if self.num_in_flight:
            self.abort_all("the server is shutting down")
        if not self.owns_replicas:  # the parent process stops them
            for link in self.links:
                self._detach(link)
                link.state = "down"
            self._ctx.term()
            return
        live = [link for link in self.links if link.up and link.replica.is_running()]
        for link in live:
            self._send(link, wire.Shutdown("server shutdown"))
        await asyncio.gather(*(asyncio.to_thread(link.replica.join, timeout) for link in live))
        for link in self.links:
            self._detach(link)
            if link.replica is not None:
                link.replica.kill()
            link.state = "down"
        self._ctx.term()
        if self.launcher is not None:
            self.launcher.close()

    def kill_all(self) -> None:
        """Stop every replica now (from any thread); the backstop after close()."""
        self._closing = True
        for link in self.links:
            for r in (link.starting, link.replica):
                if r is not None:
                    r.kill()

    @property
    def alive(self) -> bool:
        """Whether any replica can take requests."""
        return not self._closing and any(link.up for link in self.links)

    @property
    def dead_reason(self) -> str | None:
        if self.alive:
            return None
        if self._closing:
            return "The server is shutting down."
        if len(self.links) == 1:
            link = self.links[0]
            return f"{link.reason}; {'it is restarting' if self.restart else 'it is not restarted'}"
        parts = "; ".join(f"replica {link.index}: {link.reason} ({link.state})" for link in self.links)
        return f"no engine replica is running ({parts})"

    @property
    def num_in_flight(self) -> int:
        return sum(len(link.routes) for link in self.links)

    def _on_replica_exit(self, link: ReplicaLink, replica: Replica, reason: str) -> None:
        if self._closing or replica is not link.replica or replica.stopping or not link.up:
            return
        link.state, link.reason = "down", reason
        n = len(link.routes)
        msg = f"engine replica {link.index} died while running this request ({reason}); retry it"
        if len(self.links) == 1:
            msg = f"the engine died while running this request ({reason}); retry it"
        queues = {r.queue for r in link.routes.values()}
        for rid, route in link.routes.items():
            route.queue.open_ids.pop(rid, None)
        link.routes.clear()
        for q in queues:
            q.queue.put_nowait(EngineDeadError(msg))
        if self.metrics is not None:
            self.metrics.replica_failed(link.label, n)
        self._detach(link)
        replica.kill()  # reap it, remove its sockets
        others = sum(1 for lk in self.links if lk.up)
        if self.draining:
            log.info("engine replica %d exited during shutdown (%s); %d requests on it fail", link.index, reason, n)
            return
        log.error("engine replica %d (%s) died: %s; %d requests in flight on it fail with 503; %d of %d replicas "
                  "still serve", link.index, replica.where, reason, n, others, len(self.links))  # fmt: skip
        if self.restart and self.owns_replicas:
            self._tasks = [t for t in self._tasks if not t.done()]
            self._tasks.append(asyncio.create_task(restart_replica(self, link), name=f"tenk-restart-{link.index}"))

    @property
    def closing(self) -> bool:
        return self._closing

    # ------------------------------------------------------------------ requests

    def _send(self, link: ReplicaLink, msg) -> None:
        # The PUSH socket has no send limit, so this completes at once; the future only
        # reports errors, which must not pass silently.
        fut = link.sock_in.send(wire.encode(msg))
        fut.add_done_callback(_log_send_error)

    def add(self, queue: OutputQueue, request_id: str, prompt_index: int, prompt_token_ids: list[int],
            params: dict, n: int) -> None:  # fmt: skip
        i = None if self._closing else self.balancer.pick([lk.load() if lk.up else None for lk in self.links])
        if i is None:
            raise EngineDeadError(self.dead_reason or "The server is shutting down.")
        link = self.links[i]
        link.routes[request_id] = _Route(queue, prompt_index, n, [None] * n)
        queue.open_ids[request_id] = link
        if self.metrics is not None:
            self.metrics.routed(link.label)
        self._send(link, wire.AddRequest(request_id, prompt_token_ids, params, time.time(), self.client_index))

    def abort(self, queue: OutputQueue) -> None:
        """Abort every unfinished engine request of this HTTP request (client gone, or error)."""
        if not queue.open_ids:
            return
        owned, queue.open_ids = queue.open_ids, {}
        now = time.monotonic()
        by_link: dict[ReplicaLink, list[str]] = {}
        for rid, link in owned.items():
            route = link.routes.pop(rid, None)
            if route is None:
                continue
            by_link.setdefault(link, []).append(rid)
            if self.metrics is not None:
                for _ in range(route.remaining):
                    self.metrics.observe_finished(now - queue.arrival_time, "abort", link.label)
        for link, ids in by_link.items():
            if link.up and not self._closing:
                self._send(link, wire.AbortRequests(ids))

    def abort_all(self, reason: str) -> None:
        queues = {r.queue for link in self.links for r in link.routes.values()}
        for q in queues:
            self.abort(q)
            q.queue.put_nowait(EngineDeadError(reason))

    # ------------------------------------------------------------------ outputs

    async def _output_loop(self, link: ReplicaLink, sock: zmq.asyncio.Socket) -> None:
        while True:
            try:
                data = await sock.recv()
                self._route(link, wire.decode(data))
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError:
                if link.sock_out is not sock:  # closed: the replica was detached
                    return
                log.exception("output router of replica %d: receive failed", link.index)
                await asyncio.sleep(0.1)
            except Exception:  # a bad message must not stop the router for everyone else
                log.exception("output router of replica %d: dropped a message", link.index)

    def _route(self, link: ReplicaLink, batch: wire.OutputBatch) -> None:
        now = time.monotonic()
        if batch.stats is not None:
            link.stats = batch.stats
        metrics, routes, label = self.metrics, link.routes, link.label
        for d in batch.deltas:
            route = routes.get(d.request_id)
            if route is None:  # aborted meanwhile
                continue
            q = route.queue
            q.queue.put_nowait((route.prompt_index, d))
            if metrics is not None and d.new_token_ids:
                last = route.last_time[d.index]
                if last is None:
                    metrics.observe_ttft(now - q.arrival_time, label)
                else:
                    metrics.observe_itl(now - last, label)
                route.last_time[d.index] = now
            if d.finish_reason is not None:
                if metrics is not None:
                    metrics.observe_finished(now - q.arrival_time, d.finish_reason, label)
                route.remaining -= 1
                if route.remaining == 0:
                    del routes[d.request_id]
                    q.open_ids.pop(d.request_id, None)
        for f in batch.failures:
            route = routes.pop(f.request_id, None)
            if route is None:
                continue
            route.queue.open_ids.pop(f.request_id, None)
            route.queue.queue.put_nowait(RequestFailedError(f.status, f.message))

    # ------------------------------------------------------------------ stats

    async def _log_stats(self) -> None:
        """Every LOG_STATS_S while there is traffic, one line per replica like vLLM's throughput log."""
        last: dict[int, tuple[wire.Stats, float]] = {}
        while True:
            await asyncio.sleep(LOG_STATS_S)
            now = time.monotonic()
            for link in self.links:
                s, prev = link.stats, last.get(link.index)
                if s is None:
                    last.pop(link.index, None)
                    continue
                last[link.index] = (s, now)
                if prev is None or prev[0] == s:  # no baseline yet, or nothing happened
                    continue
                p, dt = prev[0], now - prev[1]
                q = s.prefix_cache_queries - p.prefix_cache_queries
                h = s.prefix_cache_hits - p.prefix_cache_hits
                log.info(
                    "engine %d: prompt %.1f tok/s, generation %.1f tok/s, running %d, waiting %d, KV cache %.1f%%, "
                    "prefix cache hits %.1f%%", link.index, (s.prompt_tokens_total - p.prompt_tokens_total) / dt,
                    (s.generation_tokens_total - p.generation_tokens_total) / dt, s.num_running, s.num_waiting,
                    100 * s.kv_cache_usage, 100 * h / q if q else 0.0,
                )  # fmt: skip

    def stats_by_engine(self) -> dict[str, wire.Stats | None]:
        return {link.label: link.stats for link in self.links}

    def up_by_engine(self) -> dict[str, bool]:
        return {link.label: link.up for link in self.links}

    @property
    def stats(self) -> wire.Stats | None:
        """All replicas' stats added up (KV usage: their mean); None before any arrived."""
        known = [link.stats for link in self.links if link.stats is not None]
        if not known:
            return None
        if len(known) == 1:
            return known[0]
        total = {f.name: sum(getattr(s, f.name) for s in known) for f in fields(wire.Stats)}
        total["kv_cache_usage"] /= len(known)
        return wire.Stats(**total)
