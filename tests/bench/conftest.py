"""Fixtures for the bench tests: fake servers (real HTTP on 127.0.0.1, separate processes) and a
small real byte-level BPE tokenizer trained here, saved as a transformers tokenizer directory."""

from __future__ import annotations

import random

import pytest

from tenk.bench.fake_server import FakeServer, FakeServerConfig

_WORDS = (
    "the model serves tokens quickly while experts route each token to a few of many feed forward "
    "blocks and the scheduler keeps every slot busy so throughput grows with concurrency until "
    "memory bandwidth or compute becomes the limit quantized weights free memory for the cache "
    "prefill decode latency benchmark client server stream chunk usage request response"
).split()

# a tiny chat template: every message as "<|role|>content\n", then the assistant header
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _corpus() -> list[str]:
    rng = random.Random(0)
    lines = []
    for _ in range(300):  # ~20 KB of text with digits and punctuation for byte-level merges
        words = [rng.choice(_WORDS) for _ in range(rng.randint(5, 15))]
        lines.append(" ".join(words) + rng.choice([".", ",", "!", "?", f" {rng.randint(0, 999)}."]))
    return lines


@pytest.fixture(scope="session")
def bpe_tokenizer_dir(tmp_path_factory) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(), trainer)
    # the server adds BOS to text prompts, as Llama-style tokenizers do; lengths must count it
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    path = tmp_path_factory.mktemp("bpe_tok")
    fast.save_pretrained(path)
    return str(path)


@pytest.fixture
def fake_server():
    """fake_server(**FakeServerConfig fields) -> (url, server); stopped after the test."""
    started: list[FakeServer] = []

    def start(**kwargs):
        server = FakeServer(FakeServerConfig(**kwargs))
        url = server.start()
        started.append(server)
        return url, server

    yield start
    for s in started:
        s.stop()
