"""One request against an OpenAI-compatible server: build the body, send it, read the SSE
stream and fill a RequestRecord. Nothing here knows about levels, workers or statistics."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tenk.bench.records import Prompt, RequestRecord

try:  # orjson parses a chunk ~3x faster; the stdlib is the fallback, not a requirement
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - depends on the environment
    from json import loads as _loads

_PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    return text[:300]


class RequestSender:
    """Sends requests through one aiohttp session (one connection pool per worker process)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        model: str,
        endpoint: str = "completions",
        stream: bool = True,
        ignore_eos: bool = True,
        temperature: float = 0.0,
        extra_body: dict | None = None,
        api_key: str | None = None,
        request_timeout: float = 600.0,
    ) -> None:
        self.session = session
        self.model = model
        self.endpoint = endpoint
        self.path = _PATHS[endpoint]
        self.stream = stream
        self.ignore_eos = ignore_eos
        self.temperature = temperature
        self.extra_body = dict(extra_body or {})
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = aiohttp.ClientTimeout(total=request_timeout)

    def body(self, p: Prompt) -> dict:
        body: dict = {"model": self.model, "max_tokens": p.max_tokens, "temperature": self.temperature}
        if self.endpoint == "chat":
            body["messages"] = p.messages if p.messages is not None else [{"role": "user", "content": p.prompt}]
        else:
            if p.prompt is None:
                raise ValueError("a chat-only prompt (messages) cannot go to /v1/completions")
            body["prompt"] = p.prompt
        if self.ignore_eos:
            body["ignore_eos"] = True  # vLLM / SGLang / tenk extension: always max_tokens tokens
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        body.update(self.extra_body)
        return body

    async def send(self, url: str, p: Prompt, index: int, rec: RequestRecord | None = None) -> RequestRecord:
        """Fills `rec` (made here when not given). A caller that keeps `rec` before awaiting
        still holds it when the request is cancelled: error "cancelled", ok False."""
        if rec is None:
            rec = RequestRecord(index=index, url=url, input_len=p.input_len)
        body = self.body(p)
        rec.sent = time.perf_counter()
        try:
            async with self.session.post(url + self.path, json=body, headers=self.headers, timeout=self.timeout) as resp:
                rec.status = resp.status
                if resp.status != 200:
                    detail = (await resp.text())[:200]
                    rec.error = f"HTTP {resp.status}: {detail}"
                elif self.stream:
                    await self._read_stream(resp, rec)
                else:
                    await self._read_json(resp, rec)
        except asyncio.CancelledError:
            rec.error = "cancelled"
            rec.end = time.perf_counter()
            rec.ok = False
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, TypeError) as exc:
            rec.error = _short(exc) if not isinstance(exc, asyncio.TimeoutError) else "timeout"
        rec.end = time.perf_counter()
        if rec.error is not None:
            rec.ok = False
        return rec

    async def _read_stream(self, resp: aiohttp.ClientResponse, rec: RequestRecord) -> None:
        times = rec.chunk_times
        texts: list[str] = []
        done = False
        buf = b""
        # iter_any hands over whatever arrived; several SSE events often come in one read and
        # then share one arrival time, which is the truth about when the client saw them.
        async for data in resp.content.iter_any():
            now = time.perf_counter()
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments (": ping"), event: lines
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    continue
                obj = _loads(payload)
                if "error" in obj and not obj.get("choices"):
                    raise ValueError(f"server error in stream: {str(obj['error'])[:200]}")
                choices = obj.get("choices")
                if choices:
                    c0 = choices[0]
                    finishing = bool(c0.get("finish_reason"))
                    if "text" in c0:
                        text = c0["text"] or ""
                        carries = bool(text) or (c0["text"] is not None and not finishing)
                    else:
                        delta = c0.get("delta") or {}
                        text = (delta.get("content") or "") + (delta.get("reasoning_content") or "")
                        # the role-only opening chunk comes before any token; an empty content
                        # chunk is a step whose tokens have no text yet (vLLM and tenk send those)
                        carries = bool(text) or ("content" in delta and "role" not in delta and not finishing)
                    if carries:
                        times.append(now)
                    if text:
                        texts.append(text)
                    if c0.get("finish_reason"):
                        rec.finish_reason = c0["finish_reason"]
                usage = obj.get("usage")
                if usage:
                    rec.prompt_tokens = usage.get("prompt_tokens")
                    rec.completion_tokens = usage.get("completion_tokens")
        rec.text = "".join(texts)
        rec.client_tokens = len(times)
        if done or rec.finish_reason:
            rec.ok = True
        else:
            rec.error = "stream ended before [DONE] and without a finish_reason"

    async def _read_json(self, resp: aiohttp.ClientResponse, rec: RequestRecord) -> None:
        obj = _loads(await resp.read())
        c0 = obj["choices"][0]
        rec.text = c0.get("text") if "text" in c0 else (c0.get("message") or {}).get("content") or ""
        rec.finish_reason = c0.get("finish_reason")
        usage = obj.get("usage") or {}
        rec.prompt_tokens = usage.get("prompt_tokens")
        rec.completion_tokens = usage.get("completion_tokens")
        rec.ok = True
