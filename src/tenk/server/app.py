"""The FastAPI application: routes, the request guard (API key, body size) and the lifespan
that connects to the engine process."""

from __future__ import annotations

import asyncio
import hmac
import json
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tenk.server import metrics as metrics_mod
from tenk.server.errors import APIError, install_handlers
from tenk.server.protocol import (
    ChatCompletionRequest, ChatCompletionResponse, CompletionRequest, CompletionResponse, DetokenizeRequest,
    DetokenizeResponse, ErrorResponse, ModelCard, ModelList, TokenizeChatRequest, TokenizeRequest,
    TokenizeResponse, VersionResponse,
)  # fmt: skip
from tenk.server.serving_chat import create_chat_completion, encode_messages
from tenk.server.serving_completion import create_completion
from tenk.server.state import ServerState
from tenk.version import __version__

_ERR = {"model": ErrorResponse}
# One server-sent event: `data` holds a JSON chunk (or an error object), the last one `[DONE]`.
_SSE_EVENT = {"type": "object", "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
              "required": ["data"]}  # fmt: skip
_GEN_RESPONSES = {
    200: {"content": {"text/event-stream": {"schema": _SSE_EVENT}},
          "description": "JSON, or server-sent events when stream is true"},
    400: {**_ERR, "description": "Invalid request"},
    401: {**_ERR, "description": "Missing or wrong API key"},
    404: {**_ERR, "description": "Unknown model"},
    413: {**_ERR, "description": "Request body too large"},
    503: {**_ERR, "description": "The engine is not running"},
}  # fmt: skip
_TOKENIZER_RESPONSES = {k: v for k, v in _GEN_RESPONSES.items() if k != 200}


class RequestGuard:
    """Pure ASGI middleware: API key on /v1/*, and a cap on the request body size (413).

    The body is read here, up to the cap, and replayed to the app: a body without a
    Content-Length (chunked) is held to the same limit, and the app never sees a partial one."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.api_key is not None and scope["path"].startswith("/v1"):
            auth = headers.get(b"authorization", b"")
            if not (auth[:7].lower() == b"bearer " and hmac.compare_digest(auth[7:].strip(), self.api_key)):
                msg = "Incorrect or missing API key: send it as 'Authorization: Bearer <key>'."
                return await _send_error(send, APIError(401, msg, code="invalid_api_key"))
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await _send_error(send, self._too_large())
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":  # the client left while sending
                return
            body = msg.get("body", b"")
            size += len(body)
            if size > self.max_body:
                return await _send_error(send, self._too_large())
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: waits for http.disconnect

        await self.app(scope, replay, send)

    def _too_large(self) -> APIError:
        return APIError(413, f"The request body is larger than the server's limit of {self.max_body} bytes.",
                        code="request_too_large")  # fmt: skip


async def _send_error(send, err: APIError) -> None:
    body = json.dumps(err.body()).encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _cancel_on_disconnect(request: Request, coro) -> Response:
    """Run a handler, cancelling it if the client goes away first (its engine work is then
    aborted by the handler's cleanup). Streaming responses watch for this themselves."""
    task = asyncio.ensure_future(coro)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, APIError):
        pass
    return Response(status_code=499)  # nobody reads it


def build_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await state.client.connect()
        try:
            yield
        finally:
            await state.client.close()

    app = FastAPI(title="tenk", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible server for tenk (vLLM's extensions and metric names).")  # fmt: skip
    app.state.tenk = state
    install_handlers(app)
    app.add_middleware(RequestGuard, api_key=state.args.api_key, max_body_bytes=state.args.max_body_bytes)

    @app.get("/health", response_class=Response, responses={
        200: {"description": "Every engine replica is up (empty body), or some are (JSON: each replica's state)"},
        503: {**_ERR, "description": "No engine replica is running"}})  # fmt: skip
    async def health():
        # An empty 200 while all is well, as vLLM answers (load balancers and scripts expect it);
        # otherwise each replica's state and why it is down.
        report = state.health()
        if report["status"] == "ok":
            return Response(status_code=200)
        if report["status"] == "degraded":
            return JSONResponse(report)
        err = APIError(503, state.client.dead_reason or "The server is shutting down.", code="engine_unavailable")
        return JSONResponse({**err.body(), "health": report}, status_code=503)

    @app.get("/version", response_model=VersionResponse)
    async def version():
        return {"version": __version__}

    @app.get("/v1/models", response_model=ModelList, responses={401: {**_ERR, "description": "Missing API key"}})
    async def models():
        cards = [ModelCard(id=name, created=state.created, root=state.args.model, max_model_len=state.max_model_len)
                 for name in state.args.model_names]  # fmt: skip
        return ModelList(data=cards)

    @app.post("/v1/completions", response_model=CompletionResponse, responses=_GEN_RESPONSES)
    async def completions(req: CompletionRequest, request: Request):
        return await _cancel_on_disconnect(request, create_completion(state, req))

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=_GEN_RESPONSES)
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        return await _cancel_on_disconnect(request, create_chat_completion(state, req))

    @app.post("/tokenize", response_model=TokenizeResponse, responses=_TOKENIZER_RESPONSES)
    async def tokenize(req: TokenizeRequest):
        state.check_model(req.model)
        if isinstance(req, TokenizeChatRequest):
            ids = encode_messages(state, req.messages, req.add_generation_prompt is not False,
                                  bool(req.continue_final_message), req.chat_template_kwargs,
                                  bool(req.add_special_tokens))  # fmt: skip
        else:
            ids = state.tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens is not False)
        strs = [state.tokenizer.token_str(t) for t in ids] if req.return_token_strs else None
        return TokenizeResponse(count=len(ids), max_model_len=state.max_model_len, tokens=ids, token_strs=strs)

    @app.post("/detokenize", response_model=DetokenizeResponse, responses=_TOKENIZER_RESPONSES)
    async def detokenize(req: DetokenizeRequest):
        state.check_model(req.model)
        state.check_token_ids(req.tokens, "tokens")
        return DetokenizeResponse(prompt=state.tokenizer.decode(req.tokens, skip_special_tokens=False))

    @app.get("/metrics", responses={200: {"content": {metrics_mod.CONTENT_TYPE: {"schema": {"type": "string"}}},
                                          "description": "Prometheus text format"}})  # fmt: skip
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=metrics_mod.CONTENT_TYPE)

    _drop_422_from_schema(app)
    return app


def _drop_422_from_schema(app: FastAPI) -> None:
    """FastAPI documents a 422 for every body; this server answers 400 instead (see errors.py)."""
    build = app.openapi

    def openapi():
        if app.openapi_schema is None:
            schema = build()
            for path in schema.get("paths", {}).values():
                for op in path.values():
                    op.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return app.openapi_schema

    app.openapi = openapi
