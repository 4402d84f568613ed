"""KV-cache dtype names, spelled as vLLM's `--kv-cache-dtype`.

"auto" keeps the model's dtype; "fp8" and "fp8_e4m3" store e4m3 (torch.float8_e4m3fn) with a
per-tensor scale, one byte per element. Torch-free, so the API server process can check the flag
before it starts an engine (`kv_cache.kv_cache_torch_dtype` maps a name to the torch dtype)."""

from __future__ import annotations

from tenk.errors import ConfigError

KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3")


def check_kv_cache_dtype(name: str, flag: str = "kv_cache_dtype") -> str:
    """The canonical (lower-case) name, or a ConfigError naming the choices."""
    value = str(name).strip().lower()
    if value not in KV_CACHE_DTYPES:
        raise ConfigError(f"{flag} must be one of {', '.join(KV_CACHE_DTYPES)}, got {name!r}")
    return value


def is_fp8_kv_cache(name: str) -> bool:
    return check_kv_cache_dtype(name) != "auto"
