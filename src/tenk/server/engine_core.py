"""The engine-core process: owns the LLMEngine and runs it as a busy loop.

    drain inputs (add / abort) -> step while there is work -> send the step's outputs as one
    message -> when idle, block on the input socket

Nothing here waits on HTTP or tokenization; those live in the API process. Outputs leave as
deltas (new tokens, new safe text) so a message stays small however long a request runs.
A request that fails (bad input the API could not see, or an engine fault) fails alone; the
loop goes on.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
import traceback
from dataclasses import dataclass, field, fields

import zmq

from tenk.server import wire
from tenk.server.text_stream import TextStream

log = logging.getLogger("tenk.engine_core")

STATS_INTERVAL_S = 0.2  # how often a busy engine attaches its stats to an output batch
IDLE_POLL_MS = 1000  # an idle engine wakes this often to check that its parent still lives
PENDING_POLL_MS = 10  # while outputs wait for an API process to connect, retry this often
MAX_CONSECUTIVE_STEP_FAILURES = 3  # then the engine is broken: exit so the API answers 503


@dataclass(slots=True)
class EngineCoreArgs:
    engine_kwargs: dict  # EngineConfig fields
    # zmq addresses this process binds: ipc://... (same machine) or tcp://HOST:* (a Ray actor; the
    # port is picked at bind time and reported back). Every API process PUSHes requests to the
    # input; API process k PULLs its outputs from output_addrs[k] (one per --api-server-count).
    input_addr: str
    output_addrs: list[str]
    log_level: str = "INFO"
    env: dict[str, str] = field(default_factory=dict)  # set before torch loads (CUDA_VISIBLE_DEVICES...)


def build_engine(engine_kwargs: dict):
    from tenk.server.synthetic_engine import synthetic_engine_from_env

    synthetic = synthetic_engine_from_env(engine_kwargs)  # TENK_SYNTHETIC_ENGINE: the API process alone
    if synthetic is not None:
        log.warning("%s is set: this engine makes tokens without a model, one per request every %.0f ms",
                    "TENK_SYNTHETIC_ENGINE", synthetic.step_s * 1000)  # fmt: skip
        return synthetic
    from tenk.engine.config import EngineConfig
    from tenk.engine.llm_engine import LLMEngine

    return LLMEngine(EngineConfig(**engine_kwargs))


class _Choice:
    """Per-sample streaming state of one running request."""

    __slots__ = ("num_tokens", "text", "done")

    def __init__(self, stop_buffer_len: int):
        self.num_tokens = 0
        self.text = TextStream(stop_buffer_len)
        self.done = False


class EngineCore:
    def __init__(self, engine, input_sock: zmq.Socket, output_socks: list[zmq.Socket]):
        self.engine = engine
        self.input = input_sock
        self.outputs = output_socks  # one per API process
        self.running: dict[str, list[_Choice]] = {}  # request id -> its n samples
        self.owner: dict[str, int] = {}  # request id -> the API process that sent it, until its last output
        # This step's outputs, per API process (each gets those of the requests it sent).
        self.failures: list[list[wire.RequestFailed]] = [[] for _ in output_socks]
        self.deltas: list[list[wire.RequestDelta]] = [[] for _ in output_socks]
        # Encoded batches an API process has not connected to take yet (at start, or while a dead
        # one is restarted): kept, never blocking the loop, until it connects or is declared gone.
        self.pending: list[list[bytes]] = [[] for _ in output_socks]
        self.last_stats: wire.Stats | None = None
        self.last_stats_time = 0.0
        self.step_failures = 0
        self.stop = False
        self.parent_pid = os.getppid()
        self.last_parent_check = time.monotonic()
        from tenk.engine.sampling_params import SamplingParams

        self.SamplingParams = SamplingParams

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        while not self.stop:
            busy = self.engine.has_unfinished_requests()
            self._drain_inputs(0 if busy else PENDING_POLL_MS if any(self.pending) else IDLE_POLL_MS)
            if self.stop:
                break
            if self.engine.has_unfinished_requests():
                self._step()
            idle = not self.engine.has_unfinished_requests()
            self._flush(idle)
            if self._parent_gone():
                log.warning("the API process is gone; the engine core exits")
                return
        self._abort_all()

    def _parent_gone(self) -> bool:
        now = time.monotonic()
        if now - self.last_parent_check < 1.0:
            return False
        self.last_parent_check = now
        return os.getppid() != self.parent_pid

    def _drain_inputs(self, timeout_ms: int) -> None:
        if not self.input.poll(timeout_ms):
            return
        while True:
            try:
                data = self.input.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = wire.decode(data)
            except Exception:
                log.error("dropped an undecodable message from the API process:\n%s", traceback.format_exc())
                continue
            if isinstance(msg, wire.AddRequest):
                self._add(msg)
            elif isinstance(msg, wire.AbortRequests):
                self._abort(msg.request_ids)
            elif isinstance(msg, wire.ClientGone):
                self._client_gone(msg.client_index)
            elif isinstance(msg, wire.Shutdown):
                log.info("engine core shutting down: %s", msg.reason)
                self.stop = True
                return

    def _add(self, msg: wire.AddRequest) -> None:
        rid = msg.request_id
        if not 0 <= msg.client_index < len(self.outputs):
            log.error("dropped request %s from unknown API process %d", rid, msg.client_index)
            return
        self.owner[rid] = msg.client_index
        try:
            params = self.SamplingParams(**msg.params)
            self.engine.add_request(rid, msg.prompt_token_ids, params, arrival_time=msg.arrival_time)
        except (ValueError, TypeError) as exc:
            self._fail(rid, 400, str(exc))
            return
        except Exception as exc:  # an engine fault for this request only
            log.error("add_request %s failed:\n%s", rid, traceback.format_exc())
            self._fail(rid, 500, f"the engine could not add the request: {exc}")
            return
        self.running[rid] = [_Choice(params.stop_buffer_len) for _ in range(params.n)]

    def _client_gone(self, client: int) -> None:
        ids = [rid for rid, k in self.owner.items() if k == client]
        self._abort(ids)
        if 0 <= client < len(self.pending):
            self.pending[client].clear()
        log.warning("API process %d is gone: aborted its %d requests", client, len(ids))

    def _fail(self, request_id: str, status: int, message: str) -> None:
        """Its last output: the API process that sent it answers `status` (call before _abort)."""
        self.failures[self.owner.pop(request_id, 0)].append(wire.RequestFailed(request_id, status, message))

    def _abort(self, request_ids: list[str]) -> None:
        """Stop these requests; nothing more goes back for them."""
        for r in request_ids:
            self.owner.pop(r, None)
        ids = [r for r in request_ids if self.running.pop(r, None) is not None]
        if ids:
            try:
                self.engine.abort_request(ids)
            except Exception:
                log.error("abort_request failed:\n%s", traceback.format_exc())

    def _abort_all(self) -> None:
        self._abort(list(self.running))

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as exc:
            self.step_failures += 1
            log.error("engine step failed (%d in a row):\n%s", self.step_failures, traceback.format_exc())
            ids = list(self.running)
            msg = f"the engine failed while running the request: {exc}"
            for r in ids:
                self._fail(r, 500, msg)
            self._abort(ids)
            if self.step_failures >= MAX_CONSECUTIVE_STEP_FAILURES:
                raise RuntimeError("the engine failed repeatedly; giving up") from exc
            return
        self.step_failures = 0
        for out in outputs:
            try:
                self._collect(out)
            except Exception as exc:  # one request's output could not be sent: fail that request only
                log.error("output of %s failed:\n%s", out.request_id, traceback.format_exc())
                self._fail(out.request_id, 500, f"the engine output failed: {exc}")
                self._abort([out.request_id])

    def _collect(self, out) -> None:
        choices = self.running.get(out.request_id)
        if choices is None:  # aborted meanwhile
            return
        n_prompt = len(out.prompt_token_ids)
        deltas = self.deltas[self.owner.get(out.request_id, 0)]
        for comp in out.outputs:
            ch = choices[comp.index]
            if ch.done:
                continue
            finish = comp.finish_reason
            if finish is None and out.finished:
                finish = "abort"  # the engine dropped it without saying why
            new_ids = comp.token_ids[ch.num_tokens :]
            piece = ch.text.update(comp.text, finish is not None)
            if not new_ids and not piece and finish is None:
                continue
            new_lps = None
            if comp.logprobs is not None:
                new_lps = [{int(k): float(v) for k, v in d.items()} for d in comp.logprobs[ch.num_tokens :]]
            ch.num_tokens = len(comp.token_ids)
            ch.done = finish is not None
            deltas.append(
                wire.RequestDelta(
                    out.request_id, comp.index, [int(t) for t in new_ids], piece, new_lps, finish,
                    comp.stop_reason if finish is not None else None, n_prompt, int(out.num_cached_tokens or 0),
                )  # fmt: skip
            )
        if out.finished:
            del self.running[out.request_id]
            self.owner.pop(out.request_id, None)

    # ------------------------------------------------------------------ output

    def _stats(self) -> wire.Stats:
        s = self.engine.get_stats()
        return wire.Stats(**{f.name: getattr(s, f.name) for f in fields(wire.Stats)})

    def _flush(self, idle: bool) -> None:
        """Send this step's deltas and failures, plus the stats when they changed (checked
        every STATS_INTERVAL_S while busy, every pass while idle so /metrics settles at once)."""
        if any(self.pending):
            self._retry_pending()
        now = time.monotonic()
        stats = None
        if idle or now - self.last_stats_time >= STATS_INTERVAL_S:
            self.last_stats_time = now
            current = self._stats()
            if current != self.last_stats:
                stats = self.last_stats = current
        for k in range(len(self.outputs)):  # every API process gets the stats
            deltas, failures = self.deltas[k], self.failures[k]
            if deltas or failures or stats is not None:
                self._send(k, wire.encode(wire.OutputBatch(deltas, failures, stats)))
                self.deltas[k], self.failures[k] = [], []

    def _send(self, client: int, data: bytes) -> None:
        # Never blocks: a PUSH socket without a connected API process refuses at once (its queue
        # is unbounded otherwise), and the batch waits in order behind any earlier refused one.
        pending = self.pending[client]
        if pending:
            pending.append(data)
            self._retry_pending()
            return
        try:
            self.outputs[client].send(data, zmq.NOBLOCK)
        except zmq.Again:
            pending.append(data)

    def _retry_pending(self) -> None:
        for k, pending in enumerate(self.pending):
            while pending:
                try:
                    self.outputs[k].send(pending[0], zmq.NOBLOCK)
                except zmq.Again:
                    break
                pending.pop(0)


class HostedEngineCore:
    """An engine with its sockets bound, ready to run: what a replica process (or Ray actor)
    holds between answering Ready and running the loop."""

    def __init__(self, engine, ready: wire.Ready, ctx: zmq.Context, input_sock: zmq.Socket,
                 output_socks: list[zmq.Socket], ipc_dir: str | None):  # fmt: skip
        self.engine = engine
        self.ready = ready
        self.ctx, self.input, self.outputs = ctx, input_sock, output_socks
        self.ipc_dir = ipc_dir
        # The addresses really bound ("tcp://host:*" becomes "tcp://host:41234"), for the API side.
        self.input_addr = input_sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.output_addrs = [s.getsockopt_string(zmq.LAST_ENDPOINT) for s in output_socks]

    def run(self) -> None:
        try:
            EngineCore(self.engine, self.input, self.outputs).run()
        finally:
            self.input.close(linger=0)
            for sock in self.outputs:
                sock.close(linger=0)
            self.ctx.term()
            if self.ipc_dir is not None:
                # The socket folder goes with the sockets, also when the API process died first.
                shutil.rmtree(self.ipc_dir, ignore_errors=True)


def open_engine_core(args: EngineCoreArgs) -> HostedEngineCore | wire.StartupFailed:
    """Build the engine and bind its sockets; a start that fails gives StartupFailed (a
    sentence for the user), not an exception, so every launcher reports it the same way."""
    os.environ.update(args.env)  # nothing has imported torch yet in this process
    try:
        engine = build_engine(dict(args.engine_kwargs))
        stats = engine.get_stats()
        ready = wire.Ready(
            max_model_len=int(engine.max_model_len),
            vocab_size=int(engine.model_config.vocab_size),
            num_kv_blocks=int(stats.num_kv_blocks),
            kv_capacity_tokens=int(stats.kv_capacity_tokens),
            eos_token_ids=[int(t) for t in (engine.model_config.eos_token_ids or ())],
        )
    except Exception as exc:
        from tenk.errors import TenkError

        msg = str(exc) if isinstance(exc, TenkError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, TenkError):
            log.error("engine start failed:\n%s", traceback.format_exc())
        return wire.StartupFailed(msg)
    # This process binds and the API process connects: a connecting PUSH queues messages
    # from the first moment, so no request sent right after start is lost.
    ctx = zmq.Context()
    input_sock = ctx.socket(zmq.PULL)
    input_sock.bind(args.input_addr)
    output_socks = []
    for addr in args.output_addrs:
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, 0)  # never block the loop on a slow reader
        sock.bind(addr)
        output_socks.append(sock)
    ipc_dir = os.path.dirname(args.input_addr.removeprefix("ipc://")) if args.input_addr.startswith("ipc://") else None
    return HostedEngineCore(engine, ready, ctx, input_sock, output_socks, ipc_dir)


def run_engine_core(args: EngineCoreArgs, ready_conn) -> None:
    """Entry point of the spawned process. Sends Ready or StartupFailed through `ready_conn`."""
    # Ctrl-C goes to the whole process group; the API process decides when the engine stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    core = open_engine_core(args)
    if isinstance(core, wire.StartupFailed):
        ready_conn.send_bytes(wire.encode(core))
        return
    ready_conn.send_bytes(wire.encode(core.ready))
    ready_conn.close()
    core.run()
    # Tensor-parallel workers are told to stop rather than left to notice a closed pipe.
    close = getattr(core.engine, "close", None)
    if close is not None:
        close()
    # Nothing is left to save; skipping interpreter teardown (seconds with torch loaded)
    # lets a server stop promptly.
    logging.shutdown()
    os._exit(0)


def start_engine_core_in_actor(args: EngineCoreArgs) -> tuple[object, HostedEngineCore | None]:
    """The Ray replica actor's start (tenk.parallel.ray_executor): (what to tell the API
    process, the core to run). The API process connects to the bound tcp addresses."""
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    core = open_engine_core(args)
    if isinstance(core, wire.StartupFailed):
        return core, None
    return (core.ready, core.input_addr, core.output_addrs), core
