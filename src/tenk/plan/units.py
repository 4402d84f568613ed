"""Reading and printing the quantities `tenk plan` takes: memory sizes, bandwidths, FLOP rates.

Sizes follow the usual convention: GB = 10^9 bytes, GiB = 2^30 bytes (a "96 GB" card that
nvidia-smi shows as 97,887 MiB is 95.6 GiB). Bandwidth and FLOP rates are decimal, as data
sheets give them."""

from __future__ import annotations

import re

from tenk.errors import ConfigError
from tenk.models.checkpoint_writer import parse_size

GIB = 1 << 30
MIB = 1 << 20

_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(B/S|BPS|FLOPS|FLOP/S)?\s*", re.IGNORECASE)
_PREFIX = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}


def parse_memory(text: str | int) -> int:
    """'80GiB' -> 85_899_345_920; '96GB' -> 96_000_000_000; '97887MiB' works too."""
    try:
        return parse_size(text)
    except ConfigError:
        raise ConfigError(f"cannot read GPU memory {text!r}: use a number with a unit, such as 80GiB or 96GB") from None


def parse_bandwidth(text: str | float) -> float:
    """'3.35TB/s' -> 3.35e12 bytes/s; a bare number is TB/s ('3.35' -> 3.35e12)."""
    if isinstance(text, (int, float)):
        value = float(text) * 1e12
    else:
        m = _RATE.fullmatch(text)
        if not m or (m.group(3) or "B/S").upper() not in ("B/S", "BPS"):
            raise ConfigError(f"cannot read bandwidth {text!r}: use a number with a unit, such as 3.35TB/s or 900GB/s")
        value = float(m.group(1)) * (_PREFIX[m.group(2).upper()] if m.group(2) else 1e12)
    if value <= 0:
        raise ConfigError(f"bandwidth {text!r} must be positive")
    return value


def parse_tflops(text: str | float) -> float:
    """'790' -> 790e12 FLOP/s (a bare number is TFLOP/s); '1.4PFLOPS' -> 1.4e15."""
    if isinstance(text, (int, float)):
        value = float(text) * 1e12
    else:
        m = _RATE.fullmatch(text)
        if not m or (m.group(3) or "FLOPS").upper() not in ("FLOPS", "FLOP/S"):
            raise ConfigError(f"cannot read peak compute {text!r}: use TFLOP/s, such as 790 or 1.4PFLOPS")
        value = float(m.group(1)) * (_PREFIX[m.group(2).upper()] if m.group(2) else 1e12)
    if value <= 0:
        raise ConfigError(f"peak compute {text!r} must be positive")
    return value


def gib(n: float) -> str:
    """Bytes as GiB with two decimals ('53.47 GiB'); below 0.1 GiB as MiB ('12.3 MiB')."""
    if abs(n) < GIB / 10:
        return f"{n / MIB:.1f} MiB"
    return f"{n / GIB:.2f} GiB"


def tokens(n: int) -> str:
    """Token counts the way the seed writes them: 142K, 1.62M."""
    if n >= 10_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 10_000:
        return f"{n / 1e3:.0f}K"
    return str(n)
