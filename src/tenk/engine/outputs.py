"""What the engine hands back: per-request outputs (cumulative text and tokens, like vLLM's
RequestOutput) and the statistics the server exports."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class CompletionOutput:
    index: int  # which of the request's n samples
    text: str  # cumulative
    token_ids: list[int]  # cumulative
    cumulative_logprob: float | None  # None unless logprobs were asked for
    logprobs: list[dict[int, float]] | None  # per generated token: top-k plus the sampled one
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None while running
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float  # 0..1, blocks held by live sequences
    num_kv_blocks: int
    kv_capacity_tokens: int
    prefix_cache_queries: int  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int  # of which were found (tokens)
    prompt_tokens_total: int
    generation_tokens_total: int
    num_preemptions: int

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0
