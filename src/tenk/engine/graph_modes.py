"""CUDA-graph modes, spelled as vLLM's `--cudagraph-mode` values that tenk has.

full: decode steps replay graphs by batch size (engine.cuda_graphs) and every other step by token
bucket (engine.mixed_graphs); full_decode_only: only the decode steps. Torch-free, so the API
server process can check the flag before it starts an engine."""

from __future__ import annotations

from tenk.errors import ConfigError

CUDAGRAPH_MODES = ("full", "full_decode_only")


def check_cudagraph_mode(name: str, flag: str = "cudagraph_mode") -> str:
    """The canonical (lower-case) name, or a ConfigError naming the choices."""
    value = str(name).strip().lower()
    if value not in CUDAGRAPH_MODES:
        raise ConfigError(f"{flag} must be one of {', '.join(CUDAGRAPH_MODES)}, got {name!r}")
    return value
