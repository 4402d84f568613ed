"""One `tenk serve` replica in its own process, for `tenk demo`.

The server runs in a child process (which starts its engine process as usual), not in a thread
of the caller: the benchmark client then never shares a GIL with the server it measures. The
child calls `tenk.server.launch`, reports its URL and what the engine allocated, and serves until
told to stop (or until the parent disappears: its pipe closes).

    with Replica(ReplicaSpec(model="ckpt/", engine={"device": "cpu"})) as r:
        r.url, r.info["num_kv_blocks"]
"""

from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import asdict, dataclass, field

from tenk.errors import TenkError


class ReplicaStartError(TenkError):
    """The server could not start (the message says why, e.g. a format the engine cannot load)."""


@dataclass(slots=True)
class ReplicaSpec:
    model: str
    engine: dict = field(default_factory=dict)  # EngineConfig keyword arguments
    served_model_name: str | None = None
    # set in the server process before torch loads (its engine process inherits them), e.g.
    # {"CUDA_VISIBLE_DEVICES": "2,3"} for the GPUs of one replica, {"OMP_NUM_THREADS": "1"} for its cores
    env: dict = field(default_factory=dict)
    log_level: str = "warning"


def _child(spec: dict, conn) -> None:
    os.environ.update({k: str(v) for k, v in spec["env"].items()})  # before torch is imported here
    import logging

    logging.basicConfig(level=spec["log_level"].upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import torch

        from tenk.server import ServerArgs, launch

        cuda = torch.cuda.is_available() and spec["engine"].get("device", "auto") in ("auto", "cuda")
        # device memory before and after the engine starts: the difference is what the engine
        # took (weights, KV cache, activations, graphs, its CUDA context), not this process's own
        free_before, total = torch.cuda.mem_get_info() if cuda else (None, None)
        names = [spec["served_model_name"]] if spec["served_model_name"] else None
        args = ServerArgs(model=spec["model"], port=0, served_model_name=names, engine=dict(spec["engine"]),
                          log_level=spec["log_level"])  # fmt: skip
        handle = launch(args)
    except BaseException as exc:  # noqa: BLE001 - anything, Ctrl-C included, goes back to the parent as a sentence
        conn.send(("error", str(exc) or type(exc).__name__))
        return
    try:
        ready = handle.state.client.ready
        info = {"num_kv_blocks": ready.num_kv_blocks, "kv_capacity_tokens": ready.kv_capacity_tokens,
                "max_model_len": ready.max_model_len, "device": "cuda" if cuda else "cpu"}  # fmt: skip
        if cuda:
            free_after, _ = torch.cuda.mem_get_info()
            info.update(gpu_memory_bytes=total, engine_bytes=free_before - free_after,
                        gpu_name=torch.cuda.get_device_name(0))  # fmt: skip
        conn.send(("ready", handle.url, info))
        try:
            conn.recv()  # "stop", or EOFError when the parent is gone
        except (EOFError, OSError):
            pass
    finally:
        handle.stop(timeout=10)


class Replica:
    def __init__(self, spec: ReplicaSpec) -> None:
        self.spec = spec
        self.url: str | None = None
        self.info: dict = {}
        self._proc = None
        self._conn = None

    def start(self, timeout: float = 600.0) -> str:
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        # not a daemon: it starts its own engine process, which daemons may not do
        self._proc = ctx.Process(target=_child, args=(asdict(self.spec), child_conn), name="tenk-demo-server")
        self._proc.start()
        child_conn.close()
        if not self._conn.poll(timeout):
            self.stop()
            raise ReplicaStartError(f"the server for {self.spec.model} did not start within {timeout:.0f} s")
        try:
            msg = self._conn.recv()
        except EOFError:
            self.stop()
            raise ReplicaStartError(f"the server process for {self.spec.model} exited during start") from None
        if msg[0] != "ready":
            self.stop()
            raise ReplicaStartError(msg[1])
        _, self.url, self.info = msg
        return self.url

    def stop(self) -> None:
        if self._proc is None:
            return
        try:
            self._conn.send("stop")
        except (OSError, ValueError):
            pass
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._conn.close()
        self._proc = None

    def __enter__(self) -> Replica:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
