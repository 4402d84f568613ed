"""Random prompts have exact input lengths in the server's tokens, against a real BPE tokenizer
(special tokens and chat template included), built locally or through the server's /tokenize."""

import asyncio
import random

import pytest

from tenk.bench import BenchConfig, run_sweep
from tenk.bench.dataset import clean_id_pool, random_prompts
from tenk.bench.token_count import LocalTokenizer


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_local_tokenizer_gives_exact_lengths(bpe_tokenizer_dir, endpoint):
    counter = LocalTokenizer(bpe_tokenizer_dir)
    cfg = BenchConfig(urls=["http://127.0.0.1:1"], endpoint=endpoint, input_len="20:120", output_len=8,
                      tokenizer=bpe_tokenizer_dir)
    pool = clean_id_pool(counter, random.Random(0))
    prompts, stats = asyncio.run(random_prompts(cfg, 40, 1, counter, pool))
    tok = counter.tok
    lengths = set()
    for p in prompts:
        if endpoint == "chat":
            n = len(tok.apply_chat_template(p.messages, tokenize=True, add_generation_prompt=True)["input_ids"])
        else:
            ids = tok(p.prompt)["input_ids"]
            assert ids[0] == tok.bos_token_id  # the BOS the server adds is part of the length
            n = len(ids)
        assert n == p.input_len
        lengths.add(n)
    assert stats.inexact == 0
    assert min(lengths) >= 20 and max(lengths) <= 120 and len(lengths) > 10
    assert len({p.prompt or p.messages[0]["content"] for p in prompts}) == 40  # no shared prompts


@pytest.mark.parametrize("use_local", [True, False])
def test_server_reports_the_intended_lengths(bpe_tokenizer_dir, fake_server, use_local):
    # the fake server counts with the same tokenizer, like vLLM would; without --tokenizer the
    # bench builds prompts through its /tokenize and /detokenize
    url, _ = fake_server(tokenizer=bpe_tokenizer_dir)
    cfg = BenchConfig(urls=[url], concurrency=(4,), num_prompts=24, input_len="30:90", output_len=12,
                      tokenizer=bpe_tokenizer_dir if use_local else None, warmup=0, workers=1)
    (lv,) = run_sweep(cfg).levels
    assert lv.completed == 24
    assert lv.input_check == {"checked": 24, "mismatched": 0}
    assert lv.dataset["inexact"] == 0
    assert lv.dataset["source"] == ("random/tokenizer" if use_local else "random/server-tokenize")
    # the client's own count: the tokenizer's count of the text when local, chunks otherwise
    assert lv.token_check["client_count"] == ("tokenizer" if use_local else "chunks")
    assert lv.token_check["mismatch"] <= 0.01 and not lv.warnings


def test_token_ids_prompt_is_exact_without_tokenizer(fake_server):
    url, _ = fake_server()
    cfg = BenchConfig(urls=[url], concurrency=(2,), num_prompts=8, input_len=33, output_len=4,
                      prompt_format="ids", warmup=0, workers=1)
    (lv,) = run_sweep(cfg).levels
    assert lv.input_check == {"checked": 8, "mismatched": 0} and lv.input_tokens == 8 * 33


def test_mismatched_usage_warns(fake_server):
    # 3 tokens per streamed chunk: counting chunks undercounts, and the cross-check must say so
    url, _ = fake_server(tokens_per_chunk=3)
    cfg = BenchConfig(urls=[url], concurrency=(2,), num_prompts=8, input_len=8, output_len=30, warmup=0, workers=1)
    (lv,) = run_sweep(cfg).levels
    assert lv.output_tokens == 8 * 30  # usage is the truth
    assert lv.token_check["client_tokens"] == 8 * 10
    assert any("differ by" in w for w in lv.warnings)
