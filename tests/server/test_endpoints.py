"""/health, /version, /tokenize, /detokenize, /metrics (vLLM's names) and /openapi.json."""

from __future__ import annotations

from tenk.version import __version__
from tests.server.conftest import MAX_MODEL_LEN, MODEL_NAME, metric

VLLM_METRICS = [
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket",
    "vllm:inter_token_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket",
    "vllm:request_success_total", "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total",
]  # fmt: skip


def test_health_version(http):
    r = http.get("/health")
    assert r.status_code == 200 and r.content == b""
    assert http.get("/version").json() == {"version": __version__}


def test_tokenize_detokenize_roundtrip(http):
    r = http.post("/tokenize", json={"prompt": "Hello 世界 🎉", "return_token_strs": True}).json()
    assert r["count"] == len(r["tokens"]) == len(r["token_strs"]) > 0
    assert r["max_model_len"] == MAX_MODEL_LEN
    assert http.post("/detokenize", json={"tokens": r["tokens"]}).json() == {"prompt": "Hello 世界 🎉"}
    chat = http.post("/tokenize", json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}]}).json()
    text = http.post("/detokenize", json={"tokens": chat["tokens"]}).json()["prompt"]
    assert text.startswith("<|im_start|>user\nhi") and text.endswith("<|im_start|>assistant\n")
    # The prompt count the API reports matches what a completion of those tokens bills.
    comp = http.post("/v1/completions", json={"prompt": chat["tokens"], "max_tokens": 1}).json()
    assert comp["usage"]["prompt_tokens"] == chat["count"]
    assert http.post("/tokenize", json={"model": "nope", "prompt": "x"}).status_code == 404


def test_metrics_have_vllm_names_and_move(http):
    http.post("/v1/completions", json={"prompt": "metrics", "max_tokens": 4, "ignore_eos": True})
    ttft0 = metric(http, "vllm:time_to_first_token_seconds_count")
    e2e0 = metric(http, "vllm:e2e_request_latency_seconds_count")
    prompt0, gen0 = metric(http, "vllm:prompt_tokens_total"), metric(http, "vllm:generation_tokens_total")
    r = http.post("/v1/completions", json={"prompt": "metrics", "max_tokens": 4, "ignore_eos": True}).json()
    assert metric(http, "vllm:time_to_first_token_seconds_count") == ttft0 + 1
    assert metric(http, "vllm:e2e_request_latency_seconds_count") == e2e0 + 1
    assert metric(http, "vllm:generation_tokens_total") - gen0 == 4
    assert metric(http, "vllm:prompt_tokens_total") - prompt0 == r["usage"]["prompt_tokens"]
    text = http.get("/metrics").text
    for name in VLLM_METRICS:
        lines = [line for line in text.splitlines() if line.startswith(name + "{")]
        assert any(f'model_name="{MODEL_NAME}"' in line for line in lines), name
    assert 'finished_reason="length"' in text


def test_prefix_cache_hits_counted(http):
    prompt = list(range(100, 140))  # 40 tokens: two full KV blocks of 16
    http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1})
    hits0, queries0 = metric(http, "vllm:prefix_cache_hits_total"), metric(http, "vllm:prefix_cache_queries_total")
    r = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1}).json()
    assert r["usage"]["prompt_tokens_details"]["cached_tokens"] >= 32
    assert metric(http, "vllm:prefix_cache_hits_total") - hits0 >= 32
    assert metric(http, "vllm:prefix_cache_queries_total") - queries0 >= 40


def test_openapi_documents_400_not_422(http):
    spec = http.get("/openapi.json").json()
    post = spec["paths"]["/v1/completions"]["post"]
    assert "400" in post["responses"] and "422" not in post["responses"]
    assert "text/event-stream" in post["responses"]["200"]["content"]
