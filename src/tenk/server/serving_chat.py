"""POST /v1/chat/completions."""

from __future__ import annotations

import uuid

from fastapi.responses import JSONResponse, Response

from tenk.server import sse
from tenk.server.errors import bad_request
from tenk.server.generation import Generation, clean_logprob, sampling_params
from tenk.server.protocol import ChatCompletionRequest, ChatMessage
from tenk.server.state import ServerState
from tenk.server.tokenization import ChatTemplateError
from tenk.server.wire import RequestDelta


def message_dicts(messages: list[ChatMessage]) -> list[dict]:
    out = []
    for m in messages:
        content = m.content
        if isinstance(content, list):  # text parts: joined, as the templates expect one string
            content = "".join(part.text for part in content)
        d = {"role": m.role, "content": content if content is not None else ""}
        if m.name is not None:
            d["name"] = m.name
        out.append(d)
    return out


def encode_messages(state: ServerState, messages: list[ChatMessage], add_generation_prompt: bool,
                    continue_final_message: bool, template_kwargs: dict | None,
                    add_special_tokens: bool = False) -> list[int]:  # fmt: skip
    """The chat template's prompt as token ids. The template already holds any BOS it wants,
    so by default no special tokens are added (like vLLM)."""
    try:
        text = state.tokenizer.render_chat(
            message_dicts(messages),
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            template_kwargs=template_kwargs,
        )
    except ChatTemplateError as exc:
        raise bad_request(str(exc), "messages") from None
    return state.tokenizer.encode(text, add_special_tokens=add_special_tokens)


def _logprobs(state: ServerState, ids: list[int], lps: list[dict[int, float]], top_n: int) -> list[dict]:
    tok, tok_bytes = state.tokenizer.token_str, state.tokenizer.token_bytes
    out = []
    for tid, lp in zip(ids, lps):
        top = sorted(lp.items(), key=lambda kv: -kv[1])[:top_n]
        out.append({
            "token": tok(tid), "logprob": clean_logprob(lp.get(tid, -9999.0)), "bytes": tok_bytes(tid),
            "top_logprobs": [{"token": tok(t), "logprob": clean_logprob(v), "bytes": tok_bytes(t)} for t, v in top],
        })  # fmt: skip
    return out


async def create_chat_completion(state: ServerState, req: ChatCompletionRequest) -> Response:
    model = state.check_model(req.model)
    state.check_engine()
    if req.top_logprobs and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs to be true.", "top_logprobs")
    ids = encode_messages(state, req.messages, req.add_generation_prompt is not False,
                          bool(req.continue_final_message), req.chat_template_kwargs)  # fmt: skip
    if not ids:
        raise bad_request("The chat template turned the messages into an empty prompt.", "messages")
    if req.max_completion_tokens is not None:  # OpenAI's newer name wins
        max_tokens, max_param = req.max_completion_tokens, "max_completion_tokens"
    else:
        max_tokens, max_param = req.max_tokens, "max_tokens"
    top_n = (req.top_logprobs or 0) if req.logprobs else None
    params = sampling_params(state, req, len(ids), max_tokens, top_n, "messages", max_param)
    gen = Generation(state, f"chatcmpl-{uuid.uuid4().hex}", [ids], [params])
    gen.start()
    with gen.aborted_on_error():
        if req.stream:
            return await _stream(state, gen, req, model, top_n)
        choices = await gen.run_to_end()
    out = []
    for i, ch in enumerate(choices):
        lp = {"content": _logprobs(state, ch.token_ids, ch.logprobs, top_n)} if top_n is not None else None
        out.append({"index": i, "message": {"role": "assistant", "content": ch.text}, "logprobs": lp,
                    "finish_reason": ch.finish_reason, "stop_reason": ch.stop_reason})  # fmt: skip
    return JSONResponse({"id": gen.request_id, "object": "chat.completion", "created": gen.created, "model": model,
                         "choices": out, "usage": gen.usage(), "system_fingerprint": None})  # fmt: skip


async def _stream(state: ServerState, gen: Generation, req: ChatCompletionRequest, model: str, top_n: int | None):
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(index: int, delta: dict, logprobs=None, finish=None, stop_reason=None) -> bytes:
        c = {"id": gen.request_id, "object": "chat.completion.chunk", "created": gen.created, "model": model,
             "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish,
                          "stop_reason": stop_reason}]}  # fmt: skip
        if include_usage:
            c["usage"] = None
        return sse.event(c)

    def head() -> list[bytes]:  # OpenAI opens every choice with the role
        return [chunk(i, {"role": "assistant", "content": ""}) for i in range(len(gen.choices))]

    def on_delta(index: int, d: RequestDelta) -> list[bytes]:
        lp = None
        if top_n is not None and d.new_token_ids:
            lp = {"content": _logprobs(state, d.new_token_ids, d.new_logprobs or [{}] * len(d.new_token_ids), top_n)}
        # one chunk per step that made tokens, even with empty text (see serving_completion)
        if not d.new_text and not d.new_token_ids and d.finish_reason is None and lp is None:
            return []
        delta = {"content": d.new_text} if d.new_text or d.new_token_ids or lp is not None else {}
        return [chunk(index, delta, lp, d.finish_reason, d.stop_reason)]

    def tail() -> list[bytes]:
        if not include_usage:
            return []
        return [sse.event({"id": gen.request_id, "object": "chat.completion.chunk", "created": gen.created,
                           "model": model, "choices": [], "usage": gen.usage()})]  # fmt: skip

    return await sse.stream(gen, head, on_delta, tail)
