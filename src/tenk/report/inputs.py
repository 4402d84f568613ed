"""Read `tenk.bench/1` result files into the configurations a report compares.

Each result file is one configuration (one column of the seed's comparison). What names it
comes, in this order, from `--label` overrides, the result's optional `config.labels` block,
its optional `config.layout` block, and finally the bench config (model) and the file name.
Both optional blocks are described in src/tenk/report/FORMAT.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tenk.errors import TenkError

BENCH_SCHEMA_PREFIX = "tenk.bench/"
LABEL_KEYS = ("name", "model", "quantization", "layout", "gpu", "gpus")
_LAYOUT_INT_KEYS = ("gpus", "tp", "dp", "gpu_memory_bytes", "weights_bytes_per_gpu", "kv_bytes_per_gpu",
                    "reserve_bytes_per_gpu", "kv_tokens")


class ReportInputError(TenkError):
    """A result file cannot be read or is not a tenk bench result."""


@dataclass(slots=True)
class Level:
    """One concurrency (or request-rate) level, reduced to what the report draws."""

    concurrency: int | None
    request_rate: float | None
    output_throughput: float  # tok/s
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    tpot_p50_ms: float | None
    tpot_p99_ms: float | None
    completed: int
    failed: int
    partial: bool  # cut off by an interrupt or the level timeout

    def as_dict(self) -> dict:
        return {
            "concurrency": self.concurrency, "request_rate": self.request_rate,
            "output_throughput": self.output_throughput,
            "ttft_ms": {"p50": self.ttft_p50_ms, "p99": self.ttft_p99_ms},
            "tpot_ms": {"p50": self.tpot_p50_ms, "p99": self.tpot_p99_ms},
            "completed": self.completed, "failed": self.failed, "partial": self.partial,
        }  # fmt: skip


@dataclass(slots=True)
class Configuration:
    """One result file: its names, its levels and (when the file has one) its memory layout."""

    name: str
    source: str
    model: str | None
    quantization: str | None
    layout: str | None  # "TP=2 DP=2"
    gpu: str | None  # "H100 80GB"
    gpus: int | None  # GPUs the configuration uses in all
    levels: list[Level]
    memory: dict | None  # the validated `config.layout` block, or None
    warnings: list[str] = field(default_factory=list)


def parse_label_overrides(items: list[str], num_files: int) -> list[dict[str, str]]:
    """`KEY=VALUE` applies to every file, `N:KEY=VALUE` to the N-th file (1-based)."""
    out: list[dict[str, str]] = [{} for _ in range(num_files)]
    for item in items:
        target: int | None = None
        head, eq, value = item.partition("=")
        if not eq:
            raise ReportInputError(f"--label {item!r} must look like KEY=VALUE or N:KEY=VALUE (e.g. gpu='H100 80GB')")
        if ":" in head:
            idx, _, head = head.partition(":")
            if not idx.strip().isdigit() or not 1 <= int(idx) <= num_files:
                raise ReportInputError(f"--label {item!r}: {idx!r} is not a result number between 1 and {num_files}")
            target = int(idx) - 1
        key = head.strip().lower()
        if key not in LABEL_KEYS:
            raise ReportInputError(f"--label {item!r}: the key must be one of {', '.join(LABEL_KEYS)}")
        for i in range(num_files) if target is None else (target,):
            out[i][key] = value.strip()
    return out


def load_result(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ReportInputError(f"result file {str(p)!r} does not exist")
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportInputError(f"{p} is not a readable JSON file ({exc})") from None
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if not isinstance(schema, str) or not schema.startswith(BENCH_SCHEMA_PREFIX):
        raise ReportInputError(f"{p} is not a tenk bench result (no \"schema\": \"tenk.bench/1\"); "
                               "make one with `tenk bench --out FILE.json`")  # fmt: skip
    if schema != "tenk.bench/1":
        raise ReportInputError(f"{p} has schema {schema!r}; this tenk reads tenk.bench/1")
    if not isinstance(doc.get("levels"), list) or not doc["levels"]:
        raise ReportInputError(f"{p} holds no measured levels (was the sweep interrupted before the first one ended?)")
    return doc


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _level(d: dict) -> Level:
    ttft, tpot = d.get("ttft_ms") or {}, d.get("tpot_ms") or {}
    return Level(
        concurrency=d.get("concurrency"), request_rate=d.get("request_rate"),
        output_throughput=_num(d.get("output_throughput")) or 0.0,
        ttft_p50_ms=_num(ttft.get("p50")), ttft_p99_ms=_num(ttft.get("p99")),
        tpot_p50_ms=_num(tpot.get("p50")), tpot_p99_ms=_num(tpot.get("p99")),
        completed=int(d.get("completed") or 0), failed=int(d.get("failed") or 0),
        partial=bool(d.get("interrupted") or d.get("timed_out")),
    )  # fmt: skip


def validate_layout(block, source: str) -> dict | None:
    """The optional memory-layout block (FORMAT.md); byte counts must be non-negative integers."""
    if block is None:
        return None
    if not isinstance(block, dict):
        raise ReportInputError(f"{source}: config.layout must be an object (see tenk/report/FORMAT.md)")
    out = dict(block)
    for key in _LAYOUT_INT_KEYS:
        v = out.get(key)
        if v is None:
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            raise ReportInputError(f"{source}: config.layout.{key} must be a non-negative number, got {v!r}")
        out[key] = int(v)
    if out.get("weights_bytes_per_gpu") is None:
        raise ReportInputError(f"{source}: config.layout needs at least weights_bytes_per_gpu")
    return out


def _layout_text(memory: dict | None) -> str | None:
    if not memory:
        return None
    if memory.get("name"):
        return str(memory["name"])
    parts = [f"{k.upper()}={memory[k]}" for k in ("tp", "dp") if memory.get(k)]
    return " ".join(parts) or None


def _model_name(model: str | None) -> str | None:
    if not model:
        return None
    # a served path such as /tmp/x/tiny-moe-nvfp4 reads better as its last part
    return Path(model).name if "/" in model else model


def configuration(doc: dict, source: str, overrides: dict[str, str]) -> Configuration:
    cfg = doc.get("config") or {}
    labels = {**(cfg.get("labels") or {}), **overrides}
    memory = validate_layout(cfg.get("layout", cfg.get("memory")), source)
    quant = labels.get("quantization") or (memory or {}).get("quantization")
    layout = labels.get("layout") or _layout_text(memory)
    gpu = labels.get("gpu") or (memory or {}).get("gpu_name")
    gpus_raw = labels.get("gpus") or (memory or {}).get("gpus")
    try:
        gpus = int(gpus_raw) if gpus_raw not in (None, "") else None
    except ValueError:
        raise ReportInputError(f"{source}: gpus label {gpus_raw!r} is not a whole number") from None
    name = labels.get("name") or " ".join(x for x in (quant, layout) if x) or Path(source).stem
    levels = [_level(lv) for lv in doc["levels"]]
    warnings = []
    if doc.get("interrupted"):
        warnings.append("the sweep was interrupted; only the levels it finished are shown")
    failed = sum(lv.failed for lv in levels)
    if failed:
        warnings.append(f"{failed} requests failed across the sweep")
    return Configuration(
        name=str(name), source=source, model=labels.get("model") or _model_name(cfg.get("model")),
        quantization=quant, layout=layout, gpu=gpu, gpus=gpus, levels=levels, memory=memory, warnings=warnings,
    )  # fmt: skip


def load_configurations(paths: list[str | Path], labels: list[str] | None = None) -> list[Configuration]:
    if not paths:
        raise ReportInputError("give at least one result file (made by `tenk bench --out FILE.json`)")
    overrides = parse_label_overrides(list(labels or ()), len(paths))
    configs = [configuration(load_result(p), str(p), o) for p, o in zip(paths, overrides)]
    seen: dict[str, int] = {}
    for c in configs:  # two files with the same name would be indistinguishable in every chart
        seen[c.name] = seen.get(c.name, 0) + 1
        if seen[c.name] > 1:
            c.name = f"{c.name} ({seen[c.name]})"
    return configs
