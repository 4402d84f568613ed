"""Incremental detokenization and stop conditions with tenk's byte-level BPE tokenizer, whose
tokens split multi-byte UTF-8 characters ('é', '你', '🙂' come out byte by byte)."""

from __future__ import annotations

import random

import pytest

from tenk.engine.detokenizer import Detokenizer
from tenk.engine.sampling_params import SamplingParams
from tenk.engine.sequence import PENDING, Request, SequenceStatus

EOS = 2  # <|im_end|> in tenk's tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from tenk.models.tokenizer_builder import write_tokenizer

    path = tmp_path_factory.mktemp("tok")
    write_tokenizer(path, vocab_size=512)
    return AutoTokenizer.from_pretrained(path)


def feed(detok, tokens, params, prompt=(40, 41), lookahead=False):
    """Feed tokens one by one; return the sequence and the visible text after each token.
    lookahead: a PENDING placeholder follows each token, as under overlap scheduling."""
    seq = Request("r", list(prompt), params, 0.0, max_tokens=params.max_tokens or 1000).seqs[0]
    seen = []
    for t in tokens:
        if seq.num_pending:
            seq.token_ids[-1] = t
            seq.num_pending = 0
        else:
            seq.token_ids.append(t)
        index = len(seq.token_ids) - 1
        if lookahead:
            seq.token_ids.append(PENDING)
            seq.num_pending = 1
        if detok.process(seq, index):
            seq.status = SequenceStatus.FINISHED
            seen.append(detok.visible_text(seq))
            break
        seen.append(detok.visible_text(seq))
    return seq, seen


def test_incremental_text_equals_full_decode(tokenizer):
    detok = Detokenizer(tokenizer, (EOS,), 10_000)
    text = "Héllo wörld, ça va? 你好 🙂 the end"
    ids = tokenizer.encode(text)
    assert any(tokenizer.decode([i]) == "\ufffd" for i in ids)  # really split characters
    seq, seen = feed(detok, ids, SamplingParams(max_tokens=len(ids)), lookahead=True)
    assert seq.text == text and seq.finish_reason == "length" and seq.output_token_ids == ids
    for a, b in zip(seen, seen[1:]):
        assert b.startswith(a)  # streaming text only ever grows
    assert all("\ufffd" not in s for s in seen)  # half characters are held, never shown
    rng = random.Random(0)
    for _ in range(20):  # random ids, invalid UTF-8 included: the end result is a full decode
        ids = [rng.randrange(3, 512) for _ in range(rng.randint(1, 30))]
        seq, _ = feed(detok, ids, SamplingParams(max_tokens=len(ids)))
        assert seq.text == tokenizer.decode(ids)


@pytest.mark.parametrize("lookahead", [False, True])
def test_stop_string_cut_exactly_where_it_begins(tokenizer, lookahead):
    detok = Detokenizer(tokenizer, (EOS,), 10_000)
    text = "one two, stop here; three"
    ids = tokenizer.encode(text)
    for stop, include, want in [
        ("stop", False, "one two, "),
        ("stop", True, "one two, stop"),
        ("o, st", False, "one tw"),  # starts and ends mid-token
        ("e", False, "on"),
        (["three", "here"], False, "one two, stop "),  # the earliest match wins
    ]:
        seq, seen = feed(detok, ids, SamplingParams(max_tokens=100, stop=stop, include_stop_str_in_output=include),
                         lookahead=lookahead)
        assert seq.text == want and seen[-1] == want, stop
        assert PENDING not in seq.token_ids and seq.num_pending == 0
        assert seq.finish_reason == "stop" and seq.stop_reason == (stop if isinstance(stop, str) else "here")
        # Nothing visible before the end ever went past the cut.
        assert all(want.startswith(s) for s in seen)


def test_stop_tokens_and_min_tokens(tokenizer):
    detok = Detokenizer(tokenizer, (EOS,), 10_000)
    ids = tokenizer.encode("alpha beta gamma")
    seq, _ = feed(detok, ids + [EOS, 50], SamplingParams(max_tokens=100))
    assert seq.text == "alpha beta gamma" and seq.finish_reason == "stop" and seq.stop_reason is None
    assert seq.output_token_ids[-1] == EOS
    seq, _ = feed(detok, ids + [EOS] + ids, SamplingParams(max_tokens=len(ids) * 2 + 1, ignore_eos=True))
    assert seq.finish_reason == "length"
    stop_id = ids[1]
    seq, _ = feed(detok, ids, SamplingParams(max_tokens=100, stop_token_ids=[stop_id]))
    assert seq.stop_reason == stop_id and seq.output_token_ids == ids[:2]
    assert seq.text == tokenizer.decode(ids[:1])
    seq, _ = feed(detok, ids, SamplingParams(max_tokens=100, stop_token_ids=[stop_id], include_stop_str_in_output=True))
    assert seq.text == tokenizer.decode(ids[:2])
    # min_tokens: a stop string completed before min_tokens does not stop the sequence
    seq, _ = feed(detok, ids, SamplingParams(max_tokens=len(ids), stop="alpha", min_tokens=len(ids) - 1))
    assert seq.finish_reason == "length" and seq.text == "alpha beta gamma"


def test_special_tokens_skipped_or_shown(tokenizer):
    detok = Detokenizer(tokenizer, (EOS,), 10_000)
    ids = tokenizer.encode("hi") + [1] + tokenizer.encode(" there")  # <|im_start|> in the middle
    seq, _ = feed(detok, ids, SamplingParams(max_tokens=len(ids)))
    assert seq.text == "hi there"
    seq, _ = feed(detok, ids, SamplingParams(max_tokens=len(ids), skip_special_tokens=False))
    assert seq.text == "hi<|im_start|> there"
    # Tokens without text (skipped specials, ids beyond the tokenizer's vocab) move the window
    # on instead of growing it: decoding stays O(1) per token.
    silent = [1, 10**5] * 50
    seq, _ = feed(detok, ids[:2] + silent + ids[2:], SamplingParams(max_tokens=200))
    assert seq.text == "hi there" and seq.num_tokens - seq.prefix_offset <= 3


def test_max_model_len_ends_with_length(tokenizer):
    detok = Detokenizer(tokenizer, (EOS,), max_model_len=5)
    seq, _ = feed(detok, [50, 51, 52, 53, 54], SamplingParams(max_tokens=100), prompt=(40, 41))
    assert seq.finish_reason == "length" and seq.num_tokens == 5
