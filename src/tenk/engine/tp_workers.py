"""Tensor-parallel ranks 1..N-1 of one engine: a spawned process each, driven by method name.

Rank 0 lives in the engine's process: it schedules, samples, and sends every method that all
ranks must run, as (name, args), to the others before running it itself (ModelRunner.call).
Workers run what they receive and return nothing; since every rank runs the same forward on
the same packed batch, their collectives pair up (row-parallel all-reduces, the logits'
all-gather, the broadcast of the sampled tokens).

Start: rank 0 opens a TCP store on a free port and spawns the workers; each joins it and says
"joining", then all create the process group (gloo on CPU, NCCL on GPU, rank r on cuda:base+r)
and load their shard; each worker then says "ready", or "error" with what failed. Every wait
on a worker also watches that it lives, so a dead worker makes the engine raise
WorkerDiedError instead of hanging. A worker exits when told, when rank 0's end of its pipe
closes (the engine's process died), or when its parent is gone."""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from tenk.engine.config import EngineConfig
from tenk.engine.errors import WorkerDiedError
from tenk.engine.model_runner import ModelRunner
from tenk.errors import ConfigError, TenkError
from tenk.parallel.launch import init_tp, shutdown_tp
from tenk.parallel.state import get_tp_size, set_tp_group

logger = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 120.0  # spawn + importing torch, on a busy host
READY_TIMEOUT_S = 3600.0  # loading a shard of a large checkpoint
COLLECTIVE_TIMEOUT_S = 600.0  # a collective waiting this long on a live but stuck peer fails
EXIT_TIMEOUT_S = 10.0  # then a worker that was told to exit is killed
DEATH_GRACE_S = 2.0  # after a failed collective: how long a dying peer gets to show its exit code
EVENT_POLL_S = 20e-6


def start_runner(config: EngineConfig, eos_token_ids: tuple[int, ...]) -> ModelRunner:
    """Rank 0's ModelRunner, its model loaded; with TP > 1 every other rank's too, each in
    its own process. The caller closes it (`runner.close()`)."""
    if config.tensor_parallel_size == 1:
        if get_tp_size() != 1:
            raise ConfigError("a tensor-parallel engine is open in this process: close it before starting another engine")
        return ModelRunner(config, eos_token_ids)
    workers = TPWorkers(config, eos_token_ids)
    try:
        runner = ModelRunner(config, eos_token_ids, rank=0)
        workers.wait_all("ready", READY_TIMEOUT_S)
    except BaseException:
        workers.close()
        raise
    runner.workers = workers
    return runner


class TPWorkers:
    """Rank 0's handle on ranks 1..N-1: start them, send them methods, watch them, stop them."""

    def __init__(self, config: EngineConfig, eos_token_ids: tuple[int, ...]):
        n = config.tensor_parallel_size
        device = config.torch_device
        if dist.is_initialized():
            raise ConfigError(
                "torch.distributed is already initialized in this process (another tensor-parallel engine?): "
                "close it before starting a tensor-parallel engine"
            )
        self.procs: list[mp.Process] = []
        self.conns: list[multiprocessing.connection.Connection] = []
        self.failure: str | None = None  # set once a worker is found dead; every later call raises it
        self.closed = False
        self.joined = False  # this process joined the TP group
        self.joining = True  # workers are still starting
        # Set here, so the workers inherit them. All ranks live on this host: loopback only.
        if device.type == "cuda":
            os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast (NVLS) off
        elif sys.platform == "linux":
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        threads = max(1, (os.cpu_count() or 1) // n) if device.type == "cpu" else 0
        listen = socket.socket()
        listen.bind(("127.0.0.1", 0))  # torch's own store would listen on every interface
        listen.listen(128)
        port = listen.getsockname()[1]
        self.store = dist.TCPStore(
            "127.0.0.1", port, n, is_master=True, timeout=timedelta(seconds=JOIN_TIMEOUT_S),
            wait_for_workers=False, master_listen_fd=listen.detach(),
        )  # fmt: skip
        ctx = mp.get_context("spawn")  # fork would copy a CUDA context, or a half-held lock
        atexit.register(self.close)
        try:
            for rank in range(1, n):
                ours, theirs = ctx.Pipe()
                proc = ctx.Process(
                    target=worker_main, name=f"tenk-tp-rank{rank}", daemon=True,
                    args=(config, eos_token_ids, rank, self.store.port, theirs, threads, os.getpid()),
                )  # fmt: skip
                proc.start()
                theirs.close()
                self.procs.append(proc)
                self.conns.append(ours)
            self.wait_all("joining", JOIN_TIMEOUT_S)
            self.joining = False
            init_tp(0, n, device=device, store=self.store, timeout_s=COLLECTIVE_TIMEOUT_S)
            self.joined = True
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ driving

    def send(self, method: str, args: tuple) -> None:
        self._check_usable()
        payload = pickle.dumps((method, args), protocol=pickle.HIGHEST_PROTOCOL)
        for conn in self.conns:
            conn.send_bytes(payload)

    @contextmanager
    def watch(self):
        """Around work every rank does together. If it fails, the ranks are out of step, so
        every later call raises; if it failed because a worker died, WorkerDiedError says which."""
        self._check_usable()
        try:
            yield
        except WorkerDiedError:
            raise
        except BaseException as exc:  # Ctrl-C included: the workers may wait in a collective
            if self.failure is None:
                if isinstance(exc, Exception):
                    self.raise_if_dead(DEATH_GRACE_S, exc)
                self.failure = (
                    f"rank 0 stopped in the middle of a step ({type(exc).__name__}: {exc}), which leaves the "
                    "tensor-parallel ranks out of step; start a new engine"
                )
            raise

    def wait_event(self, event: "torch.cuda.Event") -> None:
        """event.synchronize(), but checking twice a second that every worker lives: a dead
        rank leaves its peers' collectives, and so the event, pending forever."""
        last = time.monotonic()
        while not event.query():
            time.sleep(EVENT_POLL_S)
            if time.monotonic() - last > 0.5:
                self.raise_if_dead(0.0)
                last = time.monotonic()

    # ------------------------------------------------------------------ health

    def _check_usable(self) -> None:
        if self.failure is not None:
            raise WorkerDiedError(self.failure)
        if self.closed:
            raise WorkerDiedError("this engine was closed: start a new one")

    def raise_if_dead(self, grace_s: float = 0.0, cause: BaseException | None = None) -> None:
        """Raise WorkerDiedError if a worker has exited (waiting up to grace_s for one to)."""
        deadline = time.monotonic() + grace_s
        while True:
            for rank, proc in enumerate(self.procs, start=1):
                if proc.exitcode is not None:
                    self._fail(rank, cause)
            if time.monotonic() >= deadline:
                return
            time.sleep(0.02)

    def _fail(self, rank: int, cause: BaseException | None = None, reported: str | None = None) -> None:
        """Record and raise why worker `rank` is gone: the error it reported, or its exit."""
        proc, conn = self.procs[rank - 1], self.conns[rank - 1]
        proc.join(DEATH_GRACE_S)  # a worker that reported an error is exiting
        try:
            while conn.poll(0):
                msg = conn.recv()
                reported = msg[1] if msg[0] == "error" else reported
        except (EOFError, OSError):
            pass
        code = proc.exitcode
        if reported:
            how = f"failed: {reported}"
        elif code is None:
            how = "stopped answering"
        elif code < 0:
            how = f"was killed by signal {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        self.failure = f"tensor-parallel rank {rank} (pid {proc.pid}) {how}; this engine cannot go on, start a new one"
        if self.joining and not reported:
            self.failure = (
                f"tensor-parallel rank {rank} (pid {proc.pid}) {how} while starting. Workers are spawned, which "
                "imports the main module again: a script must start the engine under `if __name__ == '__main__':`"
            )
        raise WorkerDiedError(self.failure) from cause

    def wait_all(self, what: str, timeout_s: float) -> None:
        """Wait until every worker has said `what`; raise if one reports an error or dies."""
        pending = set(range(1, len(self.procs) + 1))
        deadline = time.monotonic() + timeout_s
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerDiedError(f"tensor-parallel rank {min(pending)} was not {what} after {timeout_s:.0f} s")
            waitables = [self.conns[r - 1] for r in pending] + [self.procs[r - 1].sentinel for r in pending]
            multiprocessing.connection.wait(waitables, timeout=min(left, 1.0))
            for rank in sorted(pending):
                conn = self.conns[rank - 1]
                if conn.poll(0):
                    try:
                        msg = conn.recv()
                    except (EOFError, OSError):
                        msg = ("gone",)
                    if msg[0] == what:
                        pending.discard(rank)
                        continue
                    if msg[0] == "error":
                        self._fail(rank, reported=msg[1])
                if not self.procs[rank - 1].is_alive():
                    self._fail(rank)

    # ------------------------------------------------------------------ stop

    def close(self) -> None:
        """Tell the workers to exit, leave the TP group, and kill a worker that lingers."""
        if self.closed:
            return
        self.closed = True
        atexit.unregister(self.close)
        payload = pickle.dumps(("exit", ()))
        for conn in self.conns:
            try:
                conn.send_bytes(payload)
            except OSError:
                pass  # that worker is gone already
        if self.joined:
            # Leaving first also frees a worker stuck in a collective with this rank.
            try:
                shutdown_tp()
            except Exception as exc:  # a broken group may not tear down cleanly; the workers still stop
                logger.warning("leaving the tensor-parallel group: %s", exc)
                set_tp_group(None, 0, 1)
            self.joined = False
        deadline = time.monotonic() + EXIT_TIMEOUT_S
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                logger.warning("tensor-parallel worker %s did not exit; killing it", proc.name)
                proc.kill()
                proc.join(5)
        for conn in self.conns:
            conn.close()
        self.store = None


# ---------------------------------------------------------------------- worker process


def worker_main(
    config: EngineConfig, eos_token_ids: tuple[int, ...], rank: int, store_port: int,
    conn: multiprocessing.connection.Connection, threads: int, parent_pid: int,
) -> None:  # fmt: skip
    """Entry point of rank `rank`'s process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; rank 0 decides
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s %(levelname)s tp-rank{rank} %(name)s: %(message)s")
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    if threads:
        torch.set_num_threads(threads)
    n = config.tensor_parallel_size
    if config.torch_device.type == "cuda":
        config.torch_device = torch.device("cuda", (config.torch_device.index or 0) + rank)
    code = 0
    try:
        store = dist.TCPStore("127.0.0.1", store_port, n, is_master=False, timeout=timedelta(seconds=JOIN_TIMEOUT_S))
        conn.send(("joining",))
        init_tp(rank, n, device=config.torch_device, store=store, timeout_s=COLLECTIVE_TIMEOUT_S)
        runner = ModelRunner(config, eos_token_ids, rank=rank)
        conn.send(("ready",))
        while True:
            try:
                method, args = pickle.loads(conn.recv_bytes())
            except EOFError:  # rank 0's process is gone
                code = 1
                break
            if method == "exit":
                runner.release_graphs()
                break
            with torch.inference_mode():
                getattr(runner, method)(*args)
        if code == 0:
            shutdown_tp()
    except BaseException as exc:
        code = 1
        msg = str(exc) if isinstance(exc, TenkError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, TenkError):
            logger.error("tensor-parallel rank %d failed:\n%s", rank, traceback.format_exc())
        try:
            conn.send(("error", msg))
        except OSError:
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown (seconds with torch loaded)


def _exit_with_parent(parent_pid: int) -> None:
    # A worker stuck in a collective would not notice its pipe closing.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(1)
