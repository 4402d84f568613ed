"""Every error the API returns has OpenAI's shape:
`{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`.

FastAPI's own 422 validation answers and Starlette's plain-text 404/405 are replaced, and a
bug anywhere still answers in this shape (500) instead of dropping the connection.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("tenk.server")

_TYPES = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error",
          429: "rate_limit_error", 503: "service_unavailable_error"}  # fmt: skip


class APIError(Exception):
    """An error answered to the client; raise it anywhere in a handler."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | int | None = None,
                 type: str | None = None):  # fmt: skip
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param)


_UNION_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}
# What a field that takes several shapes accepts; pydantic would list one failure per shape.
_UNION_HINTS = {
    "prompt": "a string, a list of strings, a list of token ids (integers >= 0) or a list of token-id lists",
    "stop": "a string or a list of strings",
    "content": "a string or a list of {\"type\": \"text\", \"text\": ...} parts",
}
_BODY_PARSE_ERROR = "There was an error parsing the body"  # FastAPI's text for undecodable bodies


def _is_tag(part: str) -> bool:
    # pydantic names union members in the location: str, list[int], function-after[...], or a model class
    return part in _UNION_TAGS or "[" in part or part.startswith(("function-", "tagged-")) or part[:1].isupper()


def _loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if p != "body" and not _is_tag(str(p)))


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One sentence for a list of pydantic errors, and the field they are about."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        return f"The request body is not valid JSON: {ctx.get('error', 'parse error')}.", None
    if first.get("type") == "missing" and not _loc(first.get("loc", ())):
        return "The request needs a JSON body.", None
    seen, parts = set(), []
    for err in errors:
        loc = tuple(str(p) for p in err.get("loc", ()))
        where = _loc(loc)
        named = [p for p in loc if p != "body" and not _is_tag(p) and not p.isdigit()]
        # A field that is itself a union has a member tag after its name in the location.
        in_union = bool(named) and named[-1] in _UNION_HINTS and any(_is_tag(p) for p in loc[loc.index(named[-1]):])
        if in_union:
            # Point at the field itself, not at the list item where one shape failed.
            field = where
            while field.rsplit(".", 1)[-1] != named[-1]:
                field = field.rsplit(".", 1)[0]
            text = f"{field} must be {_UNION_HINTS[named[-1]]}"
        else:
            text = f"{where}: {err.get('msg')}" if where else str(err.get("msg"))
        if text not in seen:
            seen.add(text)
            parts.append(text)
    shown = parts[:3]
    more = f" (and {len(parts) - 3} more problems)" if len(parts) > 3 else ""
    return "Invalid request: " + "; ".join(shown) + more + ".", _loc(tuple(first.get("loc", ()))) or None


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        message, param = validation_message(list(exc.errors()))
        return APIError(400, message, param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 400 and detail == _BODY_PARSE_ERROR:
            detail = "The request body could not be parsed as JSON (it must be UTF-8 JSON, not nested too deeply)."
        elif exc.status_code == 404 and detail == "Not Found":
            detail = f"There is no route {request.method} {request.url.path}."
        elif exc.status_code == 405:
            detail = f"Method {request.method} is not allowed on {request.url.path}."
        return APIError(exc.status_code, detail).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return APIError(500, f"Internal server error: {type(exc).__name__}: {exc}").response()
