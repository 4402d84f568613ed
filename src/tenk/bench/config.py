"""BenchConfig: everything one `tenk bench` run needs, validated once in __post_init__.

The CLI parses flags into this dataclass; other code (`tenk plan --autotune`, `tenk demo`,
benchmarks/headline.py) builds it directly and calls `tenk.bench.run_sweep(config)`.
"""

from __future__ import annotations

import math

import os
from dataclasses import dataclass, field

from tenk.errors import ConfigError

# The seed project's sweep (DESIGN.md, "Benchmark definitions").
SEED_CONCURRENCY = (1, 4, 8, 16, 32, 64, 128, 256, 384, 512, 640, 896)


@dataclass(frozen=True, slots=True)
class LengthRange:
    """Token lengths drawn uniformly from [low, high] (inclusive); low == high is a fixed length."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if self.low < 1 or self.high < self.low:
            raise ConfigError(f"length range {self.low}:{self.high} must satisfy 1 <= low <= high")

    @classmethod
    def parse(cls, text: str | int, range_ratio: float = 0.0) -> "LengthRange":
        """'256' -> 256..256; '200:300' -> 200..300; '256' with range_ratio 0.1 -> 230..281."""
        text = str(text).strip()
        try:
            if ":" in text:
                lo, hi = text.split(":", 1)
                return cls(int(lo), int(hi))
            n = int(text)
        except ValueError:
            raise ConfigError(f"length {text!r} is not a number or a LOW:HIGH range") from None
        if not 0.0 <= range_ratio < 1.0:
            raise ConfigError(f"--range-ratio {range_ratio} must be in [0, 1)")
        return cls(max(1, int(n * (1 - range_ratio))), max(1, int(n * (1 + range_ratio))))

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}:{self.high}"


@dataclass(frozen=True, slots=True)
class SLO:
    """Service-level objectives in seconds; a request meets the SLO when it succeeded and every
    given bound holds. None means no bound on that metric."""

    ttft: float | None = None
    tpot: float | None = None
    e2e: float | None = None

    @classmethod
    def parse(cls, text: str) -> "SLO":
        """'ttft=0.5,tpot=0.05' (seconds; an 'ms' suffix is accepted too)."""
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, raw = part.partition("=")
            key = key.strip().lower()
            if key not in ("ttft", "tpot", "e2e") or not raw:
                raise ConfigError(f"--slo item {part!r} must be ttft=S, tpot=S or e2e=S (seconds)")
            raw = raw.strip().lower()
            try:
                values[key] = float(raw[:-2]) / 1000 if raw.endswith("ms") else float(raw.rstrip("s"))
            except ValueError:
                raise ConfigError(f"--slo value {raw!r} is not a number of seconds") from None
        if not values:
            raise ConfigError("--slo needs at least one of ttft=, tpot=, e2e=")
        return cls(**values)

    def as_dict(self) -> dict:
        return {"ttft": self.ttft, "tpot": self.tpot, "e2e": self.e2e}


def parse_concurrency(text: str) -> tuple[int, ...]:
    """'1,4,8' -> (1, 4, 8); 'seed' -> the seed's sweep."""
    if text.strip().lower() in ("seed", "default"):
        return SEED_CONCURRENCY
    try:
        levels = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--concurrency {text!r} must be a comma-separated list of integers") from None
    return levels


def default_workers() -> int:
    """One client process per two cores, at most 8: each process streams well over 10K chunks/s,
    and leaving cores free keeps the measuring processes from starving each other."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


@dataclass(slots=True)
class BenchConfig:
    urls: list[str]
    model: str | None = None  # None: the first model the server's /v1/models lists
    endpoint: str = "completions"  # "completions" | "chat"
    stream: bool = True
    dataset: str = "random"  # "random" | "jsonl"
    dataset_path: str | None = None
    input_len: LengthRange = field(default_factory=lambda: LengthRange(256, 256))
    output_len: LengthRange = field(default_factory=lambda: LengthRange(256, 256))
    tokenizer: str | None = None  # local HF tokenizer dir; None: the server's /tokenize
    prompt_format: str = "text"  # "text" | "ids" (token ids sent as the prompt; completions only)
    ignore_eos: bool = True
    concurrency: tuple[int, ...] = SEED_CONCURRENCY
    request_rate: float | None = None  # requests/s (Poisson); replaces the concurrency sweep
    max_concurrency: int | None = None  # cap on in-flight requests in request-rate mode
    num_prompts: int | None = None  # per level; None: max(prompts_per_concurrency * c, min_prompts)
    prompts_per_concurrency: float = 4.0
    min_prompts: int = 64
    warmup: int = 4  # requests sent once before the sweep, not measured
    workers: int = field(default_factory=default_workers)
    balance: str = "least"  # "least" (least outstanding) | "rr" (round-robin) across --url
    level_timeout: float | None = 1800.0  # seconds per level; the rest is counted unfinished
    request_timeout: float = 600.0
    slo: SLO | None = None
    seed: int = 0
    temperature: float = 0.0
    scrape_metrics: bool = True
    scrape_interval: float = 1.0
    save_requests: bool = False
    out: str | None = None  # JSON path; the CSV goes beside it
    api_key: str | None = None
    extra_body: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.urls, str):
            self.urls = [self.urls]
        if not self.urls:
            raise ConfigError("give at least one --url of an OpenAI-compatible server")
        self.urls = [u.rstrip("/") for u in self.urls]
        for u in self.urls:
            if not u.startswith(("http://", "https://")):
                raise ConfigError(f"--url {u!r} must start with http:// or https://")
            if u.endswith("/v1"):
                raise ConfigError(f"--url {u!r}: give the server root (without /v1)")
        if isinstance(self.input_len, (int, str)):
            self.input_len = LengthRange.parse(self.input_len)
        if isinstance(self.output_len, (int, str)):
            self.output_len = LengthRange.parse(self.output_len)
        if isinstance(self.slo, str):
            self.slo = SLO.parse(self.slo)
        if isinstance(self.concurrency, str):
            self.concurrency = parse_concurrency(self.concurrency)
        self.concurrency = tuple(self.concurrency)
        if self.endpoint not in ("completions", "chat"):
            raise ConfigError(f"--endpoint {self.endpoint!r} must be 'completions' or 'chat'")
        if self.dataset not in ("random", "jsonl"):
            raise ConfigError(f"--dataset {self.dataset!r} must be 'random' or 'jsonl'")
        if self.dataset == "jsonl" and not self.dataset_path:
            raise ConfigError("--dataset jsonl needs a file: --dataset-path FILE")
        if self.prompt_format not in ("text", "ids"):
            raise ConfigError(f"--prompt-format {self.prompt_format!r} must be 'text' or 'ids'")
        if self.prompt_format == "ids" and self.endpoint == "chat":
            raise ConfigError("--prompt-format ids works only with --endpoint completions")
        if self.balance not in ("least", "rr"):
            raise ConfigError(f"--balance {self.balance!r} must be 'least' or 'rr'")
        if self.request_rate is None:
            if not self.concurrency or any(c < 1 for c in self.concurrency):
                raise ConfigError("--concurrency levels must be positive integers")
        elif not self.request_rate > 0:
            raise ConfigError(f"--request-rate {self.request_rate} must be > 0 requests/s")
        if self.num_prompts is not None and self.num_prompts < 1:
            raise ConfigError("--num-prompts must be >= 1")
        if not self.prompts_per_concurrency > 0 or self.min_prompts < 1:
            raise ConfigError("--prompts-per-concurrency must be > 0 and --min-prompts >= 1")
        if self.workers < 1:
            raise ConfigError("--workers must be >= 1")
        if self.warmup < 0:
            raise ConfigError("--warmup must be >= 0")

    def levels(self) -> list[dict]:
        """One dict per level: {"concurrency": c, "request_rate": r, "num_prompts": n}."""
        if self.request_rate is not None:
            n = self.num_prompts or 64
            return [{"concurrency": self.max_concurrency, "request_rate": self.request_rate, "num_prompts": n}]
        return [
            {"concurrency": c, "request_rate": None, "num_prompts": self.num_prompts or max(math.ceil(self.prompts_per_concurrency * c), self.min_prompts)}
            for c in self.concurrency
        ]

    def as_dict(self) -> dict:
        d = {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]
        d["input_len"] = str(self.input_len)
        d["output_len"] = str(self.output_len)
        d["concurrency"] = list(self.concurrency)
        d["slo"] = self.slo.as_dict() if self.slo else None
        d["api_key"] = "***" if self.api_key else None  # never write secrets to results
        return d
