"""POST /v1/completions."""

from __future__ import annotations

import uuid

from fastapi.responses import JSONResponse, Response

from tenk.server import sse
from tenk.server.errors import bad_request
from tenk.server.generation import Choice, Generation, clean_logprob, sampling_params
from tenk.server.protocol import CompletionRequest
from tenk.server.state import ServerState
from tenk.server.wire import RequestDelta


def _prompts(state: ServerState, req: CompletionRequest) -> tuple[list[list[int]], list[str | None]]:
    """Token ids of each prompt, and its text when the client sent text (for echo)."""
    p = req.prompt
    if isinstance(p, str):
        texts: list[str | None] = [p]
    elif isinstance(p[0], str):
        texts = list(p)
    elif isinstance(p[0], int):
        return [list(p)], [None]
    else:
        return [list(x) for x in p], [None] * len(p)
    return [state.tokenizer.encode(t) for t in texts], texts


def _logprobs(state: ServerState, ids: list[int], lps: list[dict[int, float]], offset: int) -> dict:
    tok = state.tokenizer.token_str
    out = {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
    for tid, lp in zip(ids, lps):
        s = tok(tid)
        out["tokens"].append(s)
        out["token_logprobs"].append(clean_logprob(lp[tid]) if tid in lp else None)
        top = sorted(lp.items(), key=lambda kv: -kv[1])
        out["top_logprobs"].append({tok(t): clean_logprob(v) for t, v in top})
        out["text_offset"].append(offset)
        offset += len(s)
    return out


async def create_completion(state: ServerState, req: CompletionRequest) -> Response:
    model = state.check_model(req.model)
    state.check_engine()
    if req.suffix:
        raise bad_request("suffix is not supported by this server.", "suffix")
    n = req.n or 1
    if req.best_of is not None and req.best_of != n:
        raise bad_request("best_of is only supported when it equals n.", "best_of")
    if req.echo and req.logprobs is not None:
        raise bad_request("echo together with logprobs is not supported (it needs prompt logprobs).", "echo")
    prompts, texts = _prompts(state, req)
    for ids in prompts:
        if not ids:
            raise bad_request("The prompt is empty.", "prompt")
        state.check_token_ids(ids, "prompt")
    params = [sampling_params(state, req, len(ids), req.max_tokens, req.logprobs, "prompt") for ids in prompts]
    if req.echo:  # echo shows the prompt as text, also for token-id prompts
        texts = [t if t is not None else state.tokenizer.decode(ids, False) for t, ids in zip(texts, prompts)]
    gen = Generation(state, f"cmpl-{uuid.uuid4().hex}", prompts, params)
    gen.start()
    with gen.aborted_on_error():
        if req.stream:
            return await _stream(state, gen, req, model, texts)
        choices = await gen.run_to_end()
    return JSONResponse(_response(state, gen, req, model, choices, texts))


def _response(state: ServerState, gen: Generation, req: CompletionRequest, model: str, choices: list[Choice],
              texts: list[str | None]) -> dict:  # fmt: skip
    out = []
    for i, ch in enumerate(choices):
        prefix = texts[i // gen.n] if req.echo else ""
        lp = _logprobs(state, ch.token_ids, ch.logprobs, len(prefix)) if req.logprobs is not None else None
        out.append({"index": i, "text": prefix + ch.text, "logprobs": lp, "finish_reason": ch.finish_reason,
                    "stop_reason": ch.stop_reason})  # fmt: skip
    return {"id": gen.request_id, "object": "text_completion", "created": gen.created, "model": model,
            "choices": out, "usage": gen.usage(), "system_fingerprint": None}  # fmt: skip


async def _stream(state: ServerState, gen: Generation, req: CompletionRequest, model: str, texts: list[str | None]):
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    offsets = [len(texts[i // gen.n] or "") if req.echo else 0 for i in range(len(gen.choices))]

    def chunk(index: int, text: str, logprobs=None, finish=None, stop_reason=None) -> bytes:
        c = {"id": gen.request_id, "object": "text_completion", "created": gen.created, "model": model,
             "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish,
                          "stop_reason": stop_reason}]}  # fmt: skip
        if include_usage:
            c["usage"] = None
        return sse.event(c)

    def head() -> list[bytes]:
        if not req.echo:
            return []
        return [chunk(i, texts[i // gen.n] or "") for i in range(len(gen.choices))]

    def on_delta(index: int, d: RequestDelta) -> list[bytes]:
        lp = None
        if req.logprobs is not None and d.new_token_ids:
            lp = _logprobs(state, d.new_token_ids, d.new_logprobs or [{}] * len(d.new_token_ids), offsets[index])
            offsets[index] = lp["text_offset"][-1] + len(lp["tokens"][-1])
        # A chunk per step that made tokens, even when their text is held back or empty (as vLLM
        # does): clients time token arrivals by chunks, and random-weight models emit many such ids.
        if not d.new_text and not d.new_token_ids and d.finish_reason is None and lp is None:
            return []
        return [chunk(index, d.new_text, lp, d.finish_reason, d.stop_reason)]

    def tail() -> list[bytes]:
        if not include_usage:
            return []
        return [sse.event({"id": gen.request_id, "object": "text_completion", "created": gen.created,
                           "model": model, "choices": [], "usage": gen.usage()})]  # fmt: skip

    return await sse.stream(gen, head, on_delta, tail)
