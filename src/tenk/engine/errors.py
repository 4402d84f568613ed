"""Errors a request can cause. InvalidRequestError is a ValueError (the server answers 400)
and a TenkError (the CLI prints its sentence without a traceback)."""

from __future__ import annotations

from tenk.errors import TenkError


class InvalidRequestError(TenkError, ValueError):
    """A request the engine cannot serve: empty prompt, unknown token ids, too long."""


class WorkerDiedError(TenkError, RuntimeError):
    """A tensor-parallel rank's process died or failed: the engine it belongs to cannot go on."""
