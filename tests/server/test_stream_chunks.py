"""Streaming sends one chunk per engine step that made tokens, even when their text is still
held back (half a UTF-8 character, a possible stop string) or decodes to nothing, as vLLM does:
clients time token arrivals (TTFT, ITL) by chunks. The tiny byte-level model with random weights
emits many ids whose bytes are not yet whole characters, so both cases occur here."""

from __future__ import annotations

import json

from tests.server.conftest import API_KEY, MODEL_NAME

PROMPTS = ["The weather", "Numbers: 1, 2,", "Once upon a time", "fn main() {"]
MAX_TOKENS = 24


def _events(http, path: str, body: dict) -> list[dict]:
    with http.stream("POST", path, json=body) as resp:
        assert resp.status_code == 200
        lines = [ln for ln in resp.iter_lines() if ln.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(ln[5:]) for ln in lines[:-1]]


def test_completion_stream_has_a_chunk_per_token(http):
    empty = 0
    for prompt in PROMPTS:
        body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": MAX_TOKENS, "ignore_eos": True,
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        events = _events(http, "/v1/completions", body)
        usage = events[-1]["usage"]
        token_chunks = [e for e in events if e.get("choices") and not e["choices"][0].get("finish_reason")]
        finish = [e for e in events if e.get("choices") and e["choices"][0].get("finish_reason")]
        # every step is one token here (no speculative decoding); the last token may ride on the finish chunk
        assert len(token_chunks) + len(finish) >= usage["completion_tokens"] >= len(token_chunks)
        assert usage["completion_tokens"] == MAX_TOKENS
        empty += sum(1 for e in token_chunks if e["choices"][0]["text"] == "")
    assert empty > 0, "no token had empty text: the test did not exercise held-back text"


def test_chat_stream_has_a_chunk_per_token(http):
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Say something"}], "max_tokens": MAX_TOKENS,
            "ignore_eos": True, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    events = _events(http, "/v1/chat/completions", body)
    deltas = [e["choices"][0]["delta"] for e in events if e.get("choices") and not e["choices"][0].get("finish_reason")]
    assert deltas[0].get("role") == "assistant"
    tokens = [d for d in deltas[1:] if "content" in d]
    assert MAX_TOKENS - 1 <= len(tokens) <= MAX_TOKENS
    assert events[-1]["usage"]["completion_tokens"] == MAX_TOKENS


def test_bench_times_every_request(server, tmp_path):
    """tenk bench gets a TTFT and a TPOT for every request, even those whose text stays empty."""
    from tenk.bench.config import BenchConfig
    from tenk.bench.sweep import run_sweep

    cfg = BenchConfig(urls=[server.url], model=MODEL_NAME, api_key=API_KEY, concurrency=(4,), num_prompts=8,
                      input_len=16, output_len=16, warmup=0, workers=1, scrape_metrics=False,
                      out=str(tmp_path / "b.json"))
    level = run_sweep(cfg).levels[0]
    assert level.completed == 8 and level.failed == 0
    assert level.ttft_ms.n == 8 and level.tpot_ms.n == 8
    assert level.steady is not None  # needs every request's chunk times
