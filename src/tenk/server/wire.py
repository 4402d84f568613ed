"""Messages between the API process and the engine-core process.

Every message is a small dataclass sent as one msgpack array `[TAG, field, field, ...]`, so
the wire format is the field order written here and nothing else (no pickle: a message from
the other side can never run code). Token ids are plain Python ints; logprobs travel as
`{token_id: logprob}` maps.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import msgpack

# --------------------------------------------------------------------------- API -> engine


@dataclass(slots=True)
class AddRequest:
    request_id: str
    prompt_token_ids: list[int]  # already tokenized by the API process
    params: dict[str, Any]  # SamplingParams init fields (checked by the API process first)
    arrival_time: float  # time.time() when the HTTP request arrived
    client_index: int = 0  # which API process sent it (--api-server-count): its outputs go back there


@dataclass(slots=True)
class AbortRequests:
    request_ids: list[str]


@dataclass(slots=True)
class Shutdown:
    reason: str


@dataclass(slots=True)
class ClientGone:
    """An API process died: abort every request it sent, and stop keeping its outputs."""

    client_index: int


# --------------------------------------------------------------------------- engine -> API


@dataclass(slots=True)
class Ready:
    max_model_len: int
    vocab_size: int
    num_kv_blocks: int
    kv_capacity_tokens: int
    eos_token_ids: list[int]


@dataclass(slots=True)
class StartupFailed:
    message: str  # one sentence for the user (a ConfigError's text, or the exception)


@dataclass(slots=True)
class RequestDelta:
    """What one request produced since the last message about it."""

    request_id: str
    index: int  # which of the request's n samples
    new_token_ids: list[int]
    new_text: str  # safe to show: never ends in half a UTF-8 character or half a stop string
    new_logprobs: list[dict[int, float]] | None  # one map per new token, when asked for
    finish_reason: str | None  # "stop" | "length" | "abort" | None while running; set once
    stop_reason: int | str | None  # the stop string or token id that ended it
    num_prompt_tokens: int
    num_cached_tokens: int


@dataclass(slots=True)
class RequestFailed:
    request_id: str
    status: int  # HTTP status the API should answer with (400 bad input, 500 engine fault)
    message: str


@dataclass(slots=True)
class Stats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float  # 0..1
    num_kv_blocks: int
    kv_capacity_tokens: int
    prefix_cache_queries: int  # cumulative, tokens
    prefix_cache_hits: int  # cumulative, tokens
    prompt_tokens_total: int
    generation_tokens_total: int
    num_preemptions: int


@dataclass(slots=True)
class OutputBatch:
    """Everything one engine step produced, in one message."""

    deltas: list[RequestDelta]
    failures: list[RequestFailed]
    stats: Stats | None  # attached at most every few hundred ms, and when the engine goes idle


_TYPES = (AddRequest, AbortRequests, Shutdown, Ready, StartupFailed, OutputBatch, Stats, ClientGone)
_TAG = {cls: i for i, cls in enumerate(_TYPES)}


def _to_list(obj) -> list:
    return [getattr(obj, f.name) for f in fields(obj)]


def encode(msg) -> bytes:
    cls = type(msg)
    if cls is OutputBatch:
        body = [
            [_to_list(d) for d in msg.deltas],
            [_to_list(f) for f in msg.failures],
            None if msg.stats is None else _to_list(msg.stats),
        ]
    else:
        body = _to_list(msg)
    return msgpack.packb([_TAG[cls], *body], use_bin_type=True)


def decode(data: bytes):
    tag, *body = msgpack.unpackb(data, raw=False, strict_map_key=False)
    cls = _TYPES[tag]
    if cls is OutputBatch:
        deltas, failures, stats = body
        return OutputBatch(
            deltas=[RequestDelta(*d) for d in deltas],
            failures=[RequestFailed(*f) for f in failures],
            stats=None if stats is None else Stats(*stats),
        )
    return cls(*body)
