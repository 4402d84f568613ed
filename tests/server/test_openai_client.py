"""The official openai client (sync and async, streaming and not) against a real tenk server."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.server.conftest import API_KEY, MAX_MODEL_LEN, MODEL_NAME


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=60) as c:
        yield c


def test_completion_greedy_stream_equals_non_stream(client):
    kw = dict(model=MODEL_NAME, prompt="The capital of France is", max_tokens=24, temperature=0,
              extra_body={"ignore_eos": True})
    full = client.completions.create(**kw)
    choice = full.choices[0]
    assert choice.finish_reason == "length"
    assert full.usage.completion_tokens == 24
    assert full.usage.prompt_tokens > 0
    assert full.usage.total_tokens == full.usage.prompt_tokens + 24
    assert choice.text  # random weights, but 24 tokens always decode to something
    pieces, finish = [], None
    for chunk in client.completions.create(**kw, stream=True):
        for c in chunk.choices:
            pieces.append(c.text)
            finish = c.finish_reason or finish
    assert "".join(pieces) == choice.text
    assert len([p for p in pieces if p]) > 1, "streaming must deliver the text in pieces"
    assert finish == "length"


def test_chat_greedy_stream_equals_non_stream(client):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Again, with emoji 🎉 and 中文."},
    ]
    full = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_completion_tokens=20,
                                          temperature=0, extra_body={"ignore_eos": True})  # fmt: skip
    msg = full.choices[0].message
    assert msg.role == "assistant" and msg.content
    assert full.choices[0].finish_reason == "length"
    assert full.usage.completion_tokens == 20
    stream = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_completion_tokens=20,
                                            temperature=0, stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})  # fmt: skip
    pieces, roles, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            if c.delta.content:
                pieces.append(c.delta.content)
    assert roles == ["assistant"]
    assert "".join(pieces) == msg.content
    assert usage is not None and usage.completion_tokens == 20 and usage.prompt_tokens == full.usage.prompt_tokens


def test_async_client_stream_and_not(server):
    async def main():
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=60) as c:
            prompts = [f"Request number {i}:" for i in range(8)]
            fulls = await asyncio.gather(*[
                c.completions.create(model=MODEL_NAME, prompt=p, max_tokens=12, temperature=0) for p in prompts
            ])  # fmt: skip

            async def streamed(p):
                text = ""
                async for chunk in await c.completions.create(model=MODEL_NAME, prompt=p, max_tokens=12,
                                                              temperature=0, stream=True):  # fmt: skip
                    text += "".join(ch.text for ch in chunk.choices)
                return text

            texts = await asyncio.gather(*[streamed(p) for p in prompts])
            chat = await c.chat.completions.create(model=MODEL_NAME, max_tokens=5,
                                                   messages=[{"role": "user", "content": "hello"}])  # fmt: skip
            return fulls, texts, chat

    fulls, texts, chat = asyncio.run(main())
    assert [f.choices[0].text for f in fulls] == texts
    assert chat.choices[0].message.content is not None and chat.usage.completion_tokens <= 5


def test_n_seed_and_batch_prompts(client):
    kw = dict(model=MODEL_NAME, max_tokens=10, temperature=1.0, seed=1234, extra_body={"ignore_eos": True})
    a = client.completions.create(prompt="Once upon a time", n=3, **kw)
    b = client.completions.create(prompt="Once upon a time", n=3, **kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.text for c in a.choices] == [c.text for c in b.choices], "the same seed must reproduce"
    assert len({c.text for c in a.choices}) > 1, "the n samples of a seeded request must differ"
    assert a.usage.completion_tokens == 30
    # A list of prompts, token-id prompts and a list of token-id lists; choice index = prompt * n + sample.
    multi = client.completions.create(model=MODEL_NAME, prompt=["one", "two"], n=2, max_tokens=4, temperature=0)
    assert [c.index for c in multi.choices] == [0, 1, 2, 3]
    assert multi.choices[0].text == multi.choices[1].text  # greedy: both samples of a prompt agree
    # Streaming n=2 over two prompts: every choice index streams its own text, same as non-streamed.
    streamed = {}
    for chunk in client.completions.create(model=MODEL_NAME, prompt=["one", "two"], n=2, max_tokens=4,
                                           temperature=0, stream=True):  # fmt: skip
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
    assert streamed == {c.index: c.text for c in multi.choices}
    # Every sampling knob the server passes on is accepted together.
    knobs = dict(top_k=5, min_p=0.05, repetition_penalty=1.2, stop_token_ids=[3], min_tokens=1, ignore_eos=True)
    r = client.completions.create(model=MODEL_NAME, prompt="knobs", max_tokens=4, temperature=0.8, top_p=0.9,
                                  presence_penalty=0.5, frequency_penalty=0.5, seed=3, extra_body=knobs)  # fmt: skip
    assert r.choices[0].finish_reason in ("length", "stop") and r.usage.completion_tokens >= 1
    ids = client.completions.create(model=MODEL_NAME, prompt=[5, 6, 7, 8], max_tokens=4, temperature=0)
    ids2 = client.completions.create(model=MODEL_NAME, prompt=[[5, 6, 7, 8], [9, 10]], max_tokens=4, temperature=0)
    assert ids.usage.prompt_tokens == 4 and ids2.usage.prompt_tokens == 6
    assert ids2.choices[0].text == ids.choices[0].text


def test_stop_strings_logprobs_and_echo(client):
    base = client.completions.create(model=MODEL_NAME, prompt="Stop test", max_tokens=30, temperature=0,
                                     extra_body={"ignore_eos": True})  # fmt: skip
    text = base.choices[0].text
    stop = next((text[i : i + 2] for i in range(3, len(text) - 2) if text[i : i + 2].strip()), None)
    assert stop is not None
    cut = client.completions.create(model=MODEL_NAME, prompt="Stop test", max_tokens=30, temperature=0, stop=[stop],
                                    extra_body={"ignore_eos": True})  # fmt: skip
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)]
    streamed = client.completions.create(model=MODEL_NAME, prompt="Stop test", max_tokens=30, temperature=0,
                                         stop=[stop], stream=True, extra_body={"ignore_eos": True})  # fmt: skip
    assert "".join(c.choices[0].text for c in streamed if c.choices) == cut.choices[0].text

    lp = client.completions.create(model=MODEL_NAME, prompt="Logprobs", max_tokens=5, temperature=0, logprobs=3)
    info = lp.choices[0].logprobs
    assert len(info.tokens) == len(info.token_logprobs) == len(info.top_logprobs) == 5
    for tok, tok_lp, top in zip(info.tokens, info.token_logprobs, info.top_logprobs):
        # 3 best + the sampled one (when not among them); ids that decode alike ("\ufffd") share a key.
        assert tok_lp <= 0 and 1 <= len(top) <= 4 and tok in top
        assert max(top.values()) == pytest.approx(tok_lp)  # greedy picks the most likely token

    chat = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "x"}],
                                          max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)  # fmt: skip
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.bytes for t in content)

    echo = client.completions.create(model=MODEL_NAME, prompt="Echo me", max_tokens=3, temperature=0, echo=True)
    assert echo.choices[0].text.startswith("Echo me")


def test_min_tokens_and_max_tokens_default(client):
    r = client.completions.create(model=MODEL_NAME, prompt="min tokens", max_tokens=6, temperature=0,
                                  extra_body={"min_tokens": 6})  # fmt: skip
    assert r.usage.completion_tokens == 6
    # No max_tokens: the rest of the context. Cheap here: ignore_eos off, random weights may stop early.
    r = client.completions.create(model=MODEL_NAME, prompt=[1] * (MAX_MODEL_LEN - 3), temperature=0,
                                  extra_body={"ignore_eos": True})  # fmt: skip
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def test_models_auth_and_unknown_model(server, client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME, "tiny-alias"]
    alias = client.completions.create(model="tiny-alias", prompt="x", max_tokens=2)
    assert alias.model == "tiny-alias"
    with pytest.raises(openai.NotFoundError) as exc:
        client.completions.create(model="gpt-5", prompt="x", max_tokens=2)
    assert exc.value.body["code"] == "model_not_found"
    with openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(model=MODEL_NAME, prompt="x", max_tokens=2)
