"""What /v1/completions and /v1/chat/completions share: checking the sampling fields against
the model, sending one engine request per prompt, and reading the outputs back in order."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tenk.engine.sampling_params import SamplingParams
from tenk.server.engine_client import EngineDeadError, OutputQueue, RequestFailedError
from tenk.server.errors import APIError, bad_request
from tenk.server.protocol import _SamplingRequest
from tenk.server.wire import RequestDelta

if TYPE_CHECKING:
    from tenk.server.state import ServerState

_PARAM_NAMES = {f for f in SamplingParams.__dataclass_fields__}


def sampling_params(state: "ServerState", req: _SamplingRequest, prompt_len: int, max_tokens: int | None,
                    logprobs: int | None, prompt_param: str, max_tokens_param: str = "max_tokens") -> dict:  # fmt: skip
    """SamplingParams fields for one prompt, checked. Raises APIError(400) with the field."""
    room = state.max_model_len - prompt_len
    if room < 1:
        raise bad_request(
            f"This model's maximum context length is {state.max_model_len} tokens, and the prompt has "
            f"{prompt_len} tokens, which leaves no room for the completion. Shorten the prompt.",
            prompt_param,
        )
    if max_tokens is None:
        max_tokens = room
    elif max_tokens > room:
        raise bad_request(
            f"This model's maximum context length is {state.max_model_len} tokens. However, you requested "
            f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for the completion). "
            f"Reduce the prompt or {max_tokens_param}.",
            max_tokens_param,
        )
    if req.logit_bias:
        raise bad_request("logit_bias is not supported by this server.", "logit_bias")
    for tid in req.stop_token_ids or ():
        if tid >= state.vocab_size:
            raise bad_request(f"stop_token_ids holds {tid}, outside the vocabulary (size {state.vocab_size}).",
                              "stop_token_ids")  # fmt: skip
    top_k = req.top_k if req.top_k is not None else 0
    if top_k >= state.vocab_size:
        top_k = 0  # keeping the whole vocabulary is no truncation
    params = {
        "n": req.n if req.n is not None else 1,
        "temperature": 1.0 if req.temperature is None else float(req.temperature),
        "top_p": 1.0 if req.top_p is None else float(req.top_p),
        "top_k": top_k,
        "min_p": 0.0 if req.min_p is None else float(req.min_p),
        "repetition_penalty": 1.0 if req.repetition_penalty is None else float(req.repetition_penalty),
        "presence_penalty": 0.0 if req.presence_penalty is None else float(req.presence_penalty),
        "frequency_penalty": 0.0 if req.frequency_penalty is None else float(req.frequency_penalty),
        "seed": req.seed,
        "max_tokens": max_tokens,
        "min_tokens": req.min_tokens or 0,
        "stop": req.stop,
        "stop_token_ids": list(req.stop_token_ids or ()),
        "ignore_eos": bool(req.ignore_eos),
        "logprobs": logprobs,
        "skip_special_tokens": req.skip_special_tokens is not False,
        "include_stop_str_in_output": bool(req.include_stop_str_in_output),
    }
    try:
        SamplingParams(**params)
    except ValueError as exc:  # its messages start with the field's name
        text = str(exc)
        name = text.split(" ", 1)[0]
        raise bad_request(text if text.endswith(".") else text + ".", name if name in _PARAM_NAMES else None) from None
    return params


@dataclass(slots=True)
class Choice:
    """One sample's output so far."""

    text_parts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float]] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


class Generation:
    """The engine requests of one HTTP request: prompt p, sample i is choice p * n + i."""

    def __init__(self, state: "ServerState", request_id: str, prompts: list[list[int]], params: list[dict]):
        self.state = state
        self.request_id = request_id
        self.prompts = prompts
        self.n = params[0]["n"]
        self.params = params
        self.choices = [Choice() for _ in range(len(prompts) * self.n)]
        self.remaining = len(self.choices)
        self.cached_tokens = [0] * len(prompts)
        self.queue = OutputQueue(time.monotonic())
        self.created = int(time.time())

    def start(self) -> None:
        client = self.state.client
        try:
            for p, (ids, params) in enumerate(zip(self.prompts, self.params)):
                client.add(self.queue, f"{self.request_id}-{p}", p, ids, params, self.n)
        except EngineDeadError as exc:
            self.abort()
            raise APIError(503, str(exc), code="engine_unavailable") from None

    def abort(self) -> None:
        self.state.client.abort(self.queue)

    @contextmanager
    def aborted_on_error(self):
        """Around the handler's wait for this generation: an error, or the client leaving
        (cancelled), frees the engine's work before it propagates."""
        try:
            yield
        except BaseException:
            self.abort()
            raise

    async def next(self) -> tuple[int, RequestDelta] | None:
        """The next delta as (choice index, delta), or None when every choice has finished."""
        if self.remaining == 0:
            return None
        try:
            p, d = await self.queue.get()
        except RequestFailedError as exc:
            self.abort()
            raise APIError(exc.status, exc.message) from None
        except EngineDeadError as exc:  # its replica died (the caller aborts the request's other prompts)
            raise APIError(503, str(exc), code="engine_unavailable") from None
        ci = p * self.n + d.index
        ch = self.choices[ci]
        ch.token_ids.extend(d.new_token_ids)
        if d.new_text:
            ch.text_parts.append(d.new_text)
        if d.new_logprobs:
            ch.logprobs.extend(d.new_logprobs)
        self.cached_tokens[p] = d.num_cached_tokens
        if d.finish_reason is not None:
            ch.finish_reason, ch.stop_reason = d.finish_reason, d.stop_reason
            self.remaining -= 1
        return ci, d

    async def run_to_end(self) -> list[Choice]:
        while await self.next() is not None:
            pass
        return self.choices

    def usage(self) -> dict:
        prompt = sum(len(p) for p in self.prompts)
        completion = sum(len(c.token_ids) for c in self.choices)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(self.cached_tokens)},
        }


def clean_logprob(x: float) -> float:
    # JSON has no -inf; vLLM reports a floor instead.
    return x if x > -9999.0 else -9999.0
