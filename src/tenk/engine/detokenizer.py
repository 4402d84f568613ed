"""Incremental detokenization and stop conditions, applied to each newly sampled token.

Text grows by decoding a small window of token ids twice, as vLLM and TGI do: the ids from
`prefix_offset` to `read_offset` (already shown) and from `prefix_offset` to the end; the new
text is the difference. Decoding a window instead of single tokens keeps the spaces and merges
a tokenizer only emits in context, and a window whose text ends in U+FFFD is held until the
next token completes the UTF-8 character (a character split across byte-level tokens). When a
sequence finishes, whatever is held is flushed, so the final text equals a full decode.

Stop conditions, in order: a stop token (EOS unless `ignore_eos`, or `stop_token_ids`; both only
once `min_tokens` are out), a stop string (the text is cut where it begins, or after it with
`include_stop_str_in_output`), then the length limit."""

from __future__ import annotations

from tenk.engine.sequence import Sequence

_REPLACEMENT = "\ufffd"


class Detokenizer:
    def __init__(self, tokenizer, eos_token_ids: tuple[int, ...], max_model_len: int):
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        self.max_model_len = max_model_len
        # Two decodes per token per sequence are on the engine's hot path: call the Rust
        # tokenizer directly when transformers would add nothing (no space clean-up).
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend = None if backend is None or getattr(tokenizer, "clean_up_tokenization_spaces", False) else backend

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        if self._backend is not None:
            return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def decode_new(self, seq: Sequence, flush: bool = False, end: int | None = None) -> str:
        """Text added by tokens read_offset:end ('' while a character is incomplete, unless
        flush)."""
        ids = seq.token_ids
        end = len(ids) if end is None else end
        if seq.read_offset >= end:
            return ""
        skip = seq.params.skip_special_tokens
        prefix_text = self._decode(ids[seq.prefix_offset : seq.read_offset], skip)
        new_text = self._decode(ids[seq.prefix_offset : end], skip)
        if not flush and (len(new_text) < len(prefix_text) or new_text.endswith(_REPLACEMENT)):
            return ""
        # Equal lengths: the tokens add no text (a skipped special token, an id the tokenizer
        # lacks). The window still moves on, or it would grow with every such token.
        delta = new_text[len(prefix_text) :] if new_text.startswith(prefix_text) else new_text
        seq.prefix_offset = seq.read_offset
        seq.read_offset = end
        return delta

    def process(self, seq: Sequence, index: int) -> bool:
        """Take in the token at seq.token_ids[index] (just sampled; any later entries are still
        placeholders): grow the text and decide whether the sequence is done. Sets finish_reason
        / stop_reason and drops the placeholders when it finished."""
        token_id = seq.token_ids[index]
        end = index + 1
        params = seq.params
        num_out = end - seq.num_prompt_tokens
        if num_out >= params.min_tokens:  # the sampler banned stop tokens before that anyway
            if not params.ignore_eos and token_id in self.eos_token_ids:
                seq.finish_reason, seq.stop_reason = "stop", None
            elif token_id in params.stop_token_ids:
                seq.finish_reason, seq.stop_reason = "stop", token_id
        if seq.finish_reason is not None:
            # A stop token's own text is shown only with include_stop_str_in_output.
            seq.text += self.decode_new(seq, flush=True, end=end if params.include_stop_str_in_output else end - 1)
            return self._finish(seq, end)
        delta = self.decode_new(seq, end=end)
        seq.text += delta
        if delta and params.stop_strs and num_out > params.min_tokens and self._check_stop_strings(seq, len(delta)):
            return self._finish(seq, end)
        if num_out >= seq.max_tokens or end >= self.max_model_len:
            seq.finish_reason = "length"
            seq.text += self.decode_new(seq, flush=True, end=end)
            return self._finish(seq, end)
        return False

    @staticmethod
    def _finish(seq: Sequence, end: int) -> bool:
        del seq.token_ids[end:]  # a token sampled after the last one (overlap scheduling) is dropped
        seq.num_pending = 0
        return True

    def _check_stop_strings(self, seq: Sequence, delta_len: int) -> bool:
        text = seq.text
        longest = max(len(s) for s in seq.params.stop_strs)
        # Only a match that ends inside the new text is new: look back (longest - 1) chars.
        start = max(0, len(text) - delta_len - longest + 1)
        best: tuple[int, str] | None = None
        for s in seq.params.stop_strs:
            i = text.find(s, start)
            if i != -1 and (best is None or i < best[0]):
                best = (i, s)
        if best is None:
            return False
        i, s = best
        seq.text = text[: i + len(s)] if seq.params.include_stop_str_in_output else text[:i]
        seq.finish_reason, seq.stop_reason = "stop", s
        return True

    def visible_text(self, seq: Sequence) -> str:
        """Text a client may see now: a running sequence holds back a possible stop-string start."""
        if seq.finish_reason is not None or not seq.params.stop_strs:
            return seq.text
        hold = seq.params.stop_buffer_len
        if hold == 0:
            return seq.text
        return seq.text[: max(0, len(seq.text) - hold)]
