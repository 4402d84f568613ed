"""`--api-server-count K`: K API processes in front of the same engine replicas.

One API process (HTTP, pydantic, tokenization, one SSE chunk per token) streams some 30K
tokens/s on one core; replicas on several GPUs make more than that. So, as vLLM does, the
parent process here:
- reserves the port (hold_port) and starts the replicas (each engine core binds one output socket
  per API process and sends each request's outputs to the process that sent it, its stats to all);
- spawns K API processes (api_worker.py) that each connect to every replica and listen on the
  port: on Linux each with its own SO_REUSEPORT socket, so the kernel spreads new connections
  over them by address hash (one shared socket gives a burst of connections to whichever process
  wakes first: measured 64 of 64 on one of two processes with the CPUs busy), elsewhere on one
  shared socket;
- owns the replicas: watches them, restarts one that dies (replica_supervisor.py) and tells the
  API processes over a pipe, so each fails its own in-flight requests with 503 and routes to the
  new one once it is up;
- restarts an API process that dies (its connections are lost; the engines abort its requests);
- on SIGTERM / Ctrl-C lets the API processes drain, then stops the replicas.

/metrics is aggregated over the API processes with prometheus_client's multiprocess mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

import zmq

from tenk.server import wire
from tenk.server.api_worker import ReplicaInfo, run_api_worker
from tenk.server.args import ServerArgs
from tenk.server.engine_client import ReplicaLink
from tenk.server.launcher import EndpointHandle, bind, hold_port, resolve_model, server_url, start_replicas
from tenk.server.replica import Replica, ReplicaLauncher
from tenk.server.replica_supervisor import restart_replica

log = logging.getLogger("tenk.server")
SPREAD_CONNECTIONS = sys.platform.startswith("linux")

WORKER_START_TIMEOUT_S = 120.0  # an API process loads the tokenizer and the app, then serves
WORKER_RESTART_DELAY_S = 1.0


@contextlib.contextmanager
def _env(**values: str):
    """Environment for the processes started inside (spawn copies it); this process's own
    prometheus_client already chose its mode at import and is not affected."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _Worker:
    def __init__(self, index: int, process: multiprocessing.Process, conn):
        self.index = index
        self.process = process
        self.conn = conn  # the parent's end of the pipe
        self.pid: int | None = None  # set when it says it serves


class ApiServerPool:
    def __init__(self, args: ServerArgs):
        self.args = args
        self.num_workers = args.api_server_count
        self.links: list[ReplicaLink] = []
        self.workers: list[_Worker | None] = [None] * self.num_workers
        self.launcher: ReplicaLauncher | None = None
        self.metrics = None  # replica_supervisor's hook; the API processes count restarts
        self.closing = False
        self.draining = False
        self.sock = None
        self.port = 0
        self.metrics_dir = ""
        self._ctx = zmq.Context()
        self._inputs: dict[int, zmq.Socket] = {}  # replica index -> PUSH to its input (ClientGone, Shutdown)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task] = []
        self._stopped = False

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        """Bind, start the replicas and the API processes; returns once all serve (blocking)."""
        resolve_model(self.args)
        # With a socket of its own per API process, this one only holds the port (and picks it for port 0).
        self.sock = (hold_port if SPREAD_CONNECTIONS else bind)(self.args.host, self.args.port)
        self.port = self.sock.getsockname()[1]
        try:
            self.launcher = ReplicaLauncher(self.args)
            replicas, _ = start_replicas(self.args, self.launcher, load_tokenizer=False)
            self.links = [ReplicaLink(i, r) for i, r in enumerate(replicas)]
            for link in self.links:
                self._connect_input(link)
            self.metrics_dir = tempfile.mkdtemp(prefix="tenk-metrics-")
            for k in range(self.num_workers):
                self._spawn(k)
            deadline = time.monotonic() + WORKER_START_TIMEOUT_S
            for w in self.workers:
                self._wait_started(w, deadline)
        except BaseException:
            self.kill_all()
            raise

    def _info(self, link: ReplicaLink) -> ReplicaInfo:
        r = link.replica
        return ReplicaInfo(link.index, r.ready, r.input_addr, list(r.output_addrs), r.pid, r.where, link.restarts,
                           None if link.up else (link.reason or "it is down"))  # fmt: skip

    def _spawn(self, k: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        infos = [self._info(link) for link in self.links]
        proc = ctx.Process(target=run_api_worker, args=(self.args, k, infos, None if SPREAD_CONNECTIONS else self.sock,
                                                      self.port, child_conn),
                           name=f"tenk-api-{k}", daemon=True)  # fmt: skip
        with _env(PROMETHEUS_MULTIPROC_DIR=self.metrics_dir):
            proc.start()
        child_conn.close()
        self.workers[k] = _Worker(k, proc, parent_conn)

    def _wait_started(self, w: _Worker, deadline: float) -> None:
        while True:
            if w.conn.poll(0.1):
                msg = w.conn.recv()
                if msg[0] == "started":
                    w.pid = msg[1]
                    return
            if not w.process.is_alive():
                raise RuntimeError(f"API process {w.index} exited during start (exit code {w.process.exitcode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"API process {w.index} did not start within {WORKER_START_TIMEOUT_S:.0f} s")

    def _connect_input(self, link: ReplicaLink) -> None:
        sock = self._ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(link.replica.input_addr)
        old = self._inputs.pop(link.index, None)
        if old is not None:
            old.close(linger=0)
        self._inputs[link.index] = sock

    def _send_engine(self, link: ReplicaLink, msg) -> None:
        sock = self._inputs.get(link.index)
        if sock is None:
            return
        try:
            sock.send(wire.encode(msg), zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("could not tell engine replica %d %s: %s", link.index, type(msg).__name__, exc)

    # ------------------------------------------------------------------ supervise

    async def supervise(self, stop: asyncio.Event) -> None:
        """Watch replicas and API processes until `stop` is set, then shut everything down."""
        self._loop = asyncio.get_running_loop()
        for link in self.links:
            self._watch_replica(link, link.replica)
        for w in self.workers:
            self._watch_worker(w)
        names = ", ".join(self.args.model_names)
        url = server_url(self.args.host, self.port)
        log.info("tenk is serving %s at %s (OpenAI API at %s/v1) with %d API processes", names, url, url,
                 self.num_workers)  # fmt: skip
        try:
            await stop.wait()
        finally:
            await self.stop()

    def _watch_replica(self, link: ReplicaLink, replica: Replica) -> None:
        replica.watch(self._loop, lambda reason: self._on_replica_exit(link, replica, reason))

    def _on_replica_exit(self, link: ReplicaLink, replica: Replica, reason: str) -> None:
        if self.closing or replica is not link.replica or replica.stopping or not link.up:
            return
        link.state, link.reason = "down", reason
        self._broadcast(("down", link.index, reason))
        sock = self._inputs.pop(link.index, None)
        if sock is not None:
            sock.close(linger=0)
        replica.kill()
        if self.draining:
            return
        log.error("engine replica %d (%s) died: %s", link.index, replica.where, reason)
        if self.args.restart_replicas:
            self._tasks = [t for t in self._tasks if not t.done()]
            self._tasks.append(asyncio.create_task(restart_replica(self, link), name=f"tenk-restart-{link.index}"))

    def attach(self, link: ReplicaLink, replica: Replica) -> None:
        """A restarted replica is ready (replica_supervisor calls this): tell the API processes."""
        link.replica, link.reason = replica, None
        link.state, link.up_since = "up", time.monotonic()
        self._connect_input(link)
        self._watch_replica(link, replica)
        self._broadcast(("up", self._info(link)))

    def _broadcast(self, msg) -> None:
        for w in self.workers:
            if w is not None and w.process.is_alive():
                try:
                    w.conn.send(msg)
                except (OSError, EOFError):
                    pass  # it is dying; its exit is handled on its own

    def _watch_worker(self, w: _Worker) -> None:
        def exited() -> None:
            self._loop.remove_reader(w.process.sentinel)
            self._on_worker_exit(w)

        self._loop.add_reader(w.process.sentinel, exited)

    def _on_worker_exit(self, w: _Worker) -> None:
        w.process.join(1)
        if self.closing:
            return
        for link in self.links:  # whatever it had in flight is lost with its connections
            if link.up:
                self._send_engine(link, wire.ClientGone(w.index))
        w.conn.close()
        self._tasks.append(asyncio.create_task(self._restart_worker(w)))

    async def _restart_worker(self, old: _Worker) -> None:
        # Ctrl-C reaches every process of the group at once: an API process that stopped for it
        # is not restarted once this process, a moment later, is shutting down too.
        await asyncio.sleep(WORKER_RESTART_DELAY_S)
        if self.closing:
            return
        log.error("API process %d (pid %s) exited unexpectedly (exit code %s): its connections were lost and its "
                  "requests aborted; restarting it", old.index, old.process.pid, old.process.exitcode)  # fmt: skip
        self._spawn(old.index)
        w = self.workers[old.index]
        try:
            await asyncio.to_thread(self._wait_started, w, time.monotonic() + WORKER_START_TIMEOUT_S)
        except RuntimeError as exc:
            log.error("%s", exc)  # its sentinel fires (or it is killed at shutdown); retried from there
        else:
            log.info("API process %d is back (pid %d)", old.index, w.pid)
        if not self.closing:
            self._watch_worker(w)

    # ------------------------------------------------------------------ stop

    async def stop(self) -> None:
        """Let the API processes drain (they get SIGTERM), then stop the replicas."""
        if self._stopped:
            return
        self._stopped = True
        self.closing = self.draining = True
        for t in self._tasks:
            t.cancel()
        workers = [w for w in self.workers if w is not None]
        for w in workers:
            self._loop.remove_reader(w.process.sentinel)
            if w.process.is_alive():
                os.kill(w.process.pid, signal.SIGTERM)
        if self.sock is not None:  # new connections are refused once the API processes close theirs
            self.sock.close()
            self.sock = None
        wait = self.args.graceful_shutdown_s + 15
        await asyncio.gather(*(asyncio.to_thread(w.process.join, wait) for w in workers))
        for w in workers:
            if w.process.is_alive():
                w.process.kill()
                w.process.join(5)
        live = [link for link in self.links if link.up and link.replica.is_running()]
        for link in live:
            link.replica.unwatch()
            self._send_engine(link, wire.Shutdown("server shutdown"))
        await asyncio.gather(*(asyncio.to_thread(link.replica.join, 10.0) for link in live))
        self.kill_all()

    def kill_all(self) -> None:
        """Stop every process now (from any thread); the backstop after stop()."""
        self.closing = True
        for w in self.workers:
            if w is not None and w.process.is_alive():
                w.process.kill()
        for link in self.links:
            for r in (link.starting, link.replica):
                if r is not None:
                    r.unwatch()
                    r.kill()
        for sock in self._inputs.values():
            sock.close(linger=0)
        self._inputs.clear()
        if self.launcher is not None:
            self.launcher.close()
            self.launcher = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.metrics_dir:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            self.metrics_dir = ""


class PoolHandle(EndpointHandle):
    """What `launch()` returns with --api-server-count > 1 (the server runs in a thread here,
    its API processes and replicas in their own processes)."""

    def __init__(self, pool: ApiServerPool):
        self.pool = pool
        self.host, self.port = pool.args.host, pool.port
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None

    @property
    def engine_pids(self) -> list[int | None]:
        return [link.replica.pid if link.up else None for link in self.pool.links]

    @property
    def api_pids(self) -> list[int | None]:
        return [w.process.pid if w is not None and w.process.is_alive() else None for w in self.pool.workers]

    def _run(self, started: threading.Event) -> None:
        async def main():
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            started.set()
            await self.pool.supervise(self._stop)

        asyncio.run(main())

    def stop(self, timeout: float | None = None) -> None:
        if self._loop is not None and self.thread is not None and self.thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self.thread.join(timeout if timeout is not None else self.pool.args.graceful_shutdown_s + 40)
        self.pool.kill_all()


def launch_pool(args: ServerArgs, ready_timeout: float = 60.0) -> PoolHandle:
    pool = ApiServerPool(args)
    pool.start()
    handle = PoolHandle(pool)
    started = threading.Event()
    handle.thread = threading.Thread(target=handle._run, args=(started,), name="tenk-api-pool", daemon=True)
    handle.thread.start()
    if not started.wait(ready_timeout):
        handle.stop(5)
        raise RuntimeError("the API process supervisor did not start")
    return handle


def serve_pool_forever(args: ServerArgs) -> None:
    """Foreground: serve until SIGTERM / Ctrl-C, then drain and stop."""
    pool = ApiServerPool(args)
    pool.start()

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await pool.supervise(stop)

    try:
        asyncio.run(main())
    finally:
        pool.kill_all()
