"""A fake OpenAI-compatible server that answers instantly: the target of `tenk bench --self-test`
and of the bench tests. It streams `max_tokens` tokens (`tokens_per_chunk` per SSE event), sends
`usage`, and serves /v1/models, /tokenize, /detokenize, /version and vLLM-named /metrics.

It can fail on purpose: `drop_fraction` of generation requests is dropped, either by closing the
connection mid-stream ("close"), by answering HTTP 500 ("500"), or by alternating ("mixed"). The
server counts what it dropped (GET /fake/stats) so a test can compare with what the client saw.

Its default tokenizer is word-level ("t17 t4 t902"), exact in both directions; `tokenizer=PATH`
loads a real Hugging Face tokenizer instead, counting prompts the way vLLM does (special tokens
added to text prompts, none to token-id prompts, the chat template for messages).

Run several processes on one port (`procs`, SO_REUSEPORT) when one would cap the client's ceiling.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import random
import re
import socket
import time
import zlib
from dataclasses import asdict, dataclass

# counters per server process, in a shared array: [requests, dropped, completed, running]
_N_COUNTERS = 4
_WORD = re.compile(r"^t(\d+)$")


@dataclass(slots=True)
class FakeServerConfig:
    model: str = "fake-model"
    tokens_per_chunk: int = 1
    drop_fraction: float = 0.0
    drop_mode: str = "close"  # "close" | "500" | "mixed"
    ttft_delay: float = 0.0  # seconds before the first token (a stand-in for prefill)
    chunk_delay: float = 0.0  # seconds between SSE events (a stand-in for decode steps)
    yield_per_chunk: bool = True  # False: a request's events go out in one burst (cheapest server)
    max_num_seqs: int = 1024  # denominator of the fake KV usage metric
    max_model_len: int = 1_000_000
    tokenizer: str | None = None  # HF tokenizer dir; None: the word-level tokenizer
    seed: int = 0
    procs: int = 1
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.drop_mode not in ("close", "500", "mixed"):
            raise ValueError(f"drop_mode {self.drop_mode!r} must be close, 500 or mixed")
        if not 0.0 <= self.drop_fraction <= 1.0:
            raise ValueError("drop_fraction must be in [0, 1]")
        if self.tokens_per_chunk < 1 or self.procs < 1:
            raise ValueError("tokens_per_chunk and procs must be >= 1")


class _WordTokenizer:
    """'t<id>' words separated by spaces; any other word counts as one token too."""

    vocab_size = 32000

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        out = []
        for w in text.split():
            m = _WORD.match(w)
            out.append(int(m.group(1)) % self.vocab_size if m else zlib.crc32(w.encode()) % self.vocab_size)
        return out

    def decode(self, ids: list[int]) -> str:
        return " ".join(f"t{i}" for i in ids)

    def chat_ids(self, messages: list[dict]) -> list[int]:
        return self.encode(" ".join(str(m.get("content") or "") for m in messages))

    def token_text(self) -> str:
        return " t7"


class _HFTokenizer:
    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path)
        self._token_text = self._pick_repeatable()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tok(text, add_special_tokens=add_special_tokens)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)

    def chat_ids(self, messages: list[dict]) -> list[int]:
        if getattr(self.tok, "chat_template", None):
            out = self.tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
            return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)
        return self.encode(" ".join(str(m.get("content") or "") for m in messages))

    def _pick_repeatable(self) -> str:
        # a piece of text whose n-fold repetition is exactly n tokens, so the client's
        # tokenizer count of the generated text can agree with the usage the server reports
        for cand in (" the", " a", " x", " 1", "a", "."):
            if all(len(self.encode(cand * n, add_special_tokens=False)) == n for n in (1, 2, 7)):
                return cand
        return " the"

    def token_text(self) -> str:
        return self._token_text


def _make_tokenizer(cfg: FakeServerConfig):
    return _HFTokenizer(cfg.tokenizer) if cfg.tokenizer else _WordTokenizer()


def _build_app(cfg: FakeServerConfig, counters, slot: int):
    from aiohttp import web

    tok = _make_tokenizer(cfg)
    rng = random.Random(cfg.seed * 1000 + slot)
    base = slot * _N_COUNTERS
    piece = tok.token_text()
    drops = {"n": 0}
    dumps = json.dumps

    def prompt_len(body: dict) -> int:
        if "messages" in body:
            return len(tok.chat_ids(body["messages"]))
        p = body.get("prompt", "")
        if isinstance(p, list):
            if p and isinstance(p[0], list):  # a batch of id lists: only the first counts here
                p = p[0]
            return len(p) if (not p or isinstance(p[0], int)) else len(tok.encode(p[0]))
        return len(tok.encode(p))

    def choose_drop() -> str | None:
        if cfg.drop_fraction <= 0 or rng.random() >= cfg.drop_fraction:
            return None
        drops["n"] += 1
        if cfg.drop_mode == "mixed":
            return "close" if drops["n"] % 2 else "500"
        return cfg.drop_mode

    async def generate(request: web.Request, chat: bool) -> web.StreamResponse:
        body = await request.json()
        counters[base + 0] += 1
        n_prompt = prompt_len(body)
        n_out = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        stream = bool(body.get("stream"))
        usage_wanted = bool((body.get("stream_options") or {}).get("include_usage"))
        drop = choose_drop()
        if drop == "500":
            counters[base + 1] += 1
            return web.json_response({"error": {"message": "fake server dropped this request"}}, status=500)
        rid = f"fake-{counters[base + 0]}-{slot}"
        created = int(time.time())
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
        counters[base + 3] += 1
        try:
            if cfg.ttft_delay:
                await asyncio.sleep(cfg.ttft_delay)
            if not stream:
                text = piece * n_out
                choice = (
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                    if chat
                    else {"index": 0, "text": text, "finish_reason": "length", "logprobs": None}
                )
                obj = "chat.completion" if chat else "text_completion"
                counters[base + 2] += 1
                return web.json_response(
                    {"id": rid, "object": obj, "created": created, "model": cfg.model, "choices": [choice], "usage": usage}
                )
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await resp.prepare(request)
            obj = "chat.completion.chunk" if chat else "text_completion"
            head = f'{{"id":"{rid}","object":"{obj}","created":{created},"model":"{cfg.model}","choices":['
            if chat:
                await resp.write(
                    f'data: {head}{{"index":0,"delta":{{"role":"assistant","content":""}},"finish_reason":null}}]}}\n\n'.encode()
                )
            drop_at = max(1, n_out // 2) if drop == "close" else -1
            sent = 0
            while sent < n_out:
                k = min(cfg.tokens_per_chunk, n_out - sent)
                sent += k
                text = dumps(piece * k)
                last = sent >= n_out
                fin = '"length"' if last else "null"
                if chat:
                    choice = f'{{"index":0,"delta":{{"content":{text}}},"finish_reason":{fin}}}'
                else:
                    choice = f'{{"index":0,"text":{text},"logprobs":null,"finish_reason":{fin}}}'
                await resp.write(f"data: {head}{choice}]}}\n\n".encode())
                if sent >= drop_at > 0:
                    counters[base + 1] += 1
                    request.transport.abort()  # the client sees a broken chunked stream
                    return resp
                if cfg.chunk_delay or cfg.yield_per_chunk:
                    # yielding lets the other streams interleave, so events reach the client one
                    # by one as from a real server's decode loop, not as one burst per request
                    await asyncio.sleep(cfg.chunk_delay)
            if usage_wanted:
                await resp.write(f"data: {head}], \"usage\": {dumps(usage)}}}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            counters[base + 2] += 1
            return resp
        finally:
            counters[base + 3] -= 1

    async def completions(request):
        return await generate(request, chat=False)

    async def chat_completions(request):
        return await generate(request, chat=True)

    async def models(request):
        return web.json_response(
            {"object": "list", "data": [{"id": cfg.model, "object": "model", "owned_by": "tenk-fake", "max_model_len": cfg.max_model_len}]}
        )

    async def tokenize(request):
        body = await request.json()
        if "messages" in body:
            ids = tok.chat_ids(body["messages"])
        else:
            ids = tok.encode(body.get("prompt", ""), add_special_tokens=body.get("add_special_tokens", True))
        return web.json_response({"count": len(ids), "max_model_len": cfg.max_model_len, "tokens": ids, "token_strs": None})

    async def detokenize(request):
        body = await request.json()
        return web.json_response({"prompt": tok.decode(body.get("tokens", []))})

    def totals() -> list[int]:
        n = len(counters) // _N_COUNTERS
        return [sum(counters[i * _N_COUNTERS + j] for i in range(n)) for j in range(_N_COUNTERS)]

    async def stats(request):
        req, dropped, completed, running = totals()
        return web.json_response({"requests": req, "dropped": dropped, "completed": completed, "running": running})

    async def metrics(request):
        running = totals()[3]
        lbl = f'{{model_name="{cfg.model}"}}'
        text = (
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{lbl} {running}\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{lbl} 0\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f"vllm:kv_cache_usage_perc{lbl} {min(1.0, running / cfg.max_num_seqs)}\n"
        )
        return web.Response(text=text, content_type="text/plain")

    async def version(request):
        return web.json_response({"version": "tenk-fake-server"})

    async def health(request):
        return web.Response(text="")

    app = web.Application(client_max_size=1 << 28)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/detokenize", detokenize)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/version", version)
    app.router.add_get("/health", health)
    app.router.add_get("/fake/stats", stats)
    return app


def _serve(cfg_dict: dict, counters, slot: int, sock_fd_port, ready) -> None:
    """Entry point of one server process."""
    import logging

    from aiohttp import web

    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)  # dropped connections are on purpose
    cfg = FakeServerConfig(**cfg_dict)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass

    async def main() -> None:
        app = _build_app(cfg, counters, slot)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((cfg.host, sock_fd_port))
        site = web.SockSite(runner, sock)
        await site.start()
        ready.put(sock.getsockname()[1])
        await asyncio.Event().wait()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


def _wait_port(ready, proc, timeout: float) -> int:
    import queue

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return ready.get(timeout=0.1)
        except queue.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"the fake server process exited with code {proc.exitcode}") from None
    raise RuntimeError(f"the fake server did not start within {timeout:.0f} s")


class FakeServer:
    """Starts the fake server in its own process(es); `with FakeServer(cfg) as url: ...`."""

    def __init__(self, config: FakeServerConfig | None = None, **kwargs) -> None:
        self.config = config or FakeServerConfig(**kwargs)
        self.url: str | None = None
        self._procs: list = []

    def start(self, timeout: float = 30.0) -> str:
        ctx = mp.get_context("spawn")
        self._counters = ctx.Array("q", _N_COUNTERS * self.config.procs, lock=False)
        ready = ctx.Queue()
        cfg = asdict(self.config)
        port = 0
        for slot in range(self.config.procs):
            p = ctx.Process(target=_serve, args=(cfg, self._counters, slot, port, ready), daemon=True)
            p.start()
            self._procs.append(p)
            port = _wait_port(ready, p, timeout)  # the first process picks a free port; the rest share it
        self.url = f"http://{self.config.host}:{port}"
        return self.url

    def stats(self) -> dict:
        c = self._counters
        tot = [sum(c[i * _N_COUNTERS + j] for i in range(self.config.procs)) for j in range(_N_COUNTERS)]
        return {"requests": tot[0], "dropped": tot[1], "completed": tot[2], "running": tot[3]}

    def stop(self) -> None:
        for p in self._procs:
            if p.is_alive():
                p.terminate()
        for p in self._procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
        self._procs.clear()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """`python -m tenk.bench.fake_server --port 8000` for poking at it by hand."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--tokens-per-chunk", type=int, default=1)
    ap.add_argument("--drop-fraction", type=float, default=0.0)
    ap.add_argument("--drop-mode", default="close")
    ap.add_argument("--tokenizer", default=None)
    a = ap.parse_args(argv)
    cfg = FakeServerConfig(tokens_per_chunk=a.tokens_per_chunk, drop_fraction=a.drop_fraction, drop_mode=a.drop_mode, tokenizer=a.tokenizer)
    ctx = mp.get_context("spawn")
    counters = ctx.Array("q", _N_COUNTERS, lock=False)
    ready = ctx.Queue()
    p = ctx.Process(target=_serve, args=(asdict(cfg), counters, 0, a.port, ready))
    p.start()
    print(f"fake server on http://{cfg.host}:{ready.get(timeout=30)}")
    p.join()


if __name__ == "__main__":
    main()
