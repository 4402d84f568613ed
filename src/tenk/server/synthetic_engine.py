"""An engine without a model, for measuring the API process alone (benchmarks/api_ceiling.py).

With TENK_SYNTHETIC_ENGINE=STEP_MS in its environment an engine-core process builds this
instead of LLMEngine: every step takes STEP_MS of wall time (a GPU step's length), then gives
each running request one more token, until its max_tokens. Tokens cycle through the ids of
one short word and each adds its own text, so every streamed chunk carries text as a real
model's does (clients that time the first chunk with text and those that time the first chunk
with a token then agree). Everything
around it is the real server: the API process, the wire protocol, the engine-core loop with
its text deltas, HTTP and SSE; so a client sweep against it shows how many streamed tokens per
second, and requests per second, the API process can carry, whatever the GPUs could.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from tenk.engine.outputs import CompletionOutput, EngineStats, RequestOutput

ENV = "TENK_SYNTHETIC_ENGINE"
WORD = " ok"  # its token ids, from the model's tokenizer, are what every request generates


@dataclass(slots=True)
class _Request:
    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    token_ids: list[int]
    text: str


@dataclass(slots=True)
class _ModelConfig:
    vocab_size: int
    eos_token_ids: tuple[int, ...]


class SyntheticEngine:
    def __init__(self, step_s: float, model: str, load_format: str, max_model_len: int, max_num_seqs: int):
        from transformers import AutoConfig, AutoTokenizer

        from tenk.models.source import resolve_model_dir

        path = resolve_model_dir(model, load_format)
        cfg = AutoConfig.from_pretrained(path)
        self.model_config = _ModelConfig(int(cfg.vocab_size), ())
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.step_s = step_s
        tok = AutoTokenizer.from_pretrained(path)
        self.word_ids = tok.encode(WORD, add_special_tokens=False) or [0]
        pieces = [tok.decode([t]) for t in self.word_ids]
        if not all(p and "\ufffd" not in p for p in pieces):  # a token alone is no text: text per word
            pieces = [""] * (len(self.word_ids) - 1) + [tok.decode(self.word_ids)]
        self.pieces = pieces
        self.running: dict[str, _Request] = {}
        self.waiting: list[_Request] = []
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.next_step = time.monotonic()

    def add_request(self, request_id: str, prompt_token_ids: list[int], params, arrival_time: float | None = None) -> None:
        max_tokens = params.max_tokens if params.max_tokens is not None else self.max_model_len - len(prompt_token_ids)
        self.waiting.append(_Request(request_id, list(prompt_token_ids), max(1, max_tokens), [], ""))

    def abort_request(self, request_ids) -> None:
        ids = {request_ids} if isinstance(request_ids, str) else set(request_ids)
        for rid in ids:
            self.running.pop(rid, None)
        self.waiting = [r for r in self.waiting if r.request_id not in ids]

    def has_unfinished_requests(self) -> bool:
        return bool(self.running or self.waiting)

    def step(self) -> list[RequestOutput]:
        # The step ends STEP_MS after the last one ended (or now, after an idle spell).
        now = time.monotonic()
        self.next_step = max(self.next_step, now) + self.step_s
        time.sleep(max(0.0, self.next_step - time.monotonic()))
        while self.waiting and len(self.running) < self.max_num_seqs:
            r = self.waiting.pop(0)
            self.running[r.request_id] = r
            self.prompt_tokens_total += len(r.prompt_token_ids)
        outputs = []
        for rid, r in list(self.running.items()):
            k = len(r.token_ids) % len(self.word_ids)
            r.token_ids.append(self.word_ids[k])
            r.text += self.pieces[k]
            done = len(r.token_ids) >= r.max_tokens
            comp = CompletionOutput(0, r.text, list(r.token_ids), None, None, "length" if done else None)
            outputs.append(RequestOutput(rid, r.prompt_token_ids, [comp], done))
            if done:
                del self.running[rid]
        self.generation_tokens_total += len(outputs)
        return outputs

    def get_stats(self) -> EngineStats:
        return EngineStats(
            num_running=len(self.running), num_waiting=len(self.waiting), kv_cache_usage=0.0, num_kv_blocks=0,
            kv_capacity_tokens=self.max_model_len * self.max_num_seqs, prefix_cache_queries=0, prefix_cache_hits=0,
            prompt_tokens_total=self.prompt_tokens_total, generation_tokens_total=self.generation_tokens_total,
            num_preemptions=0,
        )  # fmt: skip


def synthetic_engine_from_env(engine_kwargs: dict) -> SyntheticEngine | None:
    """The synthetic engine when TENK_SYNTHETIC_ENGINE is set (its step time in ms), else None."""
    step_ms = os.environ.get(ENV)
    if not step_ms:
        return None
    return SyntheticEngine(
        float(step_ms) / 1000.0, engine_kwargs["model"], engine_kwargs.get("load_format", "auto"),
        int(engine_kwargs.get("max_model_len") or 4096),
        int(engine_kwargs.get("max_num_seqs") or 256),
    )
