"""Ray placement: one engine replica per Ray actor, so replicas land on whichever machines of a
Ray cluster have the GPUs (or CPUs) they ask for. tenk runs no cluster manager of its own.

The actor is generic: it runs a `start(*args) -> (info, runner)` function given by its caller
(the server passes its engine-core start, so this layer never imports the server), keeps the
runner, and runs `runner.run()` as one long actor call. That call ending (the loop stopped, or
the actor's process died) is how the caller learns that the replica is gone.

A replica asks Ray for `num_gpus = tensor_parallel_size` on GPU clusters (Ray sets the actor's
CUDA_VISIBLE_DEVICES to the GPUs it grants; the engine's tensor-parallel ranks are processes
the actor starts on those GPUs) and for CPUs only on CPU clusters.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from tenk.errors import ConfigError, TenkError

log = logging.getLogger("tenk.ray")

CALL_TIMEOUT_S = 60.0  # a small call to a live actor (its node address, its pid)
PLACEMENT_WARN_S = 30.0
REACH_TIMEOUT_S = 5.0  # a cluster's GCS port that does not answer within this is reported  # then a replica still waiting for resources is reported in the log


class RayUnavailableError(TenkError):
    """Ray is not installed, or the cluster cannot be reached."""


def _ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailableError(
            "--distributed-executor ray needs Ray: pip install 'tenk[ray]' (or pip install ray) on every node"
        ) from None
    return ray


def connect(address: str | None = None) -> tuple[dict[str, float], bool]:
    """Join the Ray cluster at `address` ("auto", "HOST:PORT", "ray://..."), or with None the
    one RAY_ADDRESS names / one running on this machine, else a new local one. Returns the
    cluster's resources (CPU, GPU counts...) and whether this call joined (False: this process
    was already connected, and whoever connected it disconnects it)."""
    ray = _ray()
    joined = not ray.is_initialized()
    if joined:
        _check_reachable(address or os.environ.get("RAY_ADDRESS"))
        try:
            # log_to_driver: the replicas' logs ("engine core shutting down", tracebacks) show
            # in the server's log like those of local engine processes.
            ray.init(address=address, log_to_driver=True, include_dashboard=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = address or os.environ.get("RAY_ADDRESS") or "a local cluster"
            raise RayUnavailableError(f"cannot join the Ray cluster at {where}: {exc}") from None
    return dict(ray.cluster_resources()), joined


def _check_reachable(address: str | None) -> None:
    """A wrong HOST:PORT fails here in seconds with a sentence; ray.init itself would retry
    for minutes, printing connection warnings."""
    if not address or address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S).close()
    except ValueError:
        raise RayUnavailableError(f"--ray-address {address!r} is not HOST:PORT") from None
    except OSError as exc:
        raise RayUnavailableError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def disconnect() -> None:
    ray = _ray()
    if ray.is_initialized():
        ray.shutdown()


class _ReplicaHost:
    """The actor. Its second concurrency slot lets the caller ask `pid`/`node` while `run`
    is going."""

    def __init__(self, env: dict[str, str]):
        # Before anything imports torch in this worker process. (Ray's runtime_env would start
        # a separate worker pool per distinct env; setting it here is enough, and cheap.)
        os.environ.update(env)
        self.runner = None

    def node(self) -> tuple[str, str]:
        """(this node's address as the cluster knows it, its Ray node id)."""
        import ray

        node_id = ray.get_runtime_context().get_node_id()
        # The address the node joined with (`ray start --node-ip-address`), not the one this
        # process would guess from its default route: the two differ on multi-homed hosts.
        for n in ray.nodes():
            if n.get("NodeID") == node_id and n.get("NodeManagerAddress"):
                return n["NodeManagerAddress"], node_id
        return ray.util.get_node_ip_address(), node_id

    def pid(self) -> int:
        return os.getpid()

    def start(self, fn: Callable[..., tuple[Any, Any]], *args) -> Any:
        info, self.runner = fn(*args)
        return info

    def run(self) -> None:
        if self.runner is None:
            raise RuntimeError("run() before a successful start()")
        self.runner.run()


_REMOTE_HOST = None


class RayReplicaActor:
    """The caller's handle on one replica actor."""

    def __init__(self, name: str, num_cpus: float, num_gpus: float, env: dict[str, str]):
        ray = _ray()
        self.name = name
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        global _REMOTE_HOST
        if _REMOTE_HOST is None:  # one remote class per process: Ray exports it once
            _REMOTE_HOST = ray.remote(_ReplicaHost)
        remote_cls = _REMOTE_HOST
        # max_restarts=0: a dead replica is restarted by the server, which must first fail its
        # requests and knows the backoff; Ray restarting it behind our back would hide both.
        self.actor = remote_cls.options(
            num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0, max_concurrency=2, name=None
        ).remote(env)
        self._run_ref = None
        self._watch: threading.Thread | None = None
        self._stop_watch = threading.Event()
        self.node: str | None = None  # the node's address, once placed
        self.node_id: str | None = None  # Ray's id of that node
        self.pid: int | None = None

    def start(self, fn: Callable[..., tuple[Any, Any]], args_for: Callable[[str], tuple],
              timeout: float | None = None) -> Any:  # fmt: skip
        """Wait for Ray to place the actor, then run `fn(*args_for(node_ip))` in it (the node's
        address tells the replica where to listen). Returns `fn`'s info."""
        ray = _ray()
        ip_ref = self.actor.node.remote()
        waited = 0.0
        while True:
            step = PLACEMENT_WARN_S if timeout is None else min(PLACEMENT_WARN_S, max(0.0, timeout - waited))
            done, _ = ray.wait([ip_ref], timeout=step)
            if done:
                break
            waited += step
            if timeout is not None and waited >= timeout:
                raise TimeoutError(f"Ray did not place {self.name} within {timeout:.0f} s")
            log.warning("%s still waits for Ray to place it (it needs %g CPUs, %g GPUs; the cluster has %s free)",
                        self.name, self.num_cpus, self.num_gpus, ray.available_resources())  # fmt: skip
        self.node, self.node_id = ray.get(ip_ref)
        self.pid = ray.get(self.actor.pid.remote(), timeout=CALL_TIMEOUT_S)
        return ray.get(self.actor.start.remote(fn, *args_for(self.node)), timeout=timeout)

    def run(self, on_exit: Callable[[str], None]) -> None:
        """Run the replica's loop in the actor; `on_exit(reason)` is called (from a thread)
        once it ends, whether it returned or the actor died."""
        self._run_ref = self.actor.run.remote()
        self._watch = threading.Thread(target=self._wait_exit, args=(on_exit,), name=f"{self.name}-watch", daemon=True)
        self._watch.start()

    def _wait_exit(self, on_exit: Callable[[str], None]) -> None:
        ray = _ray()
        while not self._stop_watch.is_set():
            done, _ = ray.wait([self._run_ref], timeout=0.5)
            if done:
                break
        else:
            return
        try:
            ray.get(self._run_ref)
            reason = "its loop ended"
        except ray.exceptions.RayActorError as exc:
            reason = f"the Ray actor died ({_first_line(exc)})"
        except Exception as exc:
            reason = f"its loop failed: {_first_line(exc)}"
        if not self._stop_watch.is_set():
            on_exit(reason)

    def is_running(self) -> bool:
        return self._run_ref is not None and not _ray().wait([self._run_ref], timeout=0)[0]

    def join(self, timeout: float) -> None:
        if self._run_ref is not None:
            _ray().wait([self._run_ref], timeout=timeout)

    def kill(self) -> None:
        self._stop_watch.set()
        ray = _ray()
        if ray.is_initialized():
            try:
                ray.kill(self.actor, no_restart=True)
            except Exception:  # already gone
                pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def resources_for_replica(tensor_parallel_size: int, device: str, cluster: dict[str, float]) -> tuple[float, float]:
    """(num_cpus, num_gpus) one replica asks Ray for: a CPU per tensor-parallel rank, and on
    GPU clusters (or device cuda) a GPU per rank."""
    gpus = 0.0
    if device == "cuda" or (device == "auto" and cluster.get("GPU", 0) > 0):
        gpus = float(tensor_parallel_size)
        if cluster.get("GPU", 0) < gpus:
            raise ConfigError(
                f"a replica with --tp {tensor_parallel_size} needs {tensor_parallel_size} GPUs, but the Ray "
                f"cluster has {cluster.get('GPU', 0):g}"
            )
    return float(tensor_parallel_size), gpus
