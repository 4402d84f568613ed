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
MAX_CONSECUTIVE_STEP_FAILURES = 3  # then the engine is broken: exit so the API answers 503


@dataclass(slots=True)
class EngineCoreArgs:
    engine_kwargs: dict  # EngineConfig fields
    # zmq addresses this process binds: ipc://... (same machine) or tcp://HOST:* (a Ray actor; the
    # port is picked at bind time and reported back). The API process PUSHes requests to the
    # input and PULLs outputs from the output.
    input_addr: str
    output_addr: str
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
    def __init__(self, engine, input_sock: zmq.Socket, output_sock: zmq.Socket):
        self.engine = engine
        self.input = input_sock
        self.output = output_sock
        self.running: dict[str, list[_Choice]] = {}  # request id -> its n samples
        self.failures: list[wire.RequestFailed] = []
        self.deltas: list[wire.RequestDelta] = []
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
            self._drain_inputs(0 if busy else IDLE_POLL_MS)
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
            elif isinstance(msg, wire.Shutdown):
                log.info("engine core shutting down: %s", msg.reason)
                self.stop = True
                return

    def _add(self, msg: wire.AddRequest) -> None:
        rid = msg.request_id
        try:
            params = self.SamplingParams(**msg.params)
            self.engine.add_request(rid, msg.prompt_token_ids, params, arrival_time=msg.arrival_time)
        except (ValueError, TypeError) as exc:
            self.failures.append(wire.RequestFailed(rid, 400, str(exc)))
            return
        except Exception as exc:  # an engine fault for this request only
            log.error("add_request %s failed:\n%s", rid, traceback.format_exc())
            self.failures.append(wire.RequestFailed(rid, 500, f"the engine could not add the request: {exc}"))
            return
        self.running[rid] = [_Choice(params.stop_buffer_len) for _ in range(params.n)]

    def _abort(self, request_ids: list[str]) -> None:
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
            self.failures.extend(wire.RequestFailed(r, 500, msg) for r in ids)
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
                self.failures.append(wire.RequestFailed(out.request_id, 500, f"the engine output failed: {exc}"))
                self._abort([out.request_id])

    def _collect(self, out) -> None:
        choices = self.running.get(out.request_id)
        if choices is None:  # aborted meanwhile
            return
        n_prompt = len(out.prompt_token_ids)
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
            self.deltas.append(
                wire.RequestDelta(
                    out.request_id, comp.index, [int(t) for t in new_ids], piece, new_lps, finish,
                    comp.stop_reason if finish is not None else None, n_prompt, int(out.num_cached_tokens or 0),
                )  # fmt: skip
            )
        if out.finished:
            del self.running[out.request_id]

    # ------------------------------------------------------------------ output

    def _stats(self) -> wire.Stats:
        s = self.engine.get_stats()
        return wire.Stats(**{f.name: getattr(s, f.name) for f in fields(wire.Stats)})

    def _flush(self, idle: bool) -> None:
        """Send this step's deltas and failures, plus the stats when they changed (checked
        every STATS_INTERVAL_S while busy, every pass while idle so /metrics settles at once)."""
        now = time.monotonic()
        stats = None
        if idle or now - self.last_stats_time >= STATS_INTERVAL_S:
            self.last_stats_time = now
            current = self._stats()
            if current != self.last_stats:
                stats = self.last_stats = current
        if self.deltas or self.failures or stats is not None:
            self._send(wire.encode(wire.OutputBatch(self.deltas, self.failures, stats)))
            self.deltas, self.failures = [], []

    def _send(self, data: bytes) -> None:
        # Blocks only until the API process is connected (SNDTIMEO bounds each wait, so a
        # vanished parent is noticed).
        while True:
            try:
                self.output.send(data)
                return
            except zmq.Again:
                if os.getppid() != self.parent_pid:
                    raise SystemExit("the API process is gone") from None


class HostedEngineCore:
    """An engine with its sockets bound, ready to run: what a replica process (or Ray actor)
    holds between answering Ready and running the loop."""

    def __init__(self, engine, ready: wire.Ready, ctx: zmq.Context, input_sock: zmq.Socket, output_sock: zmq.Socket,
                 ipc_dir: str | None):  # fmt: skip
        self.engine = engine
        self.ready = ready
        self.ctx, self.input, self.output = ctx, input_sock, output_sock
        self.ipc_dir = ipc_dir
        # The addresses really bound ("tcp://host:*" becomes "tcp://host:41234"), for the API side.
        self.input_addr = input_sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.output_addr = output_sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def run(self) -> None:
        try:
            EngineCore(self.engine, self.input, self.output).run()
        finally:
            self.input.close(linger=0)
            self.output.close(linger=0)
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
    output_sock = ctx.socket(zmq.PUSH)
    output_sock.setsockopt(zmq.SNDHWM, 0)  # never block the loop on a slow reader
    output_sock.setsockopt(zmq.SNDTIMEO, 1000)
    output_sock.bind(args.output_addr)
    ipc_dir = os.path.dirname(args.input_addr.removeprefix("ipc://")) if args.input_addr.startswith("ipc://") else None
    return HostedEngineCore(engine, ready, ctx, input_sock, output_sock, ipc_dir)


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
    return (core.ready, core.input_addr, core.output_addr), core
