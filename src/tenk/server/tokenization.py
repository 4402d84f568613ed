"""Tokenizer work of the API process: prompts to token ids, chat messages through the chat
template, and token ids to the strings and bytes that logprobs report."""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any

from tenk.errors import CheckpointError

log = logging.getLogger("tenk.server")

# Used only when a checkpoint ships no chat template (random test checkpoints): ChatML, the
# format Qwen models use, so a tiny Qwen3-MoE model gets the prompts its family expects.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ChatTemplateError(ValueError):
    """The messages do not fit the model's chat template (a 400 for the user)."""


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: which byte each printable stand-in means."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _is_byte_level(hf) -> bool:
    """GPT-2-style byte-level BPE (Llama 3, Qwen, MiniMax): tokens spell bytes in a stand-in alphabet."""
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        return False
    try:
        decoder = json.loads(backend.to_str()).get("decoder")
    except Exception:
        return False
    return '"ByteLevel"' in json.dumps(decoder)


class TokenizerWrapper:
    def __init__(self, path: str):
        from transformers import AutoTokenizer

        try:
            self.hf = AutoTokenizer.from_pretrained(path)
        except Exception as exc:
            raise CheckpointError(f"could not load a tokenizer from {path!r}: {exc}") from None
        self.template = getattr(self.hf, "chat_template", None)
        if not self.template:
            log.warning("the tokenizer in %s has no chat template; chat requests use ChatML", path)
            self.template = FALLBACK_CHAT_TEMPLATE
        self._bytes_map = _byte_decoder() if _is_byte_level(self.hf) else None
        self.token_str = lru_cache(maxsize=1 << 16)(self._token_str)
        self.token_bytes = lru_cache(maxsize=1 << 16)(self._token_bytes)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                    continue_final_message: bool = False, template_kwargs: dict | None = None) -> str:  # fmt: skip
        if continue_final_message and add_generation_prompt:
            raise ChatTemplateError("continue_final_message and add_generation_prompt cannot both be true.")
        if continue_final_message and messages[-1].get("role") != "assistant":
            raise ChatTemplateError("continue_final_message needs the last message to be the assistant's.")
        try:
            return self.hf.apply_chat_template(
                messages,
                chat_template=self.template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                **(template_kwargs or {}),
            )
        except Exception as exc:  # jinja raises on messages the template rejects (roles out of order...)
            raise ChatTemplateError(f"the chat template rejected the messages: {exc}") from None

    def _token_str(self, token_id: int) -> str:
        return self.hf.decode([token_id], skip_special_tokens=False)

    def _token_bytes(self, token_id: int) -> list[int]:
        """The token's raw bytes (so a client can rebuild characters split across tokens)."""
        piece = self.hf.convert_ids_to_tokens(token_id)
        if isinstance(piece, str):
            if self._bytes_map and piece and all(c in self._bytes_map for c in piece):
                return [self._bytes_map[c] for c in piece]
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # sentencepiece byte
                return [int(piece[3:5], 16)]
        return list(self.token_str(token_id).encode("utf-8"))
