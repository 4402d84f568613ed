"""Assemble and run a server: engine replicas + tokenizer + FastAPI app + uvicorn.

`launch(args)` runs it in a background thread and returns a handle (tests, `tenk demo`,
benchmarks); `serve_forever(args)` runs it in the foreground until SIGTERM / Ctrl-C (the CLI).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from tenk.errors import CheckpointError, ConfigError
from tenk.server.app import build_app
from tenk.server.args import ServerArgs
from tenk.server.engine_client import EngineClient
from tenk.server.metrics import ServerMetrics
from tenk.server.replica import ReplicaLauncher
from tenk.server.state import ServerState
from tenk.server.tokenization import TokenizerWrapper

log = logging.getLogger("tenk.server")


def _bound(host: str, port: int, options: tuple[int, ...]) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    for opt in options:
        sock.setsockopt(socket.SOL_SOCKET, opt, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """The server's listening TCP socket. `reuse_port`: one of several on a port that hold_port
    reserved (Linux spreads new connections over them)."""
    sock = _bound(host, port, (socket.SO_REUSEADDR, socket.SO_REUSEPORT) if reuse_port else (socket.SO_REUSEADDR,))
    sock.listen(4096)  # a burst of thousands of clients must queue, not be refused
    sock.set_inheritable(True)
    return sock


def hold_port(host: str, port: int) -> socket.socket:
    """Reserve host:port for API processes that each listen with bind(..., reuse_port=True). It
    fails, as bind does, where anything is bound already, another server with SO_REUSEPORT sockets
    included (a plain probe socket conflicts with every one of them). The holder itself has
    SO_REUSEPORT and not SO_REUSEADDR, so only this user's SO_REUSEPORT sockets join it, and a
    second server's probe fails while this one starts (model loading can take minutes)."""
    probe = _bound(host, port, (socket.SO_REUSEADDR,))  # SO_REUSEADDR: an old server's TIME_WAIT is no conflict
    port = probe.getsockname()[1]  # port 0 picks one
    probe.close()
    return _bound(host, port, (socket.SO_REUSEPORT,))


def server_url(host: str, port: int) -> str:
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class ApiServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self.state = state
        self.url = ""  # set: announce it once serving (one of several API processes stays quiet)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit and self.url:
            names = ", ".join(self.state.args.model_names)
            log.info("tenk is serving %s at %s (OpenAI API at %s/v1)", names, self.url, self.url)

    def handle_exit(self, sig, frame) -> None:
        # A SIGTERM / Ctrl-C sent to the whole process group also ends the engine processes:
        # from now on a replica that exits is part of the shutdown, not a failure to restart.
        self.state.client.draining = True
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets=None) -> None:
        self.state.client.draining = True
        # uvicorn stops accepting and waits for open requests; those still running after the
        # grace period are aborted here, so their clients get an error event / 503 and the
        # connections close cleanly instead of being cut.
        aborter = asyncio.create_task(self._abort_after(self.state.args.graceful_shutdown_s))
        try:
            await super().shutdown(sockets=sockets)
        finally:
            aborter.cancel()

    async def _abort_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        client = self.state.client
        if client.num_in_flight:
            log.warning("aborting %d requests still running %.0f s after shutdown began", client.num_in_flight, seconds)
            client.abort_all("The server is shutting down.")


class EndpointHandle:
    """What `launch()` returns: where the server listens, its engine processes, and stop()."""

    host: str
    port: int

    @property
    def url(self) -> str:
        return server_url(self.host, self.port)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def engine_pid(self) -> int | None:
        """The process id of replica 0's engine core."""
        return self.engine_pids[0]

    @property
    def engine_pids(self) -> list[int | None]:
        raise NotImplementedError

    def stop(self, timeout: float | None = None) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class ServerHandle(EndpointHandle):
    host: str
    port: int
    state: ServerState
    server: ApiServer
    thread: threading.Thread | None = None

    @property
    def engine_pids(self) -> list[int | None]:
        """Each replica's engine-core process id now (a restarted replica has a new one; None
        while it is down)."""
        return [link.replica.pid if link.up else None for link in self.state.client.links]

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish (up to the graceful timeout, then abort
        them), stop the engine processes."""
        self.state.client.draining = True
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout if timeout is not None else self.state.args.graceful_shutdown_s + 15)
            if self.thread.is_alive():
                self.server.force_exit = True
                self.thread.join(10)
        self.state.client.kill_all()


def start_replicas(args: ServerArgs, launcher: ReplicaLauncher,
                   load_tokenizer: bool = True) -> tuple[list, TokenizerWrapper | None]:  # fmt: skip
    """Start every replica at once (they load in parallel) and wait until all are ready."""
    replicas = []
    try:
        for i in range(args.data_parallel_size):
            replicas.append(launcher.start(i))
        # The tokenizer loads here while the engine processes load the model.
        tokenizer = TokenizerWrapper(args.engine.get("tokenizer") or args.model) if load_tokenizer else None
        for r in replicas:
            r.wait_ready(args.startup_timeout_s)
            log.info("engine replica %d of %d is up (%s)", r.index, args.data_parallel_size, r.where)
        first = replicas[0].ready
        for r in replicas[1:]:
            if (r.ready.max_model_len, r.ready.vocab_size) != (first.max_model_len, first.vocab_size):
                raise ConfigError(f"engine replicas disagree on max_model_len / vocab size ({first} vs {r.ready})")
    except BaseException:
        for r in replicas:
            r.kill()
        launcher.close()
        raise
    return replicas, tokenizer


def resolve_model(args: ServerArgs) -> None:
    """A preset name becomes its materialised config folder, served under the preset's name."""
    if not Path(args.model).is_dir():
        from tenk.models.presets import PRESETS
        from tenk.models.source import resolve_model_dir

        if args.model not in PRESETS:
            raise CheckpointError(f"model directory {args.model!r} does not exist (tenk serves local Hugging Face "
                                  f"folders, or a preset with --load-format dummy: {', '.join(PRESETS)})")
        # a preset with random weights: served under its name, from its materialised config folder
        args.served_model_name = args.served_model_name or [args.model]
        args.model = str(resolve_model_dir(args.model, args.engine.get("load_format", "auto")))


def server_config(state: ServerState) -> uvicorn.Config:
    return uvicorn.Config(
        build_app(state),
        log_config=None,
        log_level=state.args.log_level,
        access_log=state.args.access_log,
        timeout_graceful_shutdown=int(state.args.graceful_shutdown_s) + 5,  # backstop; see ApiServer.shutdown
        timeout_keep_alive=30,
        lifespan="on",
    )


def _prepare(args: ServerArgs) -> tuple[ApiServer, socket.socket, ServerHandle]:
    resolve_model(args)
    sock = bind(args.host, args.port)
    port = sock.getsockname()[1]
    try:
        launcher = ReplicaLauncher(args)
        replicas, tokenizer = start_replicas(args, launcher)
    except BaseException:
        sock.close()
        raise
    client = EngineClient(replicas, launcher=launcher, restart=args.restart_replicas)
    client.metrics = ServerMetrics(args.model_names[0], client.stats_by_engine, client.up_by_engine)
    for link in client.links:
        client.metrics.add_engine(link.label)
    state = ServerState(args=args, client=client, tokenizer=tokenizer, metrics=client.metrics)
    server = ApiServer(server_config(state), state)
    handle = ServerHandle(args.host, port, state, server)
    server.url = handle.url
    return server, sock, handle


def launch(args: ServerArgs, ready_timeout: float = 60.0) -> ServerHandle:
    """Start a server in a background thread of this process; returns once it accepts requests.

        handle = launch(ServerArgs(model=path, port=0, engine={"device": "cpu"}))
        ... openai.OpenAI(base_url=handle.base_url, api_key="x") ...
        handle.stop()

    Engine processes are started with multiprocessing's spawn method, so a script calling
    this needs the usual `if __name__ == "__main__":` guard. With `api_server_count > 1` the
    API processes are spawned too, and the handle is an api_servers.PoolHandle."""
    if args.api_server_count > 1:
        from tenk.server.api_servers import launch_pool

        return launch_pool(args, ready_timeout)
    server, sock, handle = _prepare(args)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="tenk-api", daemon=True)
    handle.thread = thread
    thread.start()
    deadline = time.monotonic() + ready_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            handle.stop(5)
            raise RuntimeError(f"the API server did not start within {ready_timeout:.0f} s")
        time.sleep(0.02)
    return handle


def serve_forever(args: ServerArgs) -> None:
    """Run in the foreground; returns after SIGTERM / Ctrl-C and a graceful shutdown."""
    if args.api_server_count > 1:
        from tenk.server.api_servers import serve_pool_forever

        return serve_pool_forever(args)
    server, sock, handle = _prepare(args)
    try:
        server.run(sockets=[sock])
    finally:
        handle.state.client.kill_all()
