"""What travels between the coordinator and the client worker processes: prompts out, one
RequestRecord per request back. Times are time.perf_counter() values, which on Linux read the
system-wide CLOCK_MONOTONIC, so records from different worker processes share one time axis."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field


@dataclass(slots=True)
class Prompt:
    prompt: str | list[int] | None  # completions: text or token ids
    messages: list[dict] | None  # chat: OpenAI messages
    input_len: int | None  # intended prompt length in the server's tokens (None: unknown, jsonl)
    max_tokens: int


@dataclass(slots=True)
class RequestRecord:
    index: int  # position in the level's prompt list
    url: str
    input_len: int | None  # intended prompt length
    sent: float = 0.0  # perf_counter when the request was sent; 0.0: never sent
    end: float = 0.0  # perf_counter when the last byte arrived (or the failure happened)
    ok: bool = False
    error: str | None = None
    status: int | None = None
    # arrival time (perf_counter) of every chunk that carried generated tokens: with text, or with
    # an empty text for tokens that have none yet (vLLM's bench times those too); a role-only
    # opening chunk or a bare finish chunk is not recorded. aiperf and guidellm time the first
    # chunk with text instead, which is later when a model's first tokens decode to nothing.
    chunk_times: array = field(default_factory=lambda: array("d"))
    text: str = ""  # generated text (kept for the tokenizer cross-check; dropped before saving)
    prompt_tokens: int | None = None  # from the server's usage
    completion_tokens: int | None = None  # from the server's usage
    client_tokens: int | None = None  # the client's own count (chunks or tokenizer)
    finish_reason: str | None = None

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.sent if self.ok and self.chunk_times else None

    @property
    def e2e(self) -> float | None:
        return self.end - self.sent if self.ok else None

    @property
    def output_tokens(self) -> int:
        """Generated tokens: the server's usage when it sent one, else the client's count."""
        if self.completion_tokens is not None:
            return self.completion_tokens
        return self.client_tokens or 0

    @property
    def tpot(self) -> float | None:
        """Decode time per output token after the first: (e2e - ttft) / (tokens - 1), as vLLM's
        bench defines it. None without streaming (no first-token time)."""
        n = self.output_tokens
        if not self.ok or n < 2 or not self.chunk_times:
            return None
        return (self.end - self.chunk_times[0]) / (n - 1)

    def itls(self) -> list[float]:
        """Gaps between consecutive text-carrying chunks (one per chunk, as vLLM's bench does)."""
        t = self.chunk_times
        return [t[i] - t[i - 1] for i in range(1, len(t))] if self.ok else []
