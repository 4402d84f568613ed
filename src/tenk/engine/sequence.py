"""Request and sequence state.

A Request is what a user sent (one prompt, one SamplingParams); it fans out into `n`
Sequences that share the prompt. A Sequence is what the scheduler, block manager and model
runner work on: its tokens, how many of them are in the KV cache, its block table, and the
decoding state (text, logprobs, finish reason) the output processor keeps up to date."""

from __future__ import annotations

from dataclasses import replace
from enum import Enum, auto
from itertools import count

import torch

from tenk.engine.sampling_params import SamplingParams


# With overlap scheduling a sampled token's value reaches the host one step after the token
# exists: until then token_ids holds this placeholder (always at the end) and the model runner
# feeds the value from the device.
PENDING = -1


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


class Sequence:
    _ids = count()

    __slots__ = (
        "seq_id", "request", "index", "params", "token_ids", "num_prompt_tokens", "status",
        "num_computed_tokens", "block_table", "block_hashes", "num_hashed_blocks", "num_cached_tokens",
        "max_tokens", "generator", "cumulative_logprob", "logprobs", "finish_reason", "stop_reason",
        "text", "prefix_offset", "read_offset", "num_pending",
    )  # fmt: skip

    def __init__(self, request: "Request", index: int, params: SamplingParams, max_tokens: int):
        self.seq_id = next(Sequence._ids)  # also the age order used to pick preemption victims
        self.request = request
        self.index = index
        self.params = params
        self.token_ids: list[int] = list(request.prompt_token_ids)
        self.num_prompt_tokens = len(self.token_ids)
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0  # tokens whose K/V are in the cache
        self.num_pending = 0  # trailing PENDING placeholders in token_ids
        self.block_table: list[int] = []
        self.block_hashes: list[tuple] = []  # prefix-cache keys of full blocks, extended lazily
        self.num_hashed_blocks = 0  # leading blocks of block_table registered in the prefix cache
        self.num_cached_tokens = 0  # prefix-cache hit at first admission (reported to the user)
        self.max_tokens = max_tokens
        self.generator: torch.Generator | None = None  # per-request seed; set by the model runner
        self.cumulative_logprob = 0.0
        self.logprobs: list[dict[int, float]] | None = [] if params.logprobs is not None else None
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        # Incremental detokenization (see detokenizer.py): text so far and the token window.
        self.text = ""
        self.prefix_offset = max(self.num_prompt_tokens - 5, 0)
        self.read_offset = self.num_prompt_tokens

    def __len__(self) -> int:
        return len(self.token_ids)

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.seq_id}, req={self.request.request_id!r}, {self.status.name}, "
            f"tokens={len(self.token_ids)}, computed={self.num_computed_tokens}, blocks={len(self.block_table)})"
        )

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        """Generated tokens whose values are known (placeholders left out)."""
        return self.token_ids[self.num_prompt_tokens : len(self.token_ids) - self.num_pending]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def in_prompt(self) -> bool:
        """Still computing the prompt (the first token is not sampled yet)."""
        return self.num_computed_tokens < self.num_prompt_tokens

    def reset_for_recompute(self) -> None:
        """Preempted: the KV is gone; prompt + output so far will be prefilled again."""
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0
        self.num_hashed_blocks = 0
        self.block_table = []


class Request:
    """One user request: a prompt and its n sampled continuations."""

    __slots__ = ("request_id", "prompt_token_ids", "params", "arrival_time", "seqs", "prompt_counted")

    def __init__(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, arrival_time: float, max_tokens: int
    ):
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.params = params
        self.arrival_time = arrival_time
        self.prompt_counted = False  # prompt tokens added to the engine's counters once
        self.seqs = [Sequence(self, i, _child_params(params, i), max_tokens) for i in range(params.n)]

    @property
    def finished(self) -> bool:
        return all(s.is_finished for s in self.seqs)

    @property
    def num_cached_tokens(self) -> int:
        return max(s.num_cached_tokens for s in self.seqs)


def _child_params(params: SamplingParams, index: int) -> SamplingParams:
    # Like vLLM: the i-th of n seeded samples uses seed + i, so they differ yet reproduce.
    if params.n == 1 or params.seed is None:
        return params
    return replace(params, seed=params.seed + index)
