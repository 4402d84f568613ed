"""Server-sent events: one `data: {json}` event per piece, then `data: [DONE]`."""

from __future__ import annotations

import json
from typing import AsyncIterator, Callable

from fastapi.responses import StreamingResponse

from tenk.server.errors import APIError
from tenk.server.generation import Generation

DONE = b"data: [DONE]\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def stream(gen: Generation, head: Callable[[], list[bytes]], on_delta: Callable[[int, object], list[bytes]],
                 tail: Callable[[], list[bytes]]) -> StreamingResponse:  # fmt: skip
    """Start streaming once the engine has accepted the request: a request the engine refuses
    still gets its 4xx status instead of a 200 with an error inside."""
    first = await gen.next()

    async def body() -> AsyncIterator[bytes]:
        try:
            for chunk in head():
                yield chunk
            item = first
            while item is not None:
                for chunk in on_delta(*item):
                    yield chunk
                item = await gen.next()
            for chunk in tail():
                yield chunk
        except APIError as exc:  # headers are gone: report in the stream, as vLLM does
            yield event(exc.body())
        finally:
            gen.abort()  # no-op when every choice finished; frees the KV of a client that left
        yield DONE

    return StreamingResponse(body(), media_type="text/event-stream", headers=HEADERS)


