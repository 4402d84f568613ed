"""One engine replica as the API process starts, watches and stops it: a local process
(multiprocessing, the default) or a Ray actor (`--distributed-executor ray`). Both run the same
engine-core loop and are reached the same way, msgpack over ZMQ: ipc:// sockets for a local
process, tcp:// on the actor's node for Ray.

`ReplicaLauncher(args).start(i)` starts replica i; the caller then `wait_ready()`s it (blocking:
the model loads), `watch()`es it from the event loop, and `kill()`s it at the end.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import multiprocessing
import shutil
import tempfile
import time
from collections.abc import Callable

from tenk.errors import TenkError
from tenk.server import wire
from tenk.server.args import ServerArgs
from tenk.server.engine_core import (
    EngineCoreArgs,
    run_engine_core,
    start_engine_core_in_actor,
)
from tenk.server.placement import replica_envs

log = logging.getLogger("tenk.server")


class EngineStartError(TenkError):
    """The engine process could not start (bad model, bad config)."""


class EngineProcess:
    """A replica in a local process, started at once (the model loads before serving)."""

    def __init__(self, engine_kwargs: dict, log_level: str, env: dict[str, str] | None = None, index: int = 0,
                 num_clients: int = 1):  # fmt: skip
        self.index = index
        self.tmpdir = tempfile.mkdtemp(prefix="tenk-ipc-")
        self.input_addr = f"ipc://{self.tmpdir}/input"
        self.output_addrs = [f"ipc://{self.tmpdir}/output-{k}" for k in range(num_clients)]  # one per API process
        self.env = {k: str(v) for k, v in (env or {}).items()}
        self.core_args = EngineCoreArgs(dict(engine_kwargs), self.input_addr, self.output_addrs, log_level, self.env)
        ctx = multiprocessing.get_context("spawn")
        self._ready_recv, ready_send = ctx.Pipe(duplex=False)
        # Not a daemon: a tensor-parallel engine starts rank processes, which daemons may not.
        # The atexit hook stops it instead if this process ends without stopping the server.
        self.process = ctx.Process(target=run_engine_core, args=(self.core_args, ready_send),
                                   name=f"tenk-engine-core-{index}")  # fmt: skip
        atexit.register(self.kill)
        try:
            self.process.start()
        except BaseException:  # e.g. a script without the `if __name__ == "__main__":` guard
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            atexit.unregister(self.kill)
            raise
        ready_send.close()
        self.ready: wire.Ready | None = None
        self.stopping = False  # set when this side ends it on purpose
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def where(self) -> str:
        gpus = self.env.get("CUDA_VISIBLE_DEVICES")
        return f"pid {self.process.pid}" + (f", GPUs {gpus}" if gpus is not None else "")

    def wait_ready(self, timeout: float | None = None) -> wire.Ready:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._ready_recv.poll(0.2):
                try:
                    msg = wire.decode(self._ready_recv.recv_bytes())
                except EOFError:
                    msg = None
                if isinstance(msg, wire.Ready):
                    self.ready = msg
                    return msg
                self.kill()
                if isinstance(msg, wire.StartupFailed):
                    raise EngineStartError(msg.message)
                raise EngineStartError(f"the engine process exited during start (exit code {self.process.exitcode})")
            if not self.process.is_alive():
                self.kill()
                raise EngineStartError(f"the engine process exited during start (exit code {self.process.exitcode})")
            if deadline is not None and time.monotonic() > deadline:
                self.kill()
                raise EngineStartError(f"the engine did not become ready within {timeout:.0f} s")

    def watch(self, loop: asyncio.AbstractEventLoop, on_exit: Callable[[str], None]) -> None:
        """Call `on_exit(reason)` in `loop` when the process ends (it is polled through its
        sentinel, so a SIGKILL is seen at once)."""
        self._loop = loop

        def exited() -> None:
            self.unwatch()
            self.process.join(1)
            on_exit(f"the engine process exited unexpectedly (exit code {self.process.exitcode})")

        loop.add_reader(self.process.sentinel, exited)

    def unwatch(self) -> None:
        if self._loop is not None:
            try:
                self._loop.remove_reader(self.process.sentinel)
            except Exception:  # the loop is already closed
                pass
            self._loop = None

    def is_running(self) -> bool:
        return self.process.is_alive()

    def join(self, timeout: float) -> None:
        self.process.join(timeout)

    def kill(self) -> None:
        self.stopping = True
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        atexit.unregister(self.kill)


class RayEngineReplica:
    """A replica as a Ray actor on whichever node has its resources; it listens on tcp on that
    node's address (ports picked at bind time) and tells this process where."""

    def __init__(self, engine_kwargs: dict, log_level: str, env: dict[str, str], index: int,
                 num_cpus: float, num_gpus: float, num_clients: int = 1):  # fmt: skip
        from tenk.parallel.ray_executor import RayReplicaActor

        self.index = index
        self.num_clients = num_clients
        self.engine_kwargs, self.log_level = dict(engine_kwargs), log_level
        # Ray sets CUDA_VISIBLE_DEVICES to the GPUs it grants the actor; never override that.
        self.env = {k: str(v) for k, v in env.items() if k != "CUDA_VISIBLE_DEVICES"}
        self.actor = RayReplicaActor(f"engine replica {index}", num_cpus, num_gpus, self.env)
        self.ready: wire.Ready | None = None
        self.input_addr = ""
        self.output_addrs: list[str] = []
        self.stopping = False

    @property
    def pid(self) -> int | None:
        return self.actor.pid

    @property
    def where(self) -> str:
        gpus = f", {self.actor.num_gpus:g} GPUs" if self.actor.num_gpus else ""
        node = f"{self.actor.node} ({(self.actor.node_id or '')[:8]})"
        return f"Ray actor on node {node}, pid {self.actor.pid}{gpus}"

    def _core_args(self, node_ip: str) -> tuple:
        host = f"[{node_ip}]" if ":" in node_ip else node_ip
        outputs = [f"tcp://{host}:*"] * self.num_clients
        return (EngineCoreArgs(self.engine_kwargs, f"tcp://{host}:*", outputs, self.log_level, self.env),)

    def wait_ready(self, timeout: float | None = None) -> wire.Ready:
        try:
            info = self.actor.start(start_engine_core_in_actor, self._core_args, timeout=timeout)
        except TimeoutError as exc:
            self.kill()
            raise EngineStartError(str(exc)) from None
        except Exception as exc:  # the actor died while starting
            self.kill()
            raise EngineStartError(f"the Ray actor of engine replica {self.index} failed to start: {exc}") from None
        if isinstance(info, wire.StartupFailed):
            self.kill()
            raise EngineStartError(info.message)
        self.ready, self.input_addr, self.output_addrs = info
        return self.ready

    def watch(self, loop: asyncio.AbstractEventLoop, on_exit: Callable[[str], None]) -> None:
        """Start the actor's engine-core loop; `on_exit(reason)` runs in `loop` when it ends."""

        def exited(reason: str) -> None:
            if not self.stopping:
                loop.call_soon_threadsafe(on_exit, reason)

        self.actor.run(exited)

    def unwatch(self) -> None:
        pass  # kill() stops the watcher; a loop that ends on purpose is not reported (stopping)

    def is_running(self) -> bool:
        return self.actor.is_running()

    def join(self, timeout: float) -> None:
        self.actor.join(timeout)

    def kill(self) -> None:
        self.stopping = True
        self.actor.kill()


Replica = EngineProcess | RayEngineReplica


class ReplicaLauncher:
    """Starts replica i of a server, the first time and on every restart."""

    def __init__(self, args: ServerArgs):
        self.args = args
        self.log_level = args.log_level.upper()
        engine = args.engine_kwargs
        tp = int(engine.get("tensor_parallel_size") or 1)
        device = str(engine.get("device") or "auto")
        self.ray_resources: tuple[float, float] | None = None
        self.ray_joined = False
        if args.distributed_executor == "ray":
            from tenk.parallel import ray_executor

            cluster, self.ray_joined = ray_executor.connect(args.ray_address)
            self.ray_resources = ray_executor.resources_for_replica(tp, device, cluster)
            self.envs = [dict(args.engine_env) for _ in range(args.data_parallel_size)]
            log.info("Ray cluster: %s; each replica asks for %g CPUs, %g GPUs",
                     {k: v for k, v in cluster.items() if k in ("CPU", "GPU", "memory")}, *self.ray_resources)  # fmt: skip
        else:
            self.envs = replica_envs(args.data_parallel_size, tp, device, args.engine_env)

    def start(self, index: int) -> Replica:
        if self.ray_resources is not None:
            num_cpus, num_gpus = self.ray_resources
            return RayEngineReplica(self.args.engine_kwargs, self.log_level, self.envs[index], index, num_cpus, num_gpus,
                                    self.args.api_server_count)  # fmt: skip
        return EngineProcess(self.args.engine_kwargs, self.log_level, self.envs[index], index, self.args.api_server_count)

    def close(self) -> None:
        if self.ray_joined:
            from tenk.parallel import ray_executor

            ray_executor.disconnect()
            self.ray_joined = False
