"""Turn the engine's cumulative output text into pieces that are safe to stream.

The engine decodes all of a request's tokens each step. When the last token ends in the
middle of a multi-byte UTF-8 character (byte-level BPE splits emoji and CJK characters across
tokens), the decoded text ends in U+FFFD, which the next token replaces with the real
character. A piece once sent cannot be taken back, so while a request runs we hold back any
trailing U+FFFD, and the last `stop_buffer_len` characters that could be the start of a stop
string the engine would cut off. At the end the rest is released.

(tenk's engine already holds back a possible stop-string start in the text it reports; this
second guard costs a few characters of streaming lag and keeps the promise whatever engine
sits behind the server.)
"""

from __future__ import annotations

REPLACEMENT_CHAR = "\ufffd"


class TextStream:
    __slots__ = ("sent_len", "hold")

    def __init__(self, stop_buffer_len: int = 0) -> None:
        self.sent_len = 0  # characters streamed so far
        self.hold = stop_buffer_len

    def update(self, text: str, finished: bool) -> str:
        """Given the full text so far, return the new piece to send (maybe "")."""
        end = len(text)
        if not finished:
            while end > self.sent_len and text[end - 1] == REPLACEMENT_CHAR:
                end -= 1
            end -= self.hold
        if end <= self.sent_len:
            return ""
        # Text before sent_len is never looked at again: the engine only appends (it does not
        # apply clean-up rules that rewrite earlier text), and what was sent cannot be unsent.
        piece = text[self.sent_len : end]
        self.sent_len = end
        return piece
