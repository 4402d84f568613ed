"""The OpenAI-compatible server: an API process (FastAPI + uvicorn) in front of engine-core
processes (one per data-parallel replica; local processes or Ray actors), talking msgpack over
ZMQ. `launch(ServerArgs(...))` starts one in-process."""

from tenk.server.args import ServerArgs

__all__ = ["ServerArgs", "ServerHandle", "launch", "serve_forever"]


def __getattr__(name: str):
    # FastAPI, uvicorn and the tokenizer stack load only when a server is really started.
    if name in ("launch", "serve_forever", "ServerHandle"):
        from tenk.server import launcher

        return getattr(launcher, name)
    raise AttributeError(f"module 'tenk.server' has no attribute {name!r}")
