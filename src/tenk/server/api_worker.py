"""One of several API processes (`--api-server-count K`): the usual FastAPI app and EngineClient,
on the server's port with the others, talking to every replica; the replicas
themselves belong to the parent process (api_servers.py), which tells this one over a pipe
when a replica dies or comes back.

Parent -> API process messages (tuples over the pipe): ("down", index, reason) and
("up", ReplicaInfo). API process -> parent: ("started", pid) once it serves.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass

from tenk.server import wire
from tenk.server.args import ServerArgs
from tenk.server.engine_client import EngineClient
from tenk.server.launcher import ApiServer, bind, server_config
from tenk.server.metrics import ServerMetrics
from tenk.server.state import ServerState
from tenk.server.tokenization import TokenizerWrapper

log = logging.getLogger("tenk.server")


@dataclass(slots=True)
class ReplicaInfo:
    """What an API process needs to reach a replica the parent runs."""

    index: int
    ready: wire.Ready
    input_addr: str
    output_addrs: list[str]  # one per API process
    pid: int | None
    where: str
    restarts: int = 0
    down_reason: str | None = None  # set: the replica is down (a restart may be under way)


class RemoteReplica:
    """A replica as an API process sees it when the parent owns it: addresses to connect to,
    and the parent's word for when it dies (kill / join are the parent's business)."""

    def __init__(self, info: ReplicaInfo):
        self.index = info.index
        self.ready = info.ready
        self.input_addr = info.input_addr
        self.output_addrs = info.output_addrs
        self.pid = info.pid
        self.where = info.where
        self.stopping = False
        self._on_exit = None

    def watch(self, loop, on_exit) -> None:
        self._on_exit = on_exit

    def unwatch(self) -> None:
        self._on_exit = None

    def exited(self, reason: str) -> None:
        on_exit, self._on_exit = self._on_exit, None
        if on_exit is not None:
            on_exit(reason)

    def is_running(self) -> bool:
        return not self.stopping

    def join(self, timeout: float) -> None:
        pass

    def kill(self) -> None:
        self.stopping = True


class _WorkerServer(ApiServer):
    """uvicorn's server plus the parent's pipe: replica deaths and restarts, and "stop"."""

    def __init__(self, config, state, conn, infos: list[ReplicaInfo], index: int):
        super().__init__(config, state)
        self.conn, self.infos, self.index = conn, infos, index

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.should_exit:
            return
        asyncio.get_running_loop().add_reader(self.conn.fileno(), self._on_control)
        for info, link in zip(self.infos, self.state.client.links):  # down when this process started
            if info.down_reason is not None and isinstance(link.replica, RemoteReplica):
                link.replica.exited(info.down_reason)
        self.conn.send(("started", os.getpid()))

    def _on_control(self) -> None:
        try:
            msg = self.conn.recv()
        except (EOFError, OSError):  # the parent is gone: stop serving
            asyncio.get_running_loop().remove_reader(self.conn.fileno())
            log.error("the parent process is gone; API process %d stops", self.index)
            self.handle_exit(None, None)
            return
        client = self.state.client
        if msg[0] == "down":
            replica = client.links[msg[1]].replica
            if isinstance(replica, RemoteReplica):
                replica.exited(msg[2])
        elif msg[0] == "up":
            info: ReplicaInfo = msg[1]
            client.replica_back(info.index, RemoteReplica(info), info.restarts)
            if self.index == 0 and client.metrics is not None:  # counted once across the API processes
                client.metrics.replica_restarted(client.links[info.index].label)


def run_api_worker(args: ServerArgs, index: int, infos: list[ReplicaInfo], sock: socket.socket | None, port: int,
                   conn) -> None:  # fmt: skip
    """Entry point of API process `index` (spawned by the parent, which handles Ctrl-C for all).
    Listens on the parent's `sock`, or with None on a socket of its own on `port`."""
    logging.basicConfig(level=args.log_level.upper(), format=f"%(asctime)s %(levelname)s %(name)s[api {index}]: "
                        "%(message)s", datefmt="%H:%M:%S")  # fmt: skip
    tokenizer = TokenizerWrapper(args.engine.get("tokenizer") or args.model)
    replicas = [RemoteReplica(info) for info in infos]
    client = EngineClient(replicas, restart=args.restart_replicas, client_index=index, owns_replicas=False)
    client.metrics = ServerMetrics(args.model_names[0], client.stats_by_engine, client.up_by_engine,
                                   multiprocess_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR"))  # fmt: skip
    for link, info in zip(client.links, infos):
        link.restarts = info.restarts
        client.metrics.add_engine(link.label)
    state = ServerState(args=args, client=client, tokenizer=tokenizer, metrics=client.metrics)
    server = _WorkerServer(server_config(state), state, conn, infos, index)
    server.run(sockets=[sock if sock is not None else bind(args.host, port, reuse_port=True)])
