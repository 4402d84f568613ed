"""Where a benchmark ran: client host and software, and what each server says about itself."""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import sys
import time

import aiohttp

from tenk.errors import TenkError
from tenk.version import __version__


def client_environment(workers: int) -> dict:
    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:  # pragma: no cover
        uv = None
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "tenk_version": __version__,
        "aiohttp": aiohttp.__version__,
        "uvloop": uv,
        "workers": workers,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


_UNREACHABLE = object()


async def _get_json(session: aiohttp.ClientSession, url: str):
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            if resp.status != 200:
                return None
            return await resp.json(content_type=None)
    except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
        return _UNREACHABLE
    except (aiohttp.ClientError, ValueError):
        return None


async def server_info(session: aiohttp.ClientSession, url: str) -> dict:
    """GET /version and /v1/models; fields are None where the server has no such route.
    Raises TenkError when the server cannot be reached at all."""
    version, models = await asyncio.gather(_get_json(session, url + "/version"), _get_json(session, url + "/v1/models"))
    if version is _UNREACHABLE and models is _UNREACHABLE:
        raise TenkError(f"cannot reach {url}: is the server running and the address right?")
    version = None if version is _UNREACHABLE else version
    models = None if models is _UNREACHABLE else models
    ids = [m.get("id") for m in (models or {}).get("data", []) if isinstance(m, dict)] if isinstance(models, dict) else []
    return {"url": url, "version": version.get("version") if isinstance(version, dict) else version, "models": ids}
