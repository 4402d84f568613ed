"""Streaming text must never show half a UTF-8 character or half a stop string.

Drives TextStream with what the engine really produces: a byte-level BPE tokenizer (tenk's
own, as written by `tenk random-checkpoint`) decoding emoji and CJK text token by token, where
most of those characters are split across tokens."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tenk.server import wire
from tenk.server.text_stream import REPLACEMENT_CHAR, TextStream

TEXT = "Hi 👋🏽 世界! Ünïcödé: 日本語のテキスト 🎉🚀 naïve café ∑ 🇫🇷 end"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _pieces(tokenizer, ids: list[int], stream: TextStream) -> list[str]:
    out = []
    for i in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:i])  # the engine's cumulative text after token i
        out.append(stream.update(text, finished=i == len(ids)))
    return out


def test_multibyte_characters_split_across_tokens(tokenizer):
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    partial = [i for i in range(1, len(ids)) if tokenizer.decode(ids[:i]).endswith(REPLACEMENT_CHAR)]
    assert len(partial) >= 5, "the test text must split characters across tokens to mean anything"
    pieces = _pieces(tokenizer, ids, TextStream())
    assert "".join(pieces) == TEXT
    assert not any(REPLACEMENT_CHAR in p for p in pieces)
    assert sum(1 for p in pieces if p) > 10  # it still streams in many pieces


def test_stop_string_prefix_is_held_back():
    # stop=["STOP"]: the engine will cut "Hello STOP..." to "Hello "; "S", "ST", "STO" must never show.
    s = TextStream(stop_buffer_len=len("STOP") - 1)
    shown = [s.update(t, False) for t in ("Hello S", "Hello ST", "Hello STO")]
    assert shown == ["Hell", "o", " "]
    assert s.update("Hello ", True) == ""  # finished, cut before the stop string
    # A finished request releases everything it held.
    s2 = TextStream(stop_buffer_len=3)
    assert s2.update("abc", False) == ""
    assert s2.update("abcdef", True) == "abcdef"


def test_real_invalid_bytes_are_not_held_forever():
    # A lone continuation byte never becomes a character; once more text follows it is shown.
    s = TextStream()
    assert s.update("a\ufffd", False) == "a"
    assert s.update("a\ufffdb", False) == "\ufffdb"
    assert s.update("a\ufffdb\ufffd", True) == "\ufffd"


def test_wire_roundtrip():
    batch = wire.OutputBatch(
        deltas=[wire.RequestDelta("r-0", 1, [5, 6], "hé🎉", [{5: -0.5, 7: -1.0}, {6: -0.1}], "stop", "</s>", 4, 0)],
        failures=[wire.RequestFailed("r-1", 400, "bad")],
        stats=wire.Stats(1, 2, 0.5, 10, 160, 3, 1, 7, 8, 0),
    )
    assert wire.decode(wire.encode(batch)) == batch
    add = wire.AddRequest("r-2", [1, 2, 3], {"n": 2, "stop": ["x"], "seed": 2**63 - 1}, 1.5)
    assert wire.decode(wire.encode(add)) == add
