"""Bad input gets a 4xx in OpenAI's error shape, never a 500, and leaves the engine serving.

The test also writes the table of what it sent and what came back (Markdown) to
$TENK_BAD_INPUT_TABLE when set, for the issue notes."""

from __future__ import annotations

import json
import os

import httpx

from tests.server.conftest import MAX_MODEL_LEN, MODEL_NAME

C, CHAT = "/v1/completions", "/v1/chat/completions"
OK_MSG = [{"role": "user", "content": "hi"}]


def comp(**kw):
    return {"model": MODEL_NAME, "prompt": "hi", "max_tokens": 2, **kw}


def chat(**kw):
    return {"model": MODEL_NAME, "messages": OK_MSG, "max_tokens": 2, **kw}


# (what is wrong, path, JSON body or raw bytes, expected status); headers default to JSON + key.
CASES = [
    ("invalid JSON", C, b'{"prompt": "hi",', 400),
    ("body is not UTF-8", C, b"\xff\xfe\xfd", 400),
    ("body is a JSON array", C, b"[1, 2]", 400),
    ("empty body", C, b"", 400),
    ("JSON nested 100k deep", C, b"[" * 100_000, 400),
    ("prompt missing", C, {"model": MODEL_NAME, "max_tokens": 2}, 400),
    ("prompt is a number", C, comp(prompt=123), 400),
    ("prompt is an empty string", C, comp(prompt=""), 400),
    ("prompt is an empty list", C, comp(prompt=[]), 400),
    ("prompt mixes text and ids", C, comp(prompt=["a", 1]), 400),
    ("prompt token id outside the vocabulary", C, comp(prompt=[999_999]), 400),
    ("prompt token id negative", C, comp(prompt=[-1]), 400),
    ("prompt longer than max_model_len", C, comp(prompt=[1] * (MAX_MODEL_LEN + 10)), 400),
    ("prompt + max_tokens > max_model_len", C, comp(prompt=[1] * (MAX_MODEL_LEN - 5), max_tokens=10), 400),
    ("max_tokens negative", C, comp(max_tokens=-1), 400),
    ("max_tokens zero", C, comp(max_tokens=0), 400),
    ("max_tokens absurd (10**12)", C, comp(max_tokens=10**12), 400),
    ("max_tokens absurd (10**40)", C, comp(max_tokens=10**40), 400),
    ("max_tokens is a string", C, comp(max_tokens="10"), 400),
    ("max_tokens is a float", C, comp(max_tokens=1.5), 400),
    ("max_tokens is a bool", C, comp(max_tokens=True), 400),
    ("temperature negative", C, comp(temperature=-0.5), 400),
    ("temperature above 2", C, comp(temperature=3), 400),
    ("temperature is a string", C, comp(temperature="hot"), 400),
    ("temperature is NaN", C, b'{"prompt": "hi", "temperature": NaN}', 400),
    ("temperature is Infinity", C, b'{"prompt": "hi", "temperature": Infinity}', 400),
    ("top_p zero", C, comp(top_p=0), 400),
    ("top_p above 1", C, comp(top_p=1.5), 400),
    ("top_k below -1", C, comp(top_k=-5), 400),
    ("min_p above 1", C, comp(min_p=2), 400),
    ("presence_penalty out of [-2, 2]", C, comp(presence_penalty=5), 400),
    ("repetition_penalty zero", C, comp(repetition_penalty=0), 400),
    ("n zero", C, comp(n=0), 400),
    ("n above 128", C, comp(n=1000), 400),
    ("n is a bool", C, comp(n=True), 400),
    ("stop is a number", C, comp(stop=5), 400),
    ("stop holds an empty string", C, comp(stop=[""]), 400),
    ("stop_token_ids outside the vocabulary", C, comp(stop_token_ids=[999_999]), 400),
    ("min_tokens > max_tokens", C, comp(min_tokens=5, max_tokens=2), 400),
    ("logprobs above 20", C, comp(logprobs=50), 400),
    ("logprobs negative", C, comp(logprobs=-1), 400),
    ("seed is a string", C, comp(seed="abc"), 400),
    ("seed beyond 64 bits", C, comp(seed=2**70), 400),
    ("stream is a string", C, comp(stream="yes"), 400),
    ("stream_options.include_usage is a string", C, comp(stream=True, stream_options={"include_usage": "y"}), 400),
    ("logit_bias (unsupported)", C, comp(logit_bias={"1": 5}), 400),
    ("suffix (unsupported)", C, comp(suffix="x"), 400),
    ("best_of != n", C, comp(best_of=3), 400),
    ("echo with logprobs", C, comp(echo=True, logprobs=1), 400),
    ("unknown model", C, comp(model="gpt-5"), 404),
    ("messages missing", CHAT, {"model": MODEL_NAME}, 400),
    ("messages empty", CHAT, chat(messages=[]), 400),
    ("message role unknown", CHAT, chat(messages=[{"role": "wizard", "content": "hi"}]), 400),
    ("message content is a number", CHAT, chat(messages=[{"role": "user", "content": 5}]), 400),
    ("message content is an image", CHAT,
     chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), 400),
    ("messages is an object", CHAT, chat(messages={"role": "user"}), 400),
    ("max_completion_tokens negative", CHAT, chat(max_completion_tokens=-1), 400),
    ("max_completion_tokens beyond the context", CHAT, chat(max_completion_tokens=MAX_MODEL_LEN), 400),
    ("top_logprobs without logprobs", CHAT, chat(top_logprobs=2), 400),
    ("top_logprobs above 20", CHAT, chat(logprobs=True, top_logprobs=21), 400),
    ("continue_final_message after a user turn", CHAT, chat(continue_final_message=True,
                                                             add_generation_prompt=False), 400),
    ("chat: unknown model", CHAT, chat(model="gpt-5"), 404),
    ("tokenize: prompt missing", "/tokenize", {"add_special_tokens": True}, 400),
    ("detokenize: token id outside the vocabulary", "/detokenize", {"tokens": [10**9]}, 400),
    ("detokenize: tokens is a string", "/detokenize", {"tokens": "1 2"}, 400),
    ("unknown route", "/v1/nothing", comp(), 404),
]  # fmt: skip


def _send(http: httpx.Client, path: str, body, headers=None) -> httpx.Response:
    headers = {"Content-Type": "application/json", **(headers or {})}
    if isinstance(body, bytes):
        return http.post(path, content=body, headers=headers)
    return http.post(path, content=json.dumps(body).encode(), headers=headers)


def _describe_body(body) -> str:
    text = body.decode("utf-8", "backslashreplace") if isinstance(body, bytes) else json.dumps(body)
    return text if len(text) <= 70 else text[:60] + f"... ({len(text)} chars)"


def _check_shape(resp: httpx.Response) -> dict:
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    return err


def test_bad_inputs_get_4xx_in_openai_shape(server, http):
    rows = []
    for what, path, body, expected in CASES:
        resp = _send(http, path, body)
        err = _check_shape(resp)
        rows.append((what, f"POST {path} {_describe_body(body)}", resp.status_code, err["param"], err["message"]))
        assert resp.status_code == expected, (what, resp.status_code, err)

    # Auth, size limit, method: answered before any handler runs.
    extra = []
    r = http.post(C, json=comp(), headers={"Authorization": ""})
    extra.append(("no API key", f"POST {C} without Authorization", r, 401))
    r = http.post(C, json=comp(), headers={"Authorization": "Bearer wrong"})
    extra.append(("wrong API key", f"POST {C} with 'Bearer wrong'", r, 401))
    big = b'{"prompt": "' + b"a" * (17 * 1024 * 1024) + b'"}'
    r = http.post(C, content=big, headers={"Content-Type": "application/json"})
    extra.append(("body of 17 MiB (limit 16 MiB)", f"POST {C} 17 MiB", r, 413))

    def chunks():  # no Content-Length: the limit must hold while reading
        for _ in range(17):
            yield b"a" * (1024 * 1024)

    r = http.post(C, content=chunks(), headers={"Content-Type": "application/json"})
    extra.append(("chunked body of 17 MiB", f"POST {C} 17 MiB chunked", r, 413))
    r = http.get(C)
    extra.append(("GET on a POST route", f"GET {C}", r, 405))
    for what, req, resp, expected in extra:
        err = _check_shape(resp)
        rows.append((what, req, resp.status_code, err["param"], err["message"]))
        assert resp.status_code == expected, (what, resp.status_code, err)

    # Unknown fields are tolerated, as OpenAI does.
    r = http.post(C, json=comp(some_future_field={"x": 1}))
    assert r.status_code == 200
    rows.append(("unknown field (tolerated)", f"POST {C} {{..., \"some_future_field\": {{...}}}}", 200, "", "accepted"))

    # After all that the engine still serves.
    assert http.get("/health").status_code == 200
    assert http.post(C, json=comp(max_tokens=3)).json()["usage"]["completion_tokens"] >= 1

    table = ["| bad input | request | status | param | message |", "| --- | --- | --- | --- | --- |"]
    for what, req, status, param, msg in rows:
        cells = [what, f"`{req}`", str(status), f"`{param}`" if param else "", msg]
        table.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    out = os.environ.get("TENK_BAD_INPUT_TABLE")
    if out:
        with open(out, "w") as f:
            f.write("\n".join(table) + "\n")
